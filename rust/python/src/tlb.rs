//! Page tables, translation contexts, VMRUN/VM entry and exit, translation batches and the TLB
//! invalidation instructions (INVLPG, INVPCID, INVLPGA, INVLPGB/TLBSYNC, INVEPT, INVVPID), nested
//! truth and run_guest. Argument conversion and checking only: the semantics are the engine's
//! (paging.rs, tlb.rs, context.rs, translate.rs, transition.rs, nested_truth.rs).

use numpy::{PyArray1, PyReadonlyArray1};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use sevsim_engine::context::CTX_COUNTERS;
use sevsim_engine::host::{Col, Host, LEVEL_NAMES};
use sevsim_engine::paging::{PageSize, TableKind, F_CBIT, F_GLOBAL, F_RDONLY};
use sevsim_engine::tlb::{Context, Invlpgb, Mode, NO_TABLE};
use sevsim_engine::translate::{Translated, VmrunResult};

use crate::PyHost;
use crate::args::*;

impl PyHost {
    pub(crate) fn ctx_arg(h: &Host, obj: &Bound<'_, PyAny>, name: &str) -> PyResult<u32> {
        let n = h.context_count();
        let v = crate::int_arg(obj, name, u32::MAX as u64)? as u32;
        if v as usize >= n {
            return Err(PyValueError::new_err(format!("{name} = {v}: no such context (there are {n}: 0..{})", n - 1)));
        }
        Ok(v)
    }

    pub(crate) fn tlb_set_context(
        &self,
        ctx: &Bound<'_, PyAny>,
        tag: Option<&Bound<'_, PyAny>>,
        nested: Option<&Bound<'_, PyAny>>,
        vm: Option<&Bound<'_, PyAny>>,
        key: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let mut h = self.host("tlb_set_context")?;
        let id = Self::ctx_arg(&h, ctx, "ctx")?;
        let tag = opt_int(tag, "tag", 0xFFFF)?.map(|v| v as u16);
        let nested = opt_int(nested, "nested", u32::MAX as u64 - 1)?.map(|v| v as u32);
        let vm = opt_int(vm, "vm", u32::MAX as u64)?.map(|v| v as u32);
        let key = match opt_int(key, "key", u64::MAX >> 1)? {
            Some(k) => Some(h.check_key("key", k).map_err(verr)?),
            None => None,
        };
        h.set_context(id, tag, nested, vm, key).map_err(verr)
    }

    pub(crate) fn tlb_context<'py>(&self, py: Python<'py>, ctx: &Bound<'_, PyAny>) -> PyResult<Bound<'py, PyDict>> {
        let h = self.host("tlb_context")?;
        let c = h.context(Self::ctx_arg(&h, ctx, "ctx")?).map_err(verr)?;
        let d = PyDict::new(py);
        d.set_item("mode", match c.mode { Mode::Host => "host", Mode::Svm => "svm", Mode::Vmx => "vmx" })?;
        d.set_item("tag", c.tag)?;
        d.set_item("pcid", c.pcid)?;
        d.set_item("pcide", c.pcide)?;
        d.set_item("cr3", c.cr3)?;
        d.set_item("nested", if c.nested == NO_TABLE { None } else { Some(c.nested) })?;
        d.set_item("key", c.key)?;
        d.set_item("vm", c.vm)?;
        let chain = h.nested_truth(Self::ctx_arg(&h, ctx, "ctx")?).map_err(verr)?;
        d.set_item("nested12", chain.map(|c| c.0))?;
        d.set_item("nested01", chain.map(|c| c.1))?;
        Ok(d)
    }

    pub(crate) fn tlb_context_counters<'py>(&self, py: Python<'py>, ctx: Option<&Bound<'_, PyAny>>) -> PyResult<Bound<'py, PyDict>> {
        let h = self.host("tlb_context_counters")?;
        let d = PyDict::new(py);
        match ctx {
            Some(c) if !c.is_none() => {
                let id = Self::ctx_arg(&h, c, "ctx")?;
                let v = h.context_counters(id).map_err(verr)?;
                for (name, x) in CTX_COUNTERS.iter().zip(v) {
                    d.set_item(*name, x)?;
                }
            }
            _ => {
                let all = h.context_counters_all();
                let w = CTX_COUNTERS.len();
                for (j, name) in CTX_COUNTERS.iter().enumerate() {
                    let col: Vec<u64> = all.chunks(w).map(|r| r[j]).collect();
                    d.set_item(*name, PyArray1::from_vec(py, col))?;
                }
            }
        }
        Ok(d)
    }

    pub(crate) fn tlb_set_nested_truth(&self, ctx: &Bound<'_, PyAny>, nested12: Option<&Bound<'_, PyAny>>, nested01: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let mut h = self.host("tlb_set_nested_truth")?;
        let id = Self::ctx_arg(&h, ctx, "ctx")?;
        let t12 = opt_int(nested12, "nested12", u32::MAX as u64 - 1)?.map(|v| v as u32);
        let t01 = opt_int(nested01, "nested01", u32::MAX as u64 - 1)?.map(|v| v as u32);
        let chain = match (t12, t01) {
            (Some(a), Some(b)) => Some((a, b)),
            (None, None) => None,
            _ => {
                return Err(PyValueError::new_err(format!(
                    "nested12 = {t12:?}, nested01 = {t01:?}: give both tables of the chain (L1's for L2 and L0's for L1), or neither to clear it"
                )))
            }
        };
        h.set_nested_truth(id, chain).map_err(verr)
    }

    pub(crate) fn tlb_run_guest<'py>(
        &self,
        py: Python<'py>,
        cpu: &Bound<'py, PyAny>,
        ctx: &Bound<'py, PyAny>,
        va: PyReadonlyArray1<'py, u64>,
        tlb_control: Option<&Bound<'py, PyAny>>,
        write: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<(&'static str, u64, u64)> {
        let mut h = self.host("tlb_run_guest")?;
        let c = self.cpu(cpu, "cpu")?;
        let id = Self::ctx_arg(&h, ctx, "ctx")?;
        let tc = opt_int(tlb_control, "tlb_control", 0xFF)?.unwrap_or(0) as u8;
        let write_c = write_arg(py, write)?;
        let (mut o1, mut o2) = (Vec::new(), Vec::new());
        let va_s = contiguous(&va, &mut o1);
        let write_s = write_c.col(&mut o2);
        let (r, by) = h.run_guest(c, id, tc, va_s, write_s).map_err(verr)?;
        let r = match r {
            VmrunResult::Entered => "entered",
            VmrunResult::VmexitInvalid => "vmexit_invalid",
        };
        Ok((r, by[7], by[6]))
    }
}

#[pymethods]
impl PyHost {
    /// A new page table: "host" (VA -> PA), "guest" (GVA -> GPA) or "nested" (GPA -> HPA, NPT/EPT).
    /// Table 0 is the host's own. Returns its id. Editing a table never touches a TLB.
    fn create_table(&self, kind: &str) -> PyResult<u32> {
        let mut h = self.host("create_table")?;
        let k = match kind {
            "host" => TableKind::Host,
            "guest" => TableKind::Guest,
            "nested" | "npt" | "ept" => TableKind::Nested,
            _ => return Err(PyValueError::new_err(format!("kind = {kind:?}: use 'host', 'guest' or 'nested'"))),
        };
        Ok(h.create_table(k))
    }
    /// Map [addr, addr + size) of `table` to `target`; size 4K, 2M or 1G; `cbit` selects the
    /// encrypted (C=1) view, `global_` the global bit, `writable` the R/W bit (a write through a
    /// read-only leaf faults). Overlapping leaves are refused.
    #[pyo3(signature = (table, addr, target, size=None, *, cbit=false, global_=false, writable=true))]
    #[allow(clippy::too_many_arguments)]
    fn map(&self, table: &Bound<'_, PyAny>, addr: &Bound<'_, PyAny>, target: &Bound<'_, PyAny>, size: Option<&Bound<'_, PyAny>>,
           cbit: bool, global_: bool, writable: bool) -> PyResult<()> {
        let mut h = self.host("map")?;
        let table = int_arg(table, "table", u32::MAX as u64)? as u32;
        let addr = int_arg(addr, "addr", u64::MAX)?;
        let target = int_arg(target, "target", u64::MAX)?;
        let size = match size { Some(s) if !s.is_none() => page_size_arg(s, "size")?, _ => PageSize::K4 };
        let flags = if cbit { F_CBIT } else { 0 } | if global_ { F_GLOBAL } else { 0 } | if writable { 0 } else { F_RDONLY };
        h.map(table, addr, target, size, flags).map_err(verr)
    }
    /// Map many pages at once: addr[i] -> target[i] (uint64 arrays), all of one size and flags.
    /// All or nothing: a bad one (ValueError naming its index) leaves the table as it was.
    #[pyo3(signature = (table, addr, target, size=None, *, cbit=false, global_=false, writable=true))]
    #[allow(clippy::too_many_arguments)]
    fn map_many(&self, table: &Bound<'_, PyAny>, addr: &Bound<'_, PyAny>, target: &Bound<'_, PyAny>,
                size: Option<&Bound<'_, PyAny>>, cbit: bool, global_: bool, writable: bool) -> PyResult<()> {
        let (addr, target) = (array_arg::<u64>(addr, "addr", "uint64")?, array_arg::<u64>(target, "target", "uint64")?);
        let mut h = self.host("map_many")?;
        let table = int_arg(table, "table", u32::MAX as u64)? as u32;
        let (mut o1, mut o2) = (Vec::new(), Vec::new());
        let (a, t) = (contiguous(&addr, &mut o1), contiguous(&target, &mut o2));
        let size = match size { Some(s) if !s.is_none() => page_size_arg(s, "size")?, _ => PageSize::K4 };
        let flags = if cbit { F_CBIT } else { 0 } | if global_ { F_GLOBAL } else { 0 } | if writable { 0 } else { F_RDONLY };
        h.map_many(table, a, t, size, flags).map_err(verr)
    }
    /// Remove the leaf of `table` that maps `addr`; returns whether there was one.
    fn unmap(&self, table: &Bound<'_, PyAny>, addr: &Bound<'_, PyAny>) -> PyResult<bool> {
        let mut h = self.host("unmap")?;
        let table = int_arg(table, "table", u32::MAX as u64)? as u32;
        let addr = int_arg(addr, "addr", u64::MAX)?;
        Ok(h.unmap(table, addr).map_err(verr)?.is_some())
    }
    /// Walk one table: (translated address, leaf size in bytes, cbit, global), or None.
    fn walk(&self, table: &Bound<'_, PyAny>, addr: &Bound<'_, PyAny>) -> PyResult<Option<(u64, u64, bool, bool)>> {
        let h = self.host("walk")?;
        let table = int_arg(table, "table", u32::MAX as u64)? as u32;
        let addr = int_arg(addr, "addr", u64::MAX)?;
        Ok(h.table_walk(table, addr).map_err(verr)?.map(|(l, out)| (out, l.size.bytes(), l.flags & F_CBIT != 0, l.flags & F_GLOBAL != 0)))
    }
    /// A translation context. mode "host": cr3 is a host table. mode "svm"/"vmx": cr3 is the
    /// guest's table, `nested` its NPT/EPT, `tag` the ASID/VPID; `key` is used for C-bit pages;
    /// `vm` says which VM the context belongs to (for the isolation oracle); `pcide` is its
    /// CR4.PCIDE (True, as Linux runs; with False the PCID must be 0). Returns its id.
    #[pyo3(signature = (mode, cr3, *, nested=None, tag=None, pcid=None, key=None, vm=None, pcide=true))]
    #[allow(clippy::too_many_arguments)]
    fn create_context(&self, mode: &str, cr3: &Bound<'_, PyAny>, nested: Option<&Bound<'_, PyAny>>, tag: Option<&Bound<'_, PyAny>>, pcid: Option<&Bound<'_, PyAny>>, key: Option<&Bound<'_, PyAny>>, vm: Option<&Bound<'_, PyAny>>, pcide: bool) -> PyResult<u32> {
        let mut h = self.host("create_context")?;
        let cr3 = int_arg(cr3, "cr3", u32::MAX as u64)? as u32;
        let tag = opt_int(tag, "tag", u64::MAX)?.unwrap_or(0) as u64;
        let pcid = opt_int(pcid, "pcid", u64::MAX)?.unwrap_or(0) as u64;
        let key = opt_int(key, "key", u64::MAX)?.unwrap_or(0) as u64;
        let vm = opt_int(vm, "vm", u32::MAX as u64)?.unwrap_or(0) as u32;
        let mode = match mode {
            "host" => Mode::Host,
            "svm" => Mode::Svm,
            "vmx" => Mode::Vmx,
            _ => return Err(PyValueError::new_err(format!("mode = {mode:?}: use 'host', 'svm' or 'vmx'"))),
        };
        let nested = opt_int(nested, "nested", u32::MAX as u64)?.map(|n| n as u32);
        if mode != Mode::Host && nested.is_none() {
            return Err(PyValueError::new_err("a guest context needs its nested table (NPT/EPT): nested=..."));
        }
        if tag > 0xFFFF {
            return Err(PyValueError::new_err(format!("tag = {tag} is out of range 0..=65535")));
        }
        if pcid > 4095 {
            return Err(PyValueError::new_err(format!("pcid = {pcid} is out of range 0..=4095")));
        }
        let key = h.check_key("key", key).map_err(verr)?;
        let (tag, pcid) = (tag as u16, pcid as u16);
        h
            .create_context(Context { mode, tag, pcid, pcide, cr3, nested: nested.unwrap_or(NO_TABLE), key, vm })
            .map_err(verr)
    }
    /// Change context `ctx`: its tag (ASID/VPID), nested table, VM or key (None: unchanged), as
    /// KVM gives a VMCB a new ASID or another nested table. Checked like create_context (the
    /// context unchanged on an error); it takes effect at the context's next entry.
    #[pyo3(signature = (ctx, *, tag=None, nested=None, vm=None, key=None))]
    fn set_context(&self, ctx: &Bound<'_, PyAny>, tag: Option<&Bound<'_, PyAny>>, nested: Option<&Bound<'_, PyAny>>,
                   vm: Option<&Bound<'_, PyAny>>, key: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        self.tlb_set_context(ctx, tag, nested, vm, key)
    }
    /// Context `ctx` as stored (a guest's CR3/PCID as of its last exit): {mode, tag, pcid, pcide,
    /// cr3, nested, key, vm, ...}.
    fn context<'py>(&self, py: Python<'py>, ctx: &Bound<'_, PyAny>) -> PyResult<Bound<'py, PyDict>> {
        self.tlb_context(py, ctx)
    }
    /// Per-context TLB counters, counted for the context the CPU was in: {name: int} for `ctx`,
    /// or {name: uint64 array indexed by context} without it. Names: tlb_l1_hits, tlb_l2_hits,
    /// tlb_misses (each a walk), gphys_hits, page_faults, write_faults.
    #[pyo3(signature = (ctx=None))]
    fn context_counters<'py>(&self, py: Python<'py>, ctx: Option<&Bound<'_, PyAny>>) -> PyResult<Bound<'py, PyDict>> {
        self.tlb_context_counters(py, ctx)
    }
    /// Declare the nested truth of L2 guest context `ctx`: its translations are judged against
    /// L2's table, then `nested12` (L1's NPT12/EPT12, a guest table: L2 GPA -> L1 GPA), then
    /// `nested01` (L0's NPT01/EPT01, a nested table), while the hardware walks the context's own
    /// nested table (KVM's shadow NPT02/EPT02). Both None: clear it.
    #[pyo3(signature = (ctx, nested12, nested01))]
    fn set_nested_truth(&self, ctx: &Bound<'_, PyAny>, nested12: Option<&Bound<'_, PyAny>>, nested01: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        self.tlb_set_nested_truth(ctx, nested12, nested01)
    }
    /// Enter guest `ctx` on `cpu` (SVM: VMRUN with `tlb_control`; VMX: VM entry, tlb_control 0),
    /// make the translated accesses `va` (writes where `write`), exit: one call per guest run.
    /// Returns (result, faults, rmp_refusals), result "entered" or "vmexit_invalid"; faults
    /// counts the accesses that faulted: not present, a write through a read-only translation, or
    /// a translation beyond memory.
    #[pyo3(signature = (cpu, ctx, va, tlb_control=None, write=None))]
    fn run_guest<'py>(&self, py: Python<'py>, cpu: &Bound<'py, PyAny>, ctx: &Bound<'py, PyAny>, va: &Bound<'py, PyAny>,
                      tlb_control: Option<&Bound<'py, PyAny>>, write: Option<&Bound<'py, PyAny>>) -> PyResult<(&'static str, u64, u64)> {
        self.tlb_run_guest(py, cpu, ctx, array_arg(va, "va", "uint64")?, tlb_control, write)
    }
    /// The context `cpu` translates with now.
    fn current_context(&self, cpu: &Bound<'_, PyAny>) -> PyResult<u32> {
        let h = self.host("current_context")?;
        Ok(h.current_context(self.cpu(cpu, "cpu")?))
    }
    /// The (table, pcid) in `cpu`'s CR3 now: per CPU, changed by `mov_cr3` on that CPU only.
    fn cpu_cr3(&self, cpu: &Bound<'_, PyAny>) -> PyResult<(u32, u16)> {
        let h = self.host("cpu_cr3")?;
        let c = self.cpu(cpu, "cpu")?;
        h.cpu_cr3(c).map_err(verr)
    }
    /// Make host context `ctx` current on `cpu` and its host context, the one `vmexit` returns
    /// to (no flush).
    fn set_host_context(&self, cpu: &Bound<'_, PyAny>, ctx: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut h = self.host("set_host_context")?;
        let ctx = int_arg(ctx, "ctx", u32::MAX as u64)? as u32;
        let c = self.cpu(cpu, "cpu")?;
        h.set_host_context(c, ctx).map_err(verr)
    }
    /// VMRUN of SVM context `ctx` with TLB_CONTROL 0 (nothing), 1 (FLUSH_ALL_ASID), 3 (FLUSH_ASID)
    /// or 7 (FLUSH_ASID_LOCAL): "entered", or "vmexit_invalid" (ASID 0, a bad TLB_CONTROL) as the
    /// hardware reports it.
    #[pyo3(signature = (cpu, ctx, tlb_control=None))]
    fn vmrun(&self, cpu: &Bound<'_, PyAny>, ctx: &Bound<'_, PyAny>, tlb_control: Option<&Bound<'_, PyAny>>) -> PyResult<&'static str> {
        let mut h = self.host("vmrun")?;
        let ctx = int_arg(ctx, "ctx", u32::MAX as u64)? as u32;
        let tlb_control = opt_int(tlb_control, "tlb_control", 0xFF)?.unwrap_or(0) as u8;
        let c = self.cpu(cpu, "cpu")?;
        Ok(match h.vmrun(c, ctx, tlb_control).map_err(verr)? {
            VmrunResult::Entered => "entered",
            VmrunResult::VmexitInvalid => "vmexit_invalid",
        })
    }
    /// VM entry of VMX context `ctx` (VPID 0 flushes the VPID-0 mappings).
    fn vmentry(&self, cpu: &Bound<'_, PyAny>, ctx: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut h = self.host("vmentry")?;
        let ctx = int_arg(ctx, "ctx", u32::MAX as u64)? as u32;
        let c = self.cpu(cpu, "cpu")?;
        h.vmentry(c, ctx).map_err(verr)
    }
    /// #VMEXIT / VM exit: the guest's CR3 is stored into its context; back to the CPU's own host
    /// context (`set_host_context`, 0 by default) with the host CR3 it had at entry.
    fn vmexit(&self, cpu: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut h = self.host("vmexit")?;
        let c = self.cpu(cpu, "cpu")?;
        h.vmexit(c).map_err(verr)
    }
    /// Translate one address in `cpu`'s current context (through and into its TLBs) for a read, or
    /// a write if `write`: (pa, key), or None for a fault (no mapping, or a write through a
    /// read-only translation: counted in `write_faults`).
    #[pyo3(signature = (cpu, va, write=false))]
    fn translate(&self, cpu: &Bound<'_, PyAny>, va: &Bound<'_, PyAny>, write: bool) -> PyResult<Option<(u64, u16)>> {
        let mut h = self.host("translate")?;
        let c = self.cpu(cpu, "cpu")?;
        let va = int_arg(va, "va", u64::MAX)?;
        if !sevsim_engine::paging::canonical(va) {
            return Err(PyValueError::new_err(format!("va = {va:#x} is not a canonical address")));
        }
        Ok(match h.translate_access(c, va, write) {
            Translated::Ok { pa, key } => Some((pa, key)),
            Translated::Fault | Translated::RmpFault => None,
        })
    }
    /// Translated accesses, as `access` but with virtual addresses in each CPU's current context.
    /// Levels: 0..5 as for `access`, 6 = refused by the RMP checks, 7 = a page fault (not performed).
    #[pyo3(signature = (cpu, va, write=None, *, return_levels=false))]
    fn access_virtual<'py>(&self, py: Python<'py>, cpu: &Bound<'py, PyAny>, va: &Bound<'py, PyAny>,
                           write: Option<&Bound<'py, PyAny>>, return_levels: bool) -> PyResult<Bound<'py, PyDict>> {
        let va = array_arg::<u64>(va, "va", "uint64")?;
        let mut h = self.host("access_virtual")?;
        let cpu_c = col_arg::<u32>(cpu, "cpu", "uint32", |o| Ok(self.cpu(o, "cpu")? as u32))?;
        let write_c = write_arg(py, write)?;
        let (mut o1, mut o2, mut o3) = (Vec::new(), Vec::new(), Vec::new());
        let va_s = contiguous(&va, &mut o2);
        let (cpu_s, write_s) = (cpu_c.col(&mut o1), write_c.col(&mut o3));
        let n = va_s.len();
        let mut levels = if return_levels { vec![0u8; n] } else { Vec::new() };
        let h = &mut *h;
        h.check_virtual_batch(&cpu_s, va_s, &write_s, return_levels.then_some(n)).map_err(verr)?;
        let mut by = [0u64; 8];
        let mut i = 0;
        let m = n.min(CHUNK);
        let (mut bc, mut bv, mut bw) = (Vec::with_capacity(m), Vec::with_capacity(m), Vec::with_capacity(m));
        while i < n {
            let j = (i + CHUNK).min(n);
            let lv = if return_levels { Some(&mut levels[i..j]) } else { None };
            let (c, w) = (stage(&cpu_s, i, j, &mut bc), stage(&write_s, i, j, &mut bw));
            let Col::Each(v) = stage(&Col::Each(va_s), i, j, &mut bv) else { unreachable!() };
            let got = py.allow_threads(|| h.access_virtual_batch(c, v, w, lv)).map_err(|e| partial(e, i, n))?;
            for (t, g) in by.iter_mut().zip(got) {
                *t += g;
            }
            i = j;
            if i < n {
                py.check_signals().map_err(|e| interrupted(py, e, i, n))?;
            }
        }
        let d = PyDict::new(py);
        for (i, name) in LEVEL_NAMES.iter().enumerate() {
            d.set_item(*name, by[i])?;
        }
        d.set_item("page_fault", by[7])?;
        if return_levels {
            d.set_item("levels", PyArray1::from_vec(py, levels))?;
        }
        Ok(d)
    }
    /// INVLPG in the current context. Returns the entries dropped.
    fn invlpg(&self, cpu: &Bound<'_, PyAny>, va: &Bound<'_, PyAny>) -> PyResult<u64> {
        let mut h = self.host("invlpg")?;
        let c = self.cpu(cpu, "cpu")?;
        h.invlpg(c, int_arg(va, "va", u64::MAX)?).map_err(verr)
    }
    /// MOV to CR3 in the current context (noflush = CR3 bit 63 with PCIDs). Returns the entries
    /// dropped; None for #GP (noflush in a context with CR4.PCIDE clear).
    #[pyo3(signature = (cpu, table, pcid=None, noflush=false))]
    fn mov_cr3(&self, cpu: &Bound<'_, PyAny>, table: &Bound<'_, PyAny>, pcid: Option<&Bound<'_, PyAny>>, noflush: bool) -> PyResult<Option<u64>> {
        let mut h = self.host("mov_cr3")?;
        let table = int_arg(table, "table", u32::MAX as u64)? as u32;
        let pcid = opt_int(pcid, "pcid", 0xFFFF)?.unwrap_or(0) as u16;
        let c = self.cpu(cpu, "cpu")?;
        h.mov_cr3(c, table, pcid, noflush).map_err(verr)
    }
    /// INVPCID type 0-3 in the current ASID/VPID; None for #GP (an undefined type, a
    /// non-canonical address).
    #[pyo3(signature = (cpu, kind, pcid=None, va=None))]
    fn invpcid<'py>(&self, py: Python<'py>, cpu: &Bound<'_, PyAny>, kind: &Bound<'_, PyAny>, pcid: Option<&Bound<'_, PyAny>>, va: Option<&Bound<'_, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
        let mut h = self.host("invpcid")?;
        let kind = int_arg(kind, "kind", 0xFF)? as u8;
        let pcid = opt_int(pcid, "pcid", 0xFFFF)?.unwrap_or(0) as u16;
        let va = opt_int(va, "va", u64::MAX)?.unwrap_or(0) as u64;
        let c = self.cpu(cpu, "cpu")?;
        opt_result(py, h.invpcid(c, kind, pcid, va).map_err(verr)?)
    }
    /// INVLPGA(va, asid) on this CPU only.
    fn invlpga(&self, cpu: &Bound<'_, PyAny>, va: &Bound<'_, PyAny>, asid: &Bound<'_, PyAny>) -> PyResult<u64> {
        let mut h = self.host("invlpga")?;
        let asid = int_arg(asid, "asid", 0xFFFF)? as u16;
        let c = self.cpu(cpu, "cpu")?;
        h.invlpga(c, int_arg(va, "va", u64::MAX)?, asid).map_err(verr)
    }
    /// INVLPGB: broadcast, asynchronous until this CPU's TLBSYNC. va None = all addresses.
    #[pyo3(signature = (cpu, va=None, *, count=None, stride_2m=false, pcid=None, asid=None, include_global=false,
                        final_only=false, include_nested=false))]
    #[allow(clippy::too_many_arguments)]
    fn invlpgb(&self, cpu: &Bound<'_, PyAny>, va: Option<&Bound<'_, PyAny>>, count: Option<&Bound<'_, PyAny>>, stride_2m: bool,
               pcid: Option<&Bound<'_, PyAny>>, asid: Option<&Bound<'_, PyAny>>, include_global: bool, final_only: bool,
               include_nested: bool) -> PyResult<()> {
        let mut h = self.host("invlpgb")?;
        let count = opt_int(count, "count", u32::MAX as u64)?.unwrap_or(1) as u32;
        let c = self.cpu(cpu, "cpu")?;
        let op = Invlpgb {
            va: opt_int(va, "va", u64::MAX)?,
            pcid: opt_int(pcid, "pcid", 4095)?.map(|v| v as u16),
            asid: opt_int(asid, "asid", 0xFFFF)?.map(|v| v as u16),
            include_global,
            final_only,
            include_nested,
            count,
            stride_2m,
        };
        h.invlpgb(c, op).map_err(verr)
    }
    /// TLBSYNC: the INVLPGBs this CPU issued complete everywhere. Returns entries dropped.
    fn tlbsync(&self, cpu: &Bound<'_, PyAny>) -> PyResult<u64> {
        let mut h = self.host("tlbsync")?;
        let c = self.cpu(cpu, "cpu")?;
        h.tlbsync(c).map_err(verr)
    }
    /// INVEPT type 1 (single context: EPT table `eptp`) or 2 (all); None for VMfail.
    #[pyo3(signature = (cpu, kind, eptp=None))]
    fn invept<'py>(&self, py: Python<'py>, cpu: &Bound<'_, PyAny>, kind: &Bound<'_, PyAny>, eptp: Option<&Bound<'_, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
        let mut h = self.host("invept")?;
        let kind = int_arg(kind, "kind", 0xFF)? as u8;
        let eptp = opt_int(eptp, "eptp", u32::MAX as u64)?.unwrap_or(0) as u32;
        let c = self.cpu(cpu, "cpu")?;
        opt_result(py, h.invept(c, kind, eptp).map_err(verr)?)
    }
    /// INVVPID type 0 (address), 1 (single), 2 (all but VPID 0), 3 (single, keeping globals);
    /// None for VMfail.
    #[pyo3(signature = (cpu, kind, vpid=None, va=None))]
    fn invvpid<'py>(&self, py: Python<'py>, cpu: &Bound<'_, PyAny>, kind: &Bound<'_, PyAny>, vpid: Option<&Bound<'_, PyAny>>, va: Option<&Bound<'_, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
        let mut h = self.host("invvpid")?;
        let kind = int_arg(kind, "kind", 0xFF)? as u8;
        let vpid = opt_int(vpid, "vpid", 0xFFFF)?.unwrap_or(0) as u16;
        let va = opt_int(va, "va", u64::MAX)?.unwrap_or(0) as u64;
        let c = self.cpu(cpu, "cpu")?;
        opt_result(py, h.invvpid(c, kind, vpid, va).map_err(verr)?)
    }
    /// A full TLB flush on each CPU of `cpus` by IPI from `initiator` (flush_tlb_all). Returns the
    /// initiator's cycles.
    fn flush_tlb_all_on_cpus(&self, initiator: &Bound<'_, PyAny>, cpus: &Bound<'_, PyAny>) -> PyResult<u64> {
        let mut h = self.host("flush_tlb_all_on_cpus")?;
        let i = self.cpu(initiator, "initiator")?;
        let cs = self.cpu_list(cpus, "cpus")?;
        h.flush_tlb_all_on_cpus(i, &cs).map_err(verr)
    }
    /// The TLB entries of `cpu`'s core: dicts with level, category, domain, tag, pcid, eptp,
    /// global, cbit, size, addr, target, thread (the SMT thread that filled it, 0 if untagged).
    fn tlb_entries<'py>(&self, py: Python<'py>, cpu: &Bound<'_, PyAny>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let h = self.host("tlb_entries")?;
        let c = self.cpu(cpu, "cpu")?;
        let es = h.tlb_entries(c).map_err(verr)?;
        es.iter()
            .map(|(lvl, e, addr)| {
                let d = PyDict::new(py);
                d.set_item("level", lvl)?;
                d.set_item("category", ["linear", "guest_physical", "combined"][e.cat as usize])?;
                d.set_item("domain", ["host", "svm", "vmx"][e.dom as usize])?;
                d.set_item("tag", e.tag)?;
                d.set_item("pcid", e.pcid)?;
                d.set_item("eptp", e.eptp)?;
                d.set_item("global", e.flags & F_GLOBAL != 0)?;
                d.set_item("cbit", e.flags & F_CBIT != 0)?;
                d.set_item("size", sevsim_engine::translate::size_of(e.size).bytes())?;
                d.set_item("addr", addr)?;
                d.set_item("target", e.target)?;
                d.set_item("thread", e.thr)?;
                d.set_item("writable", e.flags & F_RDONLY == 0)?;
                Ok(d)
            })
            .collect()
    }
    /// {kind: (operations, entries dropped)} for every invalidation kind, host-wide.
    fn invalidation_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let h = self.host("invalidation_stats")?;
        let d = PyDict::new(py);
        for (k, ops, dropped) in h.invalidation_stats() {
            d.set_item(k, (ops, dropped))?;
        }
        Ok(d)
    }
}
