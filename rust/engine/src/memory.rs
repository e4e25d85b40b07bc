//! Memory: page ownership (which key a page belongs to) and, per line, the key of its last write.
//!
//! Memory is not bytes. A line whose last write was under its page's current owner's key holds
//! "the owner's data" and is not stored. Only lines last written under another key (a stale
//! write-back, a device write into a private page) are kept, sparsely, with the key and a version
//! (a global count of memory writes). Handing a page to a new owner (`set_owner`) resets its lines to
//! the new owner's data: the page is the new owner's to initialise, as after the kernel's page
//! allocator hands it out. Ownership is one u16 per 2 MiB region, split into per-4 KiB owners only
//! where a region is mixed, so an untouched 1.5 TiB host costs 1.5 MiB.

use std::collections::HashMap;

use crate::util::FxBuild;

pub const REGION_SHIFT: u32 = 21; // 2 MiB
pub const LINES_PER_REGION_SHIFT: u32 = REGION_SHIFT - 6;
pub const PAGES_PER_REGION: usize = 512;
/// Marks a region whose pages have different owners. Keys are limited to 0..=0xFFFE.
pub const MIXED: u16 = 0xFFFF;
pub const MAX_KEY: u16 = 0xFFFE;

pub struct Memory {
    pub bytes: u64,
    region_owner: Vec<u16>,
    mixed: HashMap<u32, Box<[u16; PAGES_PER_REGION]>, FxBuild>,
    /// line -> (key << 48) | version, for lines last written under a key other than the owner's
    lines: HashMap<u64, u64, FxBuild>,
    region_foreign: Vec<u32>,
    version: u64,
}

#[inline(always)]
fn region_of_line(line: u64) -> usize {
    (line >> LINES_PER_REGION_SHIFT) as usize
}

impl Memory {
    pub fn new(bytes: u64) -> Self {
        let regions = bytes.div_ceil(1 << REGION_SHIFT) as usize;
        Memory {
            bytes,
            region_owner: vec![0; regions],
            mixed: HashMap::default(),
            lines: HashMap::default(),
            region_foreign: vec![0; regions],
            version: 0,
        }
    }

    /// Owner key of the page holding `line`.
    #[inline(always)]
    pub fn owner(&self, line: u64) -> u16 {
        let r = region_of_line(line);
        let o = self.region_owner[r];
        if o != MIXED {
            o
        } else {
            self.mixed[&(r as u32)][((line >> 6) & 511) as usize]
        }
    }

    /// Ask the host CPU to start loading what `data_key(line)` reads first (a hint only).
    #[inline(always)]
    pub fn prefetch(&self, line: u64) {
        crate::util::prefetch_at(self.region_foreign.as_ptr(), region_of_line(line));
        // and the owner word `data_key` reads next (a 64 GiB trace spans 64 KiB of them)
        crate::util::prefetch_at(self.region_owner.as_ptr(), region_of_line(line));
    }

    /// Key under which the line's current memory contents were written.
    #[inline(always)]
    pub fn data_key(&self, line: u64) -> u16 {
        if self.region_foreign[region_of_line(line)] == 0 {
            return self.owner(line);
        }
        match self.lines.get(&line) {
            Some(v) => (v >> 48) as u16,
            None => self.owner(line),
        }
    }

    /// (key of the last write, version of that write if it was under a foreign key, else 0).
    pub fn line_state(&self, line: u64) -> (u16, u64) {
        match self.lines.get(&line) {
            Some(v) => ((v >> 48) as u16, v & ((1 << 48) - 1)),
            None => (self.owner(line), 0),
        }
    }

    pub fn writes(&self) -> u64 {
        self.version
    }

    /// Record a write of a whole line under `key` (a write-back or a device write). Returns the
    /// page's owner.
    #[inline]
    pub fn write(&mut self, line: u64, key: u16) -> u16 {
        self.version += 1;
        let owner = self.owner(line);
        let r = region_of_line(line);
        if key != owner {
            let v = ((key as u64) << 48) | (self.version & ((1 << 48) - 1));
            if self.lines.insert(line, v).is_none() {
                self.region_foreign[r] += 1;
            }
        } else if self.region_foreign[r] != 0 && self.lines.remove(&line).is_some() {
            self.region_foreign[r] -= 1;
        }
        owner
    }

    /// `write(line, key)` for every line of [first, last), in order, with the same end state (each
    /// foreign line keeps the version its own write would have given it), in time proportional to
    /// the regions and the foreign lines of the range rather than to its lines.
    pub fn write_range(&mut self, first: u64, last: u64, key: u16) {
        let v0 = self.version;
        let mut l = first;
        while l < last {
            let r = region_of_line(l);
            let rend = (((r as u64) + 1) << LINES_PER_REGION_SHIFT).min(last);
            let o = self.region_owner[r];
            if o != MIXED {
                self.write_run(l, rend, key, o, v0.wrapping_sub(first));
            } else {
                // page by page (4 KiB = 64 lines) where the region's pages have their own owners
                let mut a = l;
                while a < rend {
                    let b = ((a | 63) + 1).min(rend);
                    let owner = self.owner(a);
                    self.write_run(a, b, key, owner, v0.wrapping_sub(first));
                    a = b;
                }
            }
            l = rend;
        }
        self.version = v0 + (last - first);
    }

    /// Lines [a, b) of one region, all owned by `owner`, written under `key`; line l's write is
    /// number `base + l + 1` (so that the versions follow `write_range`'s order).
    fn write_run(&mut self, a: u64, b: u64, key: u16, owner: u16, base: u64) {
        let r = region_of_line(a);
        if key != owner {
            for l in a..b {
                let v = ((key as u64) << 48) | (base.wrapping_add(l + 1) & ((1 << 48) - 1));
                if self.lines.insert(l, v).is_none() {
                    self.region_foreign[r] += 1;
                }
            }
        } else if self.region_foreign[r] != 0 {
            self.reset_lines(r, a, b);
        }
    }

    /// Number of lines whose memory contents were written under a key other than their owner's.
    pub fn foreign_lines(&self) -> usize {
        self.lines.len()
    }

    /// Give the pages of [pa, pa + size) (4 KiB aligned, validated by the caller) to `key` and reset
    /// their lines to the new owner's data.
    pub fn set_owner(&mut self, pa: u64, size: u64, key: u16) {
        let end = pa + size;
        let rsize = 1u64 << REGION_SHIFT;
        let mut a = pa;
        while a < end {
            let r = (a >> REGION_SHIFT) as usize;
            let rstart = (r as u64) << REGION_SHIFT;
            let rend = (rstart + rsize).min(self.bytes);
            let b = end.min(rend);
            if a == rstart && b == rend {
                self.region_owner[r] = key;
                self.mixed.remove(&(r as u32));
            } else {
                let cur = self.region_owner[r];
                let table = self
                    .mixed
                    .entry(r as u32)
                    .or_insert_with(|| Box::new([cur; PAGES_PER_REGION]));
                for p in ((a - rstart) >> 12)..((b - rstart) >> 12) {
                    table[p as usize] = key;
                }
                let valid_pages = ((rend - rstart) >> 12) as usize;
                let first = table[0];
                if table[..valid_pages].iter().all(|&o| o == first) {
                    self.region_owner[r] = first;
                    self.mixed.remove(&(r as u32));
                } else {
                    self.region_owner[r] = MIXED;
                }
            }
            if self.region_foreign[r] != 0 {
                self.reset_lines(r, a >> 6, b >> 6);
            }
            a = b;
        }
    }

    fn reset_lines(&mut self, r: usize, l0: u64, l1: u64) {
        let n = l1 - l0;
        let mut removed = 0u32;
        if (self.lines.len() as u64) < n {
            self.lines.retain(|&l, _| {
                let hit = l >= l0 && l < l1;
                removed += hit as u32;
                !hit
            });
        } else {
            for l in l0..l1 {
                if self.lines.remove(&l).is_some() {
                    removed += 1;
                }
            }
        }
        self.region_foreign[r] -= removed;
    }

    /// Approximate heap bytes used by the ownership and line tables.
    pub fn heap_bytes(&self) -> usize {
        self.region_owner.len() * 2
            + self.region_foreign.len() * 4
            + self.mixed.len() * (PAGES_PER_REGION * 2 + 16)
            + self.lines.capacity() * 24
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_splits_and_collapses() {
        let mut m = Memory::new(8 << 20);
        assert_eq!(m.owner(0), 0);
        m.set_owner(4096, 4096, 7);
        assert_eq!(m.owner(4096 >> 6), 7);
        assert_eq!(m.owner(0), 0);
        assert_eq!(m.owner(8192 >> 6), 0);
        m.set_owner(0, 2 << 20, 7);
        assert_eq!(m.owner(0), 7);
        assert!(m.mixed.is_empty());
        m.set_owner(2 << 20, 4 << 20, 3);
        assert_eq!(m.owner((5 << 20) >> 6), 3);
    }

    #[test]
    fn foreign_writes_are_kept_and_reset_by_set_owner() {
        let mut m = Memory::new(4 << 20);
        m.set_owner(0, 4096, 5);
        assert_eq!(m.write(1, 0), 5); // host-key write into key 5's page
        assert_eq!(m.data_key(1), 0);
        assert_eq!(m.data_key(2), 5);
        assert_eq!(m.foreign_lines(), 1);
        assert_eq!(m.write(1, 5), 5); // the owner writes it again
        assert_eq!(m.data_key(1), 5);
        assert_eq!(m.foreign_lines(), 0);
        m.write(3, 9);
        let (k, v) = m.line_state(3);
        assert_eq!((k, v), (9, 3));
        m.set_owner(0, 4096, 0);
        assert_eq!(m.data_key(3), 0);
        assert_eq!(m.foreign_lines(), 0);
    }

    #[test]
    fn partial_last_region() {
        let mut m = Memory::new(3 << 20);
        m.set_owner(2 << 20, 1 << 20, 4);
        assert_eq!(m.owner(((2 << 20) + 4096) >> 6), 4);
        assert!(m.mixed.is_empty(), "a whole (partial) last region is uniform");
    }
}
