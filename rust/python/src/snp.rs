//! SEV-SNP: the RMP (RMPUPDATE, PSMASH, PVALIDATE and their batches), the compact direct map and
//! its splits, the kernel's flush_tlb_all(), idle CPUs, and the page-in primitives (page clearing,
//! #NPF exits, DRAM traffic). Argument conversion and checking only: the semantics are the
//! engine's (rmp.rs, snp.rs, directmap.rs, kflush.rs, membw.rs).

use numpy::PyArray1;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use sevsim_engine::directmap::KernelFlush;
use sevsim_engine::rmp::RmpState;
use sevsim_engine::snp::PAGE_OFFSET;

use crate::PyHost;
use crate::args::*;

pub(crate) fn flush_arg(s: &str) -> PyResult<KernelFlush> {
    KernelFlush::parse(s).ok_or_else(|| {
        PyValueError::new_err(format!("flush = {s:?} is not a flush method: use \"ipi\", \"invlpgb\" or \"none\""))
    })
}

impl PyHost {
    pub(crate) fn snp_set_memory_4k(&self, cpu: &Bound<'_, PyAny>, va: &Bound<'_, PyAny>, flush: &str) -> PyResult<u64> {
        let mut h = self.host("snp_set_memory_4k")?;
        let c = self.cpu(cpu, "cpu")?;
        let f = flush_arg(flush)?;
        Ok(h.set_memory_4k_with(c, int_arg(va, "va", u64::MAX)?, f).map_err(verr)?.0)
    }

    pub(crate) fn snp_set_memory_4k_batch<'py>(
        &self,
        py: Python<'py>,
        cpu: &Bound<'py, PyAny>,
        pa: &Bound<'py, PyAny>,
        flush: &str,
    ) -> PyResult<(u64, Bound<'py, PyArray1<u8>>)> {
        let mut h = self.host("snp_set_memory_4k_batch")?;
        let c = self.cpu(cpu, "cpu")?;
        let f = flush_arg(flush)?;
        let pa = array_arg::<u64>(pa, "pa", "uint64")?;
        let mut owned = Vec::new();
        let p = contiguous(&pa, &mut owned);
        let mut splits = vec![0u8; p.len()];
        let cycles = h.set_memory_4k_batch(c, p, f, &mut splits).map_err(verr)?;
        Ok((cycles, PyArray1::from_vec(py, splits)))
    }

    pub(crate) fn snp_direct_map_leaf(&self, pa: &Bound<'_, PyAny>) -> PyResult<u64> {
        let h = self.host("snp_direct_map_leaf")?;
        Ok(h.direct_map_leaf(int_arg(pa, "pa", u64::MAX)?).map_err(verr)?.bytes())
    }

    pub(crate) fn snp_direct_map_leaf_sizes<'py>(&self, py: Python<'py>, pa: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyArray1<u32>>> {
        let h = self.host("snp_direct_map_leaf_sizes")?;
        let pa = array_arg::<u64>(pa, "pa", "uint64")?;
        let mut owned = Vec::new();
        let p = contiguous(&pa, &mut owned);
        h.check_addrs("pa", p).map_err(verr)?;
        let out: Vec<u32> = p.iter().map(|&a| h.direct_map_leaf(a).map(|s| s.bytes() as u32)).collect::<Result<_, _>>().map_err(verr)?;
        Ok(PyArray1::from_vec(py, out))
    }

    pub(crate) fn snp_direct_map_leaves<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let h = self.host("snp_direct_map_leaves")?;
        let [k4, m2, g1] = h.direct_map_leaves();
        let d = PyDict::new(py);
        d.set_item("4K", k4)?;
        d.set_item("2M", m2)?;
        d.set_item("1G", g1)?;
        Ok(d)
    }

    pub(crate) fn snp_flush_tlb_all(&self, initiator: &Bound<'_, PyAny>, flush: &str) -> PyResult<u64> {
        let mut h = self.host("snp_flush_tlb_all")?;
        let i = self.cpu(initiator, "initiator")?;
        let f = flush_arg(flush)?;
        h.kernel_flush_tlb_all(i, f).map_err(verr)
    }

    pub(crate) fn snp_set_cpu_idle(&self, cpus: &Bound<'_, PyAny>, idle: bool) -> PyResult<()> {
        let mut h = self.host("snp_set_cpu_idle")?;
        let cs = self.cpu_list(cpus, "cpus")?;
        h.set_cpu_idle(&cs, idle).map_err(verr)
    }

    pub(crate) fn snp_cpu_idle<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray1<bool>>> {
        let h = self.host("snp_cpu_idle")?;
        Ok(PyArray1::from_slice(py, h.cpu_idle()))
    }

    pub(crate) fn snp_clear_page_list(&self, cpu: &Bound<'_, PyAny>, pa: &Bound<'_, PyAny>, page: Option<&Bound<'_, PyAny>>) -> PyResult<u64> {
        let mut h = self.host("snp_clear_page_list")?;
        let c = self.cpu(cpu, "cpu")?;
        let size = match page {
            Some(p) if !p.is_none() => crate::page_size_arg(p, "page")?,
            _ => sevsim_engine::paging::PageSize::K4,
        };
        let pa = array_arg::<u64>(pa, "pa", "uint64")?;
        let mut owned = Vec::new();
        let p = contiguous(&pa, &mut owned);
        h.clear_page_list(c, p, size).map_err(verr)
    }

    pub(crate) fn snp_direct_map_walks(&self, cpu: &Bound<'_, PyAny>, pa: &Bound<'_, PyAny>) -> PyResult<(u64, u64)> {
        let mut h = self.host("snp_direct_map_walks")?;
        let c = self.cpu(cpu, "cpu")?;
        let pa = array_arg::<u64>(pa, "pa", "uint64")?;
        let mut owned = Vec::new();
        let p = contiguous(&pa, &mut owned);
        h.direct_map_walks(c, p).map_err(verr)
    }
}

#[pymethods]
impl PyHost {
    // SEV-SNP: RMP, direct map, page-in primitives

    /// Start of the direct map (__va(0)).
    #[classattr]
    const PAGE_OFFSET: u64 = PAGE_OFFSET;
    /// SYSCFG.SNPEn: from now on the RMP checks apply to memory accesses. ValueError on a preset
    /// without SEV-SNP (features['snp'] false).
    fn snp_enable(&self) -> PyResult<()> {
        let mut h = self.host("snp_enable")?;
        h.snp_enable().map_err(verr)
    }
    #[getter]
    fn snp_enabled(&self) -> PyResult<bool> {
        let h = self.host("snp_enabled")?;
        Ok(h.snp_enabled())
    }
    /// Mark guest key `asid` as an SNP guest's (its private accesses get the RMP checks).
    #[pyo3(signature = (asid, snp=true))]
    fn snp_set_asid(&self, asid: &Bound<'_, PyAny>, snp: bool) -> PyResult<()> {
        let mut h = self.host("snp_set_asid")?;
        let asid = int_arg(asid, "asid", 0xFFFF)? as u16;
        h.snp_set_asid(asid, snp).map_err(verr)
    }
    /// RMPUPDATE of the 4 KiB page (or, with huge, the 2 MiB region) at `pa`: the hardware's return
    /// code (0 success, 1 FAIL_INPUT, 2 FAIL_PERMISSION, 4 FAIL_OVERLAP). Clears Validated.
    #[pyo3(signature = (cpu, pa, *, assigned, huge=false, asid=None, gpa=None, immutable=false))]
    #[allow(clippy::too_many_arguments)]
    fn rmpupdate(&self, cpu: &Bound<'_, PyAny>, pa: &Bound<'_, PyAny>, assigned: bool, huge: bool, asid: Option<&Bound<'_, PyAny>>, gpa: Option<&Bound<'_, PyAny>>,
                 immutable: bool) -> PyResult<u8> {
        let mut h = self.host("rmpupdate")?;
        let asid = opt_int(asid, "asid", 0xFFFF)?.unwrap_or(0) as u16;
        let gpa = opt_int(gpa, "gpa", u64::MAX)?.unwrap_or(0) as u64;
        let c = self.cpu(cpu, "cpu")?;
        let pa = int_arg(pa, "pa", u64::MAX)?;
        h.rmpupdate(c, pa, RmpState { assigned, huge, asid, gpa, immutable }).map_err(verr)
    }
    /// RMPUPDATE of many pages in one call: pa[i] gets (assigned, huge, asid, gpa[i], immutable).
    /// Returns the codes (uint8 array). Every address is checked before any update.
    #[pyo3(signature = (cpu, pa, gpa, *, assigned, huge=false, asid=None, immutable=false))]
    #[allow(clippy::too_many_arguments)]
    fn rmpupdate_batch<'py>(&self, py: Python<'py>, cpu: &Bound<'py, PyAny>, pa: &Bound<'py, PyAny>,
                            gpa: &Bound<'py, PyAny>, assigned: bool, huge: bool, asid: Option<&Bound<'py, PyAny>>,
                            immutable: bool)
                            -> PyResult<Bound<'py, PyArray1<u8>>> {
        let mut h = self.host("rmpupdate_batch")?;
        // scalars first, whatever the arrays' lengths (an empty batch is checked too)
        let c = self.cpu(cpu, "cpu")?;
        let asid = match asid { Some(a) => rmp_asid(a)?, None => 0 };
        let (pa, gpa) = (array_arg::<u64>(pa, "pa", "uint64")?, array_arg::<u64>(gpa, "gpa", "uint64")?);
        let (p, g) = (pa.as_array(), gpa.as_array());
        if p.len() != g.len() {
            return Err(PyValueError::new_err(format!("pa has {} elements, gpa {}", p.len(), g.len())));
        }
        let mem = h.memory_bytes();
        for (i, &a) in p.iter().enumerate() {
            // every argument is checked before any update: a bad batch changes nothing
            if a >= mem || (huge && (a & !((1 << 21) - 1)) + (1 << 21) > mem) {
                return Err(PyValueError::new_err(format!("pa[{i}] = {a:#x} is past the end of memory")));
            }
        }
        let mut out = Vec::with_capacity(p.len()); // (a bad asid fails on the first, before any change)
        for i in 0..p.len() {
            out.push(h.rmpupdate(c, p[i], RmpState { assigned, huge, asid, gpa: g[i], immutable }).map_err(verr)?);
        }
        Ok(PyArray1::from_vec(py, out))
    }
    /// PSMASH of the 2 MiB entry at `pa`: its return code.
    fn psmash(&self, cpu: &Bound<'_, PyAny>, pa: &Bound<'_, PyAny>) -> PyResult<u8> {
        let mut h = self.host("psmash")?;
        let c = self.cpu(cpu, "cpu")?;
        h.psmash(c, int_arg(pa, "pa", u64::MAX)?).map_err(verr)
    }
    /// PVALIDATE by guest `asid` on `cpu` of the page at `pa` mapped at `gpa`: (code, changed).
    /// Codes: 0, 1 FAIL_INPUT, 6 FAIL_SIZEMISMATCH, 0x80 #NPF(RMP), 0x81 #NPF(RMP|SIZEM);
    /// changed False with code 0 is the hardware's CF=1 "no change".
    #[pyo3(signature = (cpu, asid, pa, gpa, *, huge=false, validate=true))]
    fn pvalidate(&self, cpu: &Bound<'_, PyAny>, asid: &Bound<'_, PyAny>, pa: &Bound<'_, PyAny>, gpa: &Bound<'_, PyAny>,
                 huge: bool, validate: bool) -> PyResult<(u8, bool)> {
        let mut h = self.host("pvalidate")?;
        let c = self.cpu(cpu, "cpu")?;
        let asid = rmp_asid(asid)?;
        let (pa, gpa) = (int_arg(pa, "pa", u64::MAX)?, int_arg(gpa, "gpa", u64::MAX)?);
        h.pvalidate(c, asid, pa, gpa, huge, validate).map_err(verr)
    }
    /// PVALIDATE of many pages: returns (codes uint8, changed bool) arrays.
    #[pyo3(signature = (cpu, asid, pa, gpa, *, huge=false, validate=true))]
    #[allow(clippy::too_many_arguments)]
    fn pvalidate_batch<'py>(&self, py: Python<'py>, cpu: &Bound<'py, PyAny>, asid: &Bound<'py, PyAny>,
                            pa: &Bound<'py, PyAny>, gpa: &Bound<'py, PyAny>, huge: bool, validate: bool)
                            -> PyResult<(Bound<'py, PyArray1<u8>>, Bound<'py, PyArray1<bool>>)> {
        let mut h = self.host("pvalidate_batch")?;
        let c = self.cpu(cpu, "cpu")?;
        let asid = rmp_asid(asid)?;
        let (pa, gpa) = (array_arg::<u64>(pa, "pa", "uint64")?, array_arg::<u64>(gpa, "gpa", "uint64")?);
        let (p, g) = (pa.as_array(), gpa.as_array());
        if p.len() != g.len() {
            return Err(PyValueError::new_err(format!("pa has {} elements, gpa {}", p.len(), g.len())));
        }
        for (i, &a) in p.iter().enumerate() {
            if a >= h.memory_bytes() {
                return Err(PyValueError::new_err(format!("pa[{i}] = {a:#x} is past the end of memory")));
            }
        }
        let (mut codes, mut changed) = (Vec::with_capacity(p.len()), Vec::with_capacity(p.len()));
        for i in 0..p.len() {
            let (code, ch) = h.pvalidate(c, asid, p[i], g[i], huge, validate).map_err(verr)?;
            codes.push(code);
            changed.push(ch);
        }
        Ok((PyArray1::from_vec(py, codes), PyArray1::from_vec(py, changed)))
    }
    /// The RMP entry of the page at `pa`: dict with assigned, huge, asid, gpa, validated, immutable.
    fn rmp_entry<'py>(&self, py: Python<'py>, pa: &Bound<'_, PyAny>) -> PyResult<Bound<'py, PyDict>> {
        let h = self.host("rmp_entry")?;
        let e = h.rmp_entry(int_arg(pa, "pa", u64::MAX)?).map_err(verr)?;
        let d = PyDict::new(py);
        d.set_item("assigned", e.assigned)?;
        d.set_item("huge", e.huge)?;
        d.set_item("asid", e.asid)?;
        d.set_item("gpa", e.gpa)?;
        d.set_item("validated", e.validated)?;
        d.set_item("immutable", e.immutable)?;
        Ok(d)
    }
    /// The RMP entries of the pages at `pa` (uint64 array), as a dict of arrays: assigned, huge,
    /// validated, immutable (bool), asid (uint16), gpa (uint64; for a 2 MiB entry, the page's
    /// own GPA within it). Every address is checked first.
    fn rmp_entries<'py>(&self, py: Python<'py>, pa: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyDict>> {
        let h = self.host("rmp_entries")?;
        let pa = array_arg::<u64>(pa, "pa", "uint64")?;
        let p = pa.as_array();
        for (i, &a) in p.iter().enumerate() {
            if a >= h.memory_bytes() {
                return Err(PyValueError::new_err(format!("pa[{i}] = {a:#x} is past the end of memory")));
            }
        }
        let n = p.len();
        let (mut assigned, mut huge, mut validated, mut immutable) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        let (mut asid, mut gpa) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for &a in p.iter() {
            let e = h.rmp_entry(a).map_err(verr)?;
            assigned.push(e.assigned);
            huge.push(e.huge);
            validated.push(e.validated);
            immutable.push(e.immutable);
            asid.push(e.asid);
            gpa.push(e.gpa);
        }
        let d = PyDict::new(py);
        d.set_item("assigned", PyArray1::from_vec(py, assigned))?;
        d.set_item("huge", PyArray1::from_vec(py, huge))?;
        d.set_item("asid", PyArray1::from_vec(py, asid))?;
        d.set_item("gpa", PyArray1::from_vec(py, gpa))?;
        d.set_item("validated", PyArray1::from_vec(py, validated))?;
        d.set_item("immutable", PyArray1::from_vec(py, immutable))?;
        Ok(d)
    }
    /// Bytes the RMP's storage takes.
    #[getter]
    fn rmp_bytes(&self) -> PyResult<usize> {
        let h = self.host("rmp_bytes")?;
        Ok(h.rmp_heap_bytes())
    }
    /// lookup_address(): the size in bytes of the host-table leaf mapping `va`, or None.
    fn lookup_address(&self, va: &Bound<'_, PyAny>) -> PyResult<Option<u64>> {
        let h = self.host("lookup_address")?;
        Ok(h.lookup_address(int_arg(va, "va", u64::MAX)?).map(|s| s.bytes()))
    }
    /// __va(pa): the direct-map address of `pa`.
    fn direct_map_va(&self, pa: &Bound<'_, PyAny>) -> PyResult<u64> {
        let h = self.host("direct_map_va")?;
        let pa = int_arg(pa, "pa", u64::MAX)?;
        h.check_addr("pa", pa).map_err(verr)?;
        Ok(h.direct_map_va(pa))
    }
    /// set_memory_4k(va, 1) from `cpu`: split the direct-map leaf down to 4 KiB under cpa_lock
    /// with a flush_tlb_all() per split ("ipi", "invlpgb", or "none": a broken kernel that does
    /// not flush); nothing if already 4 KiB. Returns cycles (waiting included).
    #[pyo3(signature = (cpu, va, *, flush="ipi"))]
    fn set_memory_4k(&self, cpu: &Bound<'_, PyAny>, va: &Bound<'_, PyAny>, flush: &str) -> PyResult<u64> {
        self.snp_set_memory_4k(cpu, va, flush)
    }
    /// set_memory_4k(__va(pa[i]), 1) for each i in order: (cycles, splits uint8 per element).
    #[pyo3(signature = (cpu, pa, *, flush="ipi"))]
    fn set_memory_4k_batch<'py>(&self, py: Python<'py>, cpu: &Bound<'py, PyAny>, pa: &Bound<'py, PyAny>, flush: &str)
                                -> PyResult<(u64, Bound<'py, PyArray1<u8>>)> {
        self.snp_set_memory_4k_batch(py, cpu, pa, flush)
    }
    /// The size in bytes of the direct-map leaf over physical address `pa`.
    fn direct_map_leaf(&self, pa: &Bound<'_, PyAny>) -> PyResult<u64> {
        self.snp_direct_map_leaf(pa)
    }
    /// `direct_map_leaf` of every element of a uint64 array: uint32 sizes in bytes.
    fn direct_map_leaf_sizes<'py>(&self, py: Python<'py>, pa: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyArray1<u32>>> {
        self.snp_direct_map_leaf_sizes(py, pa)
    }
    /// Build the whole direct map at 4 KiB, free of charge (before the run): (1G, 2M) leaves split.
    fn direct_map_presplit(&self) -> PyResult<(u64, u64)> {
        let mut h = self.host("direct_map_presplit")?;
        Ok(h.direct_map_presplit())
    }
    /// Direct-map leaves by size: {"4K": n, "2M": n, "1G": n}.
    #[getter]
    fn direct_map_leaves<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.snp_direct_map_leaves(py)
    }
    /// Bytes the direct map's storage takes.
    #[getter]
    fn direct_map_bytes(&self) -> PyResult<usize> {
        let h = self.host("direct_map_bytes")?;
        Ok(h.direct_map_bytes())
    }
    /// The kernel's flush_tlb_all() from `initiator`: "ipi" (every other CPU interrupted; guest-mode
    /// targets exit and re-enter, idle ones wake) or "invlpgb" (INVLPGB + TLBSYNC). Returns cycles.
    #[pyo3(signature = (initiator, *, flush="ipi"))]
    fn flush_tlb_all(&self, initiator: &Bound<'_, PyAny>, flush: &str) -> PyResult<u64> {
        self.snp_flush_tlb_all(initiator, flush)
    }
    /// Mark `cpus` idle (an IPI must wake them from a C-state) or busy.
    #[pyo3(signature = (cpus, idle=true))]
    fn set_cpu_idle(&self, cpus: &Bound<'_, PyAny>, idle: bool) -> PyResult<()> {
        self.snp_set_cpu_idle(cpus, idle)
    }
    /// Per CPU: idle (bool array).
    #[getter]
    fn cpu_idle<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray1<bool>>> {
        self.snp_cpu_idle(py)
    }
    /// Charge `cpu` for allocating `count` pages (2 MiB with huge, else 4 KiB). Returns cycles.
    #[pyo3(signature = (cpu, count=None, *, huge=false))]
    fn alloc_pages(&self, cpu: &Bound<'_, PyAny>, count: Option<&Bound<'_, PyAny>>, huge: bool) -> PyResult<u64> {
        let mut h = self.host("alloc_pages")?;
        let count = opt_int(count, "count", u64::MAX)?.unwrap_or(1) as u64;
        let c = self.cpu(cpu, "cpu")?;
        h.alloc_pages(c, huge, count).map_err(verr)
    }
    /// Zero [pa, pa + size) from `cpu`, bounded by core and socket memory bandwidth (shared by
    /// every CPU's clears). Timing only. Returns cycles.
    fn clear_pages(&self, cpu: &Bound<'_, PyAny>, pa: &Bound<'_, PyAny>, size: &Bound<'_, PyAny>) -> PyResult<u64> {
        let mut h = self.host("clear_pages")?;
        let c = self.cpu(cpu, "cpu")?;
        h.clear_pages(c, int_arg(pa, "pa", u64::MAX)?, size_arg(size, "size")?).map_err(verr)
    }
    /// Charge `cpu` `count` nested page fault round trips (one call). Returns cycles.
    #[pyo3(signature = (cpu, count=None))]
    fn npf_exit(&self, cpu: &Bound<'_, PyAny>, count: Option<&Bound<'_, PyAny>>) -> PyResult<u64> {
        let mut h = self.host("npf_exit")?;
        let n = opt_int(count, "count", u32::MAX as u64)?.unwrap_or(1);
        let c = self.cpu(cpu, "cpu")?;
        h.npf_exits(c, n).map_err(verr)
    }
    /// Clear each page of `pa` (uint64; `page` "4K" or "2M") in order on `cpu`. Returns cycles.
    #[pyo3(signature = (cpu, pa, page=None))]
    fn clear_page_list(&self, cpu: &Bound<'_, PyAny>, pa: &Bound<'_, PyAny>, page: Option<&Bound<'_, PyAny>>) -> PyResult<u64> {
        self.snp_clear_page_list(cpu, pa, page)
    }
    /// Kernel data at `pa` (uint64) reached through the direct map: (walks, cycles).
    fn direct_map_walks(&self, cpu: &Bound<'_, PyAny>, pa: &Bound<'_, PyAny>) -> PyResult<(u64, u64)> {
        self.snp_direct_map_walks(cpu, pa)
    }
    /// DRAM utilisation of `cpu`'s socket now, in [0, 0.95].
    fn socket_utilisation(&self, cpu: &Bound<'_, PyAny>) -> PyResult<f64> {
        let h = self.host("socket_utilisation")?;
        let c = self.cpu(cpu, "cpu")?;
        h.socket_utilisation(c).map_err(verr)
    }
    /// Memory-latency factor beta of `cpu`'s socket now (>= 1).
    fn memory_factor(&self, cpu: &Bound<'_, PyAny>) -> PyResult<f64> {
        let h = self.host("memory_factor")?;
        let c = self.cpu(cpu, "cpu")?;
        h.memory_factor(c).map_err(verr)
    }
    /// Count `bytes` of DRAM traffic from `cpu` (raises its socket's utilisation; free).
    fn add_memory_traffic(&self, cpu: &Bound<'_, PyAny>, bytes: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut h = self.host("add_memory_traffic")?;
        let c = self.cpu(cpu, "cpu")?;
        let b = size_arg(bytes, "bytes")?;
        h.add_memory_traffic(c, b).map_err(verr)
    }
    /// Charge `cycles` of memory-bound work, times beta. Returns the cycles charged.
    fn spend_memory_bound(&self, cpu: &Bound<'_, PyAny>, cycles: &Bound<'_, PyAny>) -> PyResult<u64> {
        let mut h = self.host("spend_memory_bound")?;
        let c = self.cpu(cpu, "cpu")?;
        let n = int_arg(cycles, "cycles", u64::MAX >> 2)?;
        h.spend_memory_bound(c, n).map_err(verr)
    }
}
