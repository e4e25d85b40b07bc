//! Read-only views of the caches for tests and scenarios: the copies of a line, a set's contents,
//! occupancy, latent hazards (`audit`) and cached-line counts. Nothing here changes state.

use crate::cache::*;
use crate::config::LINE;
use crate::error::{EngineError, Result};
use crate::host::*;

impl Host {
    /// Every cached copy of the line holding `pa`, in any cache, under any key.
    pub fn copies(&self, pa: u64) -> Result<Vec<CachedCopy>> {
        self.check_addr("pa", pa)?;
        let x = pa / LINE;
        let mut out = Vec::new();
        for (level, cache) in [(1u8, &self.l1), (2, &self.l2), (3, &self.l3)] {
            for inst in 0..cache.insts {
                let b = cache.base(inst, x);
                for w in 0..cache.ways {
                    let v = cache.data[b + w];
                    if v != 0 && line_of(v) == x {
                        out.push(CachedCopy {
                            level,
                            inst: inst as u32,
                            key: key_of(v),
                            dirty: v & DIRTY != 0,
                            exclusive: v & EXCL != 0,
                            stale: v & STALE != 0,
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    /// The contents of one set of one cache, most recently used first: (line address, key, dirty).
    pub fn set_contents(&self, level: u8, inst: usize, set: usize) -> Result<Vec<(u64, u16, bool)>> {
        let cache = match level {
            1 => &self.l1,
            2 => &self.l2,
            3 => &self.l3,
            _ => return Err(EngineError::invalid("level", format!("level must be 1, 2 or 3, got {level}"))),
        };
        if inst >= cache.insts {
            return Err(EngineError::invalid("inst", format!("inst {inst} out of range 0..{}", cache.insts)));
        }
        if set >= cache.sets {
            return Err(EngineError::invalid("set", format!("set {set} out of range 0..{}", cache.sets)));
        }
        let b = (inst * cache.sets + set) * cache.ways;
        Ok(cache.data[b..b + cache.ways]
            .iter()
            .filter(|&&v| v != 0)
            .map(|&v| (line_of(v) * LINE, key_of(v), v & DIRTY != 0))
            .collect())
    }

    /// (valid, dirty) lines per instance of a level; L1/L2 per core, L3 per CCD.
    pub fn occupancy(&self, level: u8) -> Result<(Vec<u64>, Vec<u64>)> {
        let cache = match level {
            1 => &self.l1,
            2 => &self.l2,
            3 => &self.l3,
            _ => return Err(EngineError::invalid("level", format!("level must be 1, 2 or 3, got {level}"))),
        };
        let valid = cache.valid.iter().map(|&v| v as u64).collect();
        let dirty = (0..cache.insts)
            .map(|i| if cache.valid[i] == 0 { 0 } else { cache.dirty_count(i) })
            .collect();
        Ok((valid, dirty))
    }

    /// Latent hazards: dirty cached copies that will corrupt memory when they are written back
    /// (their key is not their page's owner's, or their key slot was re-keyed), whether or not
    /// anything has evicted them yet. Returns (foreign-owner lines, stale-key lines). Read-only.
    pub fn audit(&self) -> (u64, u64) {
        let (mut foreign, mut stale) = (0, 0);
        let coherent = self.cfg.features.sme_coherent;
        let mut check = |v: u64, dirty: bool| {
            if v != 0 && dirty {
                if v & STALE != 0 {
                    stale += 1;
                } else if key_of(v) != self.mem.owner(line_of(v)) && !(coherent && key_of(v) == 0) {
                    // (a host-key line on a guest page of an SME_COHERENT host is benign: see writeback)
                    foreign += 1;
                }
            }
        };
        for core in 0..self.topo.cores {
            if self.l2.valid[core] == 0 {
                continue;
            }
            for &v in self.l2.inst_slice(core) {
                let mut dirty = v & DIRTY != 0;
                if v != 0 && !dirty {
                    let b1 = self.l1.base(core, line_of(v));
                    dirty = matches!(self.l1.find(b1, v & MATCH_KEYED, MATCH_KEYED), Some(i) if self.l1.data[b1 + i] & DIRTY != 0);
                }
                check(v, dirty);
            }
        }
        for e in 0..self.topo.ccds {
            if self.l3.valid[e] != 0 {
                for &v in self.l3.inst_slice(e) {
                    check(v, v & DIRTY != 0);
                }
            }
        }
        (foreign, stale)
    }

    /// Count cached copies (L2 and L3; L1 is inside L2) under `key` (any key if None); with
    /// `dirty_only`, only those whose data is dirty (an L1 dirty copy counts).
    pub fn cached_lines(&self, key: Option<u16>, dirty_only: bool) -> u64 {
        let mut n = 0;
        let km = |v: u64| key.map_or(true, |k| key_of(v) == k);
        for core in 0..self.topo.cores {
            if self.l2.valid[core] == 0 {
                continue;
            }
            for &v in self.l2.inst_slice(core) {
                if v == 0 || !km(v) {
                    continue;
                }
                if dirty_only && v & DIRTY == 0 {
                    let b1 = self.l1.base(core, line_of(v));
                    match self.l1.find(b1, v & MATCH_KEYED, MATCH_KEYED) {
                        Some(i) if self.l1.data[b1 + i] & DIRTY != 0 => {}
                        _ => continue,
                    }
                }
                n += 1;
            }
        }
        for e in 0..self.topo.ccds {
            if self.l3.valid[e] == 0 {
                continue;
            }
            for &v in self.l3.inst_slice(e) {
                if v != 0 && km(v) && (!dirty_only || v & DIRTY != 0) {
                    n += 1;
                }
            }
        }
        n
    }
}
