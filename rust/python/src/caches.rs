//! Cache and memory operations: access batches, WBINVD/WBNOINVD, CLFLUSH(OPT), VM_PAGE_FLUSH,
//! DMA, page ownership and firmware ACTIVATE, and the views of cache contents. Argument conversion
//! and checking only: the semantics are the engine's (host.rs, cache.rs, directory.rs, memory.rs).

use numpy::PyArray1;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use sevsim_engine::host::{Col, FlushOp, LEVEL_NAMES};

use crate::args::*;
use crate::PyHost;

#[pymethods]
impl PyHost {
    /// Run a batch of memory accesses, in order, in one call (the GIL is released while it runs).
    /// `cpu` (uint32), `addr` (uint64, physical), `write` (bool), `key` (uint16): 1-D numpy arrays
    /// of one length, or scalars applied to every access. Returns counts of where the accesses were
    /// served ({'l1', 'l2', 'l3', 'peer', 'remote', 'memory', 'rmp_fault'}) and, with
    /// `return_levels`, a uint8 array 'levels' with one code per access (0=l1 .. 5=memory,
    /// 6=refused by the SEV-SNP RMP checks). Nothing runs if any argument is bad.
    #[pyo3(signature = (cpu, addr, write=None, key=None, *, return_levels=false))]
    fn access<'py>(
        &self,
        py: Python<'py>,
        cpu: &Bound<'py, PyAny>,
        addr: &Bound<'py, PyAny>,
        write: Option<&Bound<'py, PyAny>>,
        key: Option<&Bound<'py, PyAny>>,
        return_levels: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let mut h = self.host("access")?;
        let cpu_c = col_arg::<u32>(cpu, "cpu", "uint32", |o| Ok(self.cpu(o, "cpu")? as u32))?;
        let addr_c = col_arg::<u64>(addr, "addr", "uint64", |o| int_arg(o, "addr", u64::MAX))?;
        let zero = 0i64.into_pyobject(py)?.into_any();
        let write_c = write_arg(py, write)?;
        let key_c = col_arg::<u16>(key.unwrap_or(&zero), "key", "uint16", |o| Self::key(o, "key"))?;
        let (mut o1, mut o2, mut o3, mut o4) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let single_addr;
        let addr_s: &[u64] = match &addr_c {
            ColArg::Each(a) => contiguous(a, &mut o2),
            ColArg::One(a) => {
                single_addr = [*a];
                &single_addr
            }
        };
        let (cpu_s, write_s, key_s) = (cpu_c.col(&mut o1), write_c.col(&mut o3), key_c.col(&mut o4));
        let n = addr_s.len();
        let mut levels = if return_levels { vec![0u8; n] } else { Vec::new() };
        let h = &mut *h;
        // the whole batch is checked before any chunk runs (nothing runs if an argument is bad);
        // each chunk is checked again on its copy, which only fails if the arrays changed meanwhile
        h.check_access_batch(&cpu_s, addr_s, &write_s, &key_s, return_levels.then_some(n)).map_err(verr)?;
        let mut by_level = [0u64; 7];
        let mut i = 0;
        let m = n.min(CHUNK);
        let (mut bc, mut ba, mut bw, mut bk) = (Vec::with_capacity(m), Vec::with_capacity(m), Vec::with_capacity(m), Vec::with_capacity(m));
        while i < n {
            let j = (i + CHUNK).min(n);
            let lv = if return_levels { Some(&mut levels[i..j]) } else { None };
            let (c, w, k) = (stage(&cpu_s, i, j, &mut bc), stage(&write_s, i, j, &mut bw), stage(&key_s, i, j, &mut bk));
            let Col::Each(a) = stage(&Col::Each(addr_s), i, j, &mut ba) else { unreachable!() };
            // the accesses still to come, this chunk's included: the directory is sized once
            h.expect_accesses(n - i);
            let got = py.allow_threads(|| h.access_batch(c, a, w, k, lv));
            h.expect_accesses(0);
            let got = got.map_err(|e| partial(e, i, n))?;
            for (t, g) in by_level.iter_mut().zip(got) {
                *t += g;
            }
            i = j;
            if i < n {
                py.check_signals().map_err(|e| interrupted(py, e, i, n))?;
            }
        }
        let d = PyDict::new(py);
        for (i, name) in LEVEL_NAMES.iter().enumerate() {
            d.set_item(*name, by_level[i])?;
        }
        if return_levels {
            d.set_item("levels", PyArray1::from_vec(py, levels))?;
        }
        Ok(d)
    }
    /// WBINVD on `cpu`: write back and invalidate its core's caches (and, per the preset's
    /// wbinvd_scope, its CCD's L3). Returns the cycles it took.
    fn wbinvd(&self, cpu: &Bound<'_, PyAny>) -> PyResult<u64> {
        let mut h = self.host("wbinvd")?;
        let c = self.cpu(cpu, "cpu")?;
        h.wbinvd(c).map_err(verr)
    }
    /// WBNOINVD on `cpu`: write back dirty lines, keep every line valid.
    fn wbnoinvd(&self, cpu: &Bound<'_, PyAny>) -> PyResult<u64> {
        let mut h = self.host("wbnoinvd")?;
        let c = self.cpu(cpu, "cpu")?;
        h.wbnoinvd(c).map_err(verr)
    }
    /// WBINVD on every CPU in `cpus`, sent by IPI from `initiator`, which waits for all of them
    /// (wbinvd_on_cpus_mask). Returns the initiator's cycles.
    fn wbinvd_on_cpus(&self, initiator: &Bound<'_, PyAny>, cpus: &Bound<'_, PyAny>) -> PyResult<u64> {
        let mut h = self.host("wbinvd_on_cpus")?;
        let i = self.cpu(initiator, "initiator")?;
        let cs = self.cpu_list(cpus, "cpus")?;
        h.wbinvd_on_cpus(i, &cs, true).map_err(verr)
    }
    /// WBNOINVD on every CPU in `cpus` (wbnoinvd_on_cpus_mask). Returns the initiator's cycles.
    fn wbnoinvd_on_cpus(&self, initiator: &Bound<'_, PyAny>, cpus: &Bound<'_, PyAny>) -> PyResult<u64> {
        let mut h = self.host("wbnoinvd_on_cpus")?;
        let i = self.cpu(initiator, "initiator")?;
        let cs = self.cpu_list(cpus, "cpus")?;
        h.wbinvd_on_cpus(i, &cs, false).map_err(verr)
    }
    /// CLFLUSH of the line holding `pa` through a mapping with `key`. Returns cycles.
    #[pyo3(signature = (cpu, pa, key=None))]
    fn clflush(&self, cpu: &Bound<'_, PyAny>, pa: &Bound<'_, PyAny>, key: Option<&Bound<'_, PyAny>>) -> PyResult<u64> {
        self.flush(cpu, pa, None, key, FlushOp::Clflush, false)
    }
    /// CLFLUSHOPT of the line holding `pa` through a mapping with `key`. Returns cycles.
    #[pyo3(signature = (cpu, pa, key=None))]
    fn clflushopt(&self, cpu: &Bound<'_, PyAny>, pa: &Bound<'_, PyAny>, key: Option<&Bound<'_, PyAny>>) -> PyResult<u64> {
        self.flush(cpu, pa, None, key, FlushOp::Clflushopt, false)
    }
    /// WRMSR MSR_AMD64_VM_PAGE_FLUSH: write back and invalidate the 4 KiB page at `pa` cached under
    /// guest ASID `asid`. Returns False (and counts a fault) where the CPU lacks the feature (#GP).
    fn vm_page_flush(&self, cpu: &Bound<'_, PyAny>, pa: &Bound<'_, PyAny>, asid: &Bound<'_, PyAny>) -> PyResult<bool> {
        let mut h = self.host("vm_page_flush")?;
        let c = self.cpu(cpu, "cpu")?;
        let pa = int_arg(pa, "pa", u64::MAX)?;
        let asid = Self::key(asid, "asid")?;
        h.vm_page_flush(c, pa, asid).map_err(verr)
    }
    /// A device reads [pa, pa + size) with `key` (0 = plaintext).
    #[pyo3(signature = (pa, size, key=None))]
    fn dma_read(&self, pa: &Bound<'_, PyAny>, size: &Bound<'_, PyAny>, key: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        self.dma(pa, size, key, false)
    }
    /// A device writes [pa, pa + size) with `key` (0 = plaintext).
    #[pyo3(signature = (pa, size, key=None))]
    fn dma_write(&self, pa: &Bound<'_, PyAny>, size: &Bound<'_, PyAny>, key: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        self.dma(pa, size, key, true)
    }
    /// Hand the 4 KiB pages of [pa, pa + size) to `key`; their memory now holds the new owner's data.
    fn set_owner(&self, pa: &Bound<'_, PyAny>, size: &Bound<'_, PyAny>, key: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut h = self.host("set_owner")?;
        let pa = int_arg(pa, "pa", u64::MAX)?;
        let size = size_arg(size, "size")?;
        let key = Self::key(key, "key")?;
        h.set_owner(pa, size, key).map_err(verr)
    }
    /// The owner key of the page holding `pa`.
    fn owner(&self, pa: &Bound<'_, PyAny>) -> PyResult<u16> {
        let h = self.host("owner")?;
        let pa = int_arg(pa, "pa", u64::MAX)?;
        h.owner(pa).map_err(verr)
    }
    /// (key, version) of the last write to the line holding `pa` in memory: the owner's key and 0
    /// if the line holds its owner's data, else the foreign key and the write's sequence number.
    fn memory_line(&self, pa: &Bound<'_, PyAny>) -> PyResult<(u16, u64)> {
        let h = self.host("memory_line")?;
        let pa = int_arg(pa, "pa", u64::MAX)?;
        h.check_addr("pa", pa).map_err(verr)?;
        Ok(h.mem.line_state(pa / 64))
    }
    /// Firmware ACTIVATE of a new key into key slot `key`: lines still cached under it become stale.
    /// Returns how many cached copies became stale.
    fn activate(&self, key: &Bound<'_, PyAny>) -> PyResult<u64> {
        let mut h = self.host("activate")?;
        let k = Self::key(key, "key")?;
        h.activate(k).map_err(verr)
    }
    /// Every cached copy of the line holding `pa`: a list of dicts with level (1-3), inst (core or
    /// CCD), key, dirty, exclusive, stale.
    fn copies<'py>(&self, py: Python<'py>, pa: &Bound<'_, PyAny>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let h = self.host("copies")?;
        let pa = int_arg(pa, "pa", u64::MAX)?;
        let cs = h.copies(pa).map_err(verr)?;
        cs.iter()
            .map(|c| {
                let d = PyDict::new(py);
                d.set_item("level", c.level)?;
                d.set_item("inst", c.inst)?;
                d.set_item("key", c.key)?;
                d.set_item("dirty", c.dirty)?;
                d.set_item("exclusive", c.exclusive)?;
                d.set_item("stale", c.stale)?;
                Ok(d)
            })
            .collect()
    }
    /// The lines of one cache set, most recently used first: [(line address, key, dirty)].
    fn set_contents(&self, level: &Bound<'_, PyAny>, inst: &Bound<'_, PyAny>, set: &Bound<'_, PyAny>) -> PyResult<Vec<(u64, u16, bool)>> {
        let h = self.host("set_contents")?;
        let level = int_arg(level, "level", 0xFF)? as u8;
        let inst = int_arg(inst, "inst", u32::MAX as u64)? as usize;
        let set = int_arg(set, "set", u32::MAX as u64)? as usize;
        h.set_contents(level, inst, set).map_err(verr)
    }
    /// (valid, dirty) line counts per instance of cache `level` (1, 2: per core; 3: per CCD).
    fn occupancy<'py>(&self, py: Python<'py>, level: &Bound<'_, PyAny>) -> PyResult<(Bound<'py, PyArray1<u64>>, Bound<'py, PyArray1<u64>>)> {
        let h = self.host("occupancy")?;
        let level = int_arg(level, "level", 0xFF)? as u8;
        let (v, d) = h.occupancy(level).map_err(verr)?;
        Ok((PyArray1::from_vec(py, v), PyArray1::from_vec(py, d)))
    }
    /// Number of cached copies (L2 and L3) under `key` (any key if None); with `dirty`, only dirty ones.
    #[pyo3(signature = (key=None, dirty=false))]
    fn cached_lines(&self, key: Option<&Bound<'_, PyAny>>, dirty: bool) -> PyResult<u64> {
        let h = self.host("cached_lines")?;
        let k = match key {
            Some(k) if !k.is_none() => Some(Self::key(k, "key")?),
            _ => None,
        };
        Ok(h.cached_lines(k, dirty))
    }
    /// Latent hazards, without changing anything: dirty cached copies that will corrupt memory
    /// when written back. {'dirty_foreign_owner': n, 'dirty_stale_key': n}.
    fn audit<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let h = self.host("audit")?;
        let (f, st) = h.audit();
        let d = PyDict::new(py);
        d.set_item("dirty_foreign_owner", f)?;
        d.set_item("dirty_stale_key", st)?;
        Ok(d)
    }
}

impl PyHost {
    pub(crate) fn flush(
        &self,
        cpu: &Bound<'_, PyAny>,
        pa: &Bound<'_, PyAny>,
        size: Option<&Bound<'_, PyAny>>,
        key: Option<&Bound<'_, PyAny>>,
        op: FlushOp,
        fenced: bool,
    ) -> PyResult<u64> {
        let mut h = self.host("flush")?;
        let c = self.cpu(cpu, "cpu")?;
        let pa = int_arg(pa, "pa", u64::MAX)?;
        let size = match size {
            Some(s) => {
                let s = size_arg(s, "size")?;
                if s == 0 {
                    return Err(PyValueError::new_err("size must be positive"));
                }
                s
            }
            None => 1,
        };
        let key = match key {
            Some(k) if !k.is_none() => Self::key(k, "key")?,
            _ => 0,
        };
        h.clflush(c, pa, size, key, op, fenced).map_err(verr)
    }

    pub(crate) fn dma(&self, pa: &Bound<'_, PyAny>, size: &Bound<'_, PyAny>, key: Option<&Bound<'_, PyAny>>, write: bool) -> PyResult<()> {
        let mut h = self.host("dma")?;
        let pa = int_arg(pa, "pa", u64::MAX)?;
        let size = size_arg(size, "size")?;
        if size == 0 {
            return Err(PyValueError::new_err("size must be positive"));
        }
        let key = match key {
            Some(k) if !k.is_none() => Self::key(k, "key")?,
            _ => 0,
        };
        h.dma(pa, size, key, write).map_err(verr)
    }
}
