//! Small helpers: a fast non-cryptographic hasher for integer keys (deterministic, no random seed).

use std::hash::{BuildHasherDefault, Hasher};

#[derive(Default, Clone, Copy)]
pub struct FxHasher {
    hash: u64,
}

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.hash = (self.hash.rotate_left(5) ^ b as u64).wrapping_mul(SEED);
        }
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.hash = (self.hash.rotate_left(5) ^ i).wrapping_mul(SEED);
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.write_u64(i as u64);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

pub type FxBuild = BuildHasherDefault<FxHasher>;

/// Ask the host CPU to start loading the cache line holding `v` (a hint: no effect on results).
#[inline(always)]
pub fn prefetch<T>(v: &T) {
    prefetch_at(v as *const T, 0);
}

/// Ask the host CPU to start loading the cache line of element `i` of the array at `p` (a hint:
/// a prefetch reads nothing and cannot fault, so `i` needs no bounds check).
#[inline(always)]
pub fn prefetch_at<T>(p: *const T, i: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: wrapping_add forms the address without asserting it is in bounds, and a prefetch
    // never faults or reads it as data.
    unsafe {
        std::arch::x86_64::_mm_prefetch(p.wrapping_add(i) as *const i8, std::arch::x86_64::_MM_HINT_T0)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, i);
}
