//! The coherence directory (standing in for the probe filter): physical line -> mask of the CCDs
//! whose caches may hold a copy of it under any key.
//!
//! The mask is a superset: a bit is set whenever a CCD gains a copy, and cleared lazily, when a
//! lookup scans the CCD and finds nothing. The table is rebuilt from the caches when it grows much
//! larger than the number of cached lines. A `SlotMap`: a lookup touches one host cache line, and
//! no operation allocates.

use crate::slotmap::SlotMap;

pub struct Directory {
    map: SlotMap,
}

impl Default for Directory {
    fn default() -> Self {
        Self::new()
    }
}

impl Directory {
    pub fn new() -> Self {
        Directory { map: SlotMap::with_capacity_pow2(10) }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }
    /// At the table's next growth, make room for `total` lines in all (SlotMap::set_ahead).
    pub fn set_ahead(&mut self, total: usize) {
        self.map.set_ahead(total)
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    pub fn bytes(&self) -> usize {
        self.map.bytes()
    }

    /// Ask the host CPU to start loading the slot where a lookup of `line` begins (a hint only).
    #[inline(always)]
    pub fn prefetch(&self, line: u64) {
        self.map.prefetch(line)
    }

    /// After `prefetch(line)`: the mask if the lines it asked for settle the lookup, else None
    /// (and the next line of the probe run is asked for). A hint only.
    #[inline(always)]
    pub fn peek(&self, line: u64) -> Option<u64> {
        self.map.peek(line)
    }

    /// Slots of the table as it grows by itself (the cost model of `lines_in`): sizing it ahead
    /// for a batch must not change which walk a range operation takes, since the two walks leave
    /// the directory's superset mask cleaned differently.
    pub fn slots(&self) -> usize {
        self.map.natural_slots()
    }

    /// Append every tracked line in [lo, hi) to `out`, unordered.
    pub fn lines_in(&self, lo: u64, hi: u64, out: &mut Vec<u64>) {
        self.map.keys_in(lo, hi, out)
    }

    pub fn clear(&mut self) {
        *self = Self::new();
    }

    /// The CCD mask of `line` (0 if untracked).
    #[inline]
    pub fn get(&self, line: u64) -> u64 {
        self.map.get(line).unwrap_or(0)
    }

    /// Set `bits` in the mask of `line`.
    #[inline]
    pub fn add(&mut self, line: u64, bits: u64) {
        self.map.or(line, bits)
    }

    /// Replace the mask of `line`; a zero mask removes the entry.
    #[inline]
    pub fn set(&mut self, line: u64, mask: u64) {
        if mask == 0 {
            self.map.remove(line);
        } else {
            self.map.insert(line, mask);
        }
    }

    pub fn remove(&mut self, line: u64) {
        self.map.remove(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn behaves_like_a_map() {
        let mut d = Directory::new();
        let mut m: HashMap<u64, u64> = HashMap::new();
        let mut x: u64 = 12345;
        for step in 0..200_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let line = x % 5000;
            match step % 3 {
                0 => {
                    d.add(line, 1 << (x % 7));
                    *m.entry(line).or_insert(0) |= 1 << (x % 7);
                }
                1 => {
                    d.remove(line);
                    m.remove(&line);
                }
                _ => {
                    let v = x % 4;
                    d.set(line, v);
                    if v == 0 {
                        m.remove(&line);
                    } else {
                        m.insert(line, v);
                    }
                }
            }
            assert_eq!(d.len(), m.len());
        }
        for line in 0..5000 {
            assert_eq!(d.get(line), *m.get(&line).unwrap_or(&0), "line {line}");
        }
    }

    /// The access path relies on the mask being a superset (a miss skips the L3 set of a CCD the
    /// mask does not name, and `collect` scans only named CCDs): after random accesses of every CPU
    /// under several keys, with WBINVDs and CLFLUSHes between, every line an L2 or L3 holds has its
    /// CCD's bit.
    #[test]
    fn the_mask_names_every_ccd_holding_the_line() {
        use crate::host::{Col, FlushOp, Host};
        for (seed, sme) in [(1u64, false), (7, true), (99, false)] {
            let mut cfg = crate::HostConfig::preset("tiny").unwrap();
            cfg.features.sme_coherent = sme;
            let mut h = Host::new(cfg, Some(64 << 20)).unwrap();
            let mut x = seed;
            let mut next = move || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            for round in 0..40 {
                let n = 500;
                let cpu: Vec<u32> = (0..n).map(|_| (next() % h.topo.cpus as u64) as u32).collect();
                let addr: Vec<u64> = (0..n).map(|_| (next() % (1 << 20)) & !7).collect();
                let write: Vec<bool> = (0..n).map(|_| next() % 3 == 0).collect();
                let key: Vec<u16> = (0..n).map(|_| [0u16, 3, 5][(next() % 3) as usize]).collect();
                h.access_batch(Col::Each(&cpu), &addr, Col::Each(&write), Col::Each(&key), None).unwrap();
                match round % 4 {
                    1 => {
                        h.wbinvd((next() % h.topo.cpus as u64) as usize).unwrap();
                    }
                    2 => {
                        h.clflush(0, (next() % 256) << 12, 1 << 14, 0, FlushOp::Clflushopt, true).unwrap();
                    }
                    _ => {}
                }
                if !h.directory_active() {
                    continue;
                }
                for e in 0..h.topo.ccds {
                    let insts = std::iter::once((true, e)).chain(h.topo.ccd_cores(e).map(|c| (false, c)));
                    for (l3, inst) in insts {
                        let slots = if l3 { h.l3.inst_slice(inst) } else { h.l2.inst_slice(inst) };
                        for &v in slots.iter().filter(|&&v| v != 0) {
                            let line = crate::cache::line_of(v);
                            assert_ne!(h.dir.get(line) & (1 << e), 0, "seed {seed} round {round}: line {line:#x} in CCD {e}");
                        }
                    }
                }
            }
            assert!(h.directory_active(), "seed {seed}: the directory never came on");
        }
    }
}
