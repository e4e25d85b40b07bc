//! The floor of the cache data structure: only the set operations of a random three-level miss
//! (L1 8-way, L2 and L3 16-way, as in benches/bench_cache.py), with the same prefetching, and no
//! Host around them (no keys' aliases handled, no coherence, no oracle, no counters or clocks).
//! `cargo run --release -p sevsim-engine --example missfloor [0|1]` (1: with prefetch).
use sevsim_engine::cache::*;
use std::time::Instant;

#[target_feature(enable = "avx2")]
unsafe fn run(l1: &mut Caches, l2: &mut Caches, l3: &mut Caches, addr: &[u64], mode: u32) -> u64 {
    let mut acc = 0u64;
    for (n, &a) in addr.iter().enumerate() {
        if mode >= 1 && n + 12 < addr.len() {
            let xj = addr[n + 12] >> 6;
            let (b2, b3) = (l2.base(0, xj), l3.base(0, xj));
            for (d, b) in [(&l2.data, b2), (&l2.data, b2 + 15), (&l3.data, b3), (&l3.data, b3 + 15)] {
                std::arch::x86_64::_mm_prefetch(d.as_ptr().add(b) as *const i8, std::arch::x86_64::_MM_HINT_T0);
            }
            let xk = addr[n + 6] >> 6;
            let lru = l2.data[l2.base(0, xk) + 15];
            if lru != 0 {
                let b = l3.base(0, line_of(lru));
                std::arch::x86_64::_mm_prefetch(l3.data.as_ptr().add(b) as *const i8, std::arch::x86_64::_MM_HINT_T0);
                std::arch::x86_64::_mm_prefetch(l3.data.as_ptr().add(b + 15) as *const i8, std::arch::x86_64::_MM_HINT_T0);
            }
        }
        let x = a >> 6;
        let want = tag(x, 0);
        let b1 = l1.base(0, x);
        if let Some(i) = l1.find(b1, want, MATCH_KEYED) {
            l1.touch(b1, i);
            continue;
        }
        let b2 = l2.base(0, x);
        let same = l2.match_bits(b2, want, MATCH_KEYED);
        if same != 0 {
            l2.touch(b2, same.trailing_zeros() as usize);
            let v = l1.insert(0, b1, want);
            acc ^= v;
            continue;
        }
        acc += (l2.match_bits(b2, x | VALID, MATCH_ANY) != 0) as u64;
        let b3 = l3.base(0, x);
        let any = l3.match_bits(b3, x | VALID, MATCH_ANY);
        let newv = if any != 0 { l3.remove(0, b3, any.trailing_zeros() as usize) } else { want | EXCL };
        let victim = l2.insert(0, b2, newv);
        if victim != 0 {
            if let Some(l1v) = l1.take(0, line_of(victim), victim & MATCH_KEYED, MATCH_KEYED) {
                acc ^= l1v;
            }
            let vb3 = l3.base(0, line_of(victim));
            let v3 = l3.insert_or_merge(0, vb3, victim, |o, n| o | n);
            acc ^= v3;
        }
        let v1 = l1.insert(0, b1, newv);
        acc ^= v1;
    }
    acc
}

fn main() {
    let n = 2_000_000usize;
    let mut x: u64 = 88172645463325252;
    let addr: Vec<u64> = (0..n).map(|_| { x ^= x << 13; x ^= x >> 7; x ^= x << 17; (x % (4 << 30)) & !7 }).collect();
    let mut l1 = Caches::new(1, 64, 8);
    let mut l2 = Caches::new(1, 1024, 16);
    let l3sets: usize = std::env::var("L3SETS").map(|s| s.parse().unwrap()).unwrap_or(32768);
    let mut l3 = Caches::new(1, l3sets, 16);
    let mode: u32 = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(1);
    for rep in 0..3 {
        let t = Instant::now();
        let acc = unsafe { run(&mut l1, &mut l2, &mut l3, &addr, mode) };
        println!("rep {rep} mode {mode}: {:.1} ns/access ({acc})", t.elapsed().as_nanos() as f64 / n as f64);
    }
}
