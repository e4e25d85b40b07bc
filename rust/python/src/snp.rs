//! The binding's SNP-at-host-scale methods (bodies; the `#[pymethods]` entries in lib.rs call
//! these): the compact direct map and its splits, the kernel's flush_tlb_all(), idle CPUs, the
//! batch page-in primitives. Argument conversion and checking only: the semantics are the
//! engine's (directmap.rs, kflush.rs, snp.rs).

use numpy::PyArray1;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use sevsim_engine::directmap::KernelFlush;

use crate::{array_arg, contiguous, int_arg, verr, PyHost};

pub(crate) fn flush_arg(s: &str) -> PyResult<KernelFlush> {
    KernelFlush::parse(s).ok_or_else(|| {
        PyValueError::new_err(format!("flush = {s:?} is not a flush method: use \"ipi\", \"invlpgb\" or \"none\""))
    })
}

impl PyHost {
    pub(crate) fn snp_set_memory_4k(&mut self, cpu: &Bound<'_, PyAny>, va: &Bound<'_, PyAny>, flush: &str) -> PyResult<u64> {
        let c = self.cpu(cpu, "cpu")?;
        let f = flush_arg(flush)?;
        Ok(self.h.set_memory_4k_with(c, int_arg(va, "va", u64::MAX)?, f).map_err(verr)?.0)
    }

    pub(crate) fn snp_set_memory_4k_batch<'py>(
        &mut self,
        py: Python<'py>,
        cpu: &Bound<'py, PyAny>,
        pa: &Bound<'py, PyAny>,
        flush: &str,
    ) -> PyResult<(u64, Bound<'py, PyArray1<u8>>)> {
        let c = self.cpu(cpu, "cpu")?;
        let f = flush_arg(flush)?;
        let pa = array_arg::<u64>(pa, "pa", "uint64")?;
        let mut owned = Vec::new();
        let p = contiguous(&pa, &mut owned);
        let mut splits = vec![0u8; p.len()];
        let cycles = self.h.set_memory_4k_batch(c, p, f, &mut splits).map_err(verr)?;
        Ok((cycles, PyArray1::from_vec(py, splits)))
    }

    pub(crate) fn snp_direct_map_leaf(&self, pa: &Bound<'_, PyAny>) -> PyResult<u64> {
        Ok(self.h.direct_map_leaf(int_arg(pa, "pa", u64::MAX)?).map_err(verr)?.bytes())
    }

    pub(crate) fn snp_direct_map_leaf_sizes<'py>(&self, py: Python<'py>, pa: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyArray1<u32>>> {
        let pa = array_arg::<u64>(pa, "pa", "uint64")?;
        let mut owned = Vec::new();
        let p = contiguous(&pa, &mut owned);
        self.h.check_addrs("pa", p).map_err(verr)?;
        let out: Vec<u32> = p.iter().map(|&a| self.h.direct_map_leaf(a).map(|s| s.bytes() as u32)).collect::<Result<_, _>>().map_err(verr)?;
        Ok(PyArray1::from_vec(py, out))
    }

    pub(crate) fn snp_direct_map_leaves<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let [k4, m2, g1] = self.h.direct_map_leaves();
        let d = PyDict::new(py);
        d.set_item("4K", k4)?;
        d.set_item("2M", m2)?;
        d.set_item("1G", g1)?;
        Ok(d)
    }

    pub(crate) fn snp_flush_tlb_all(&mut self, initiator: &Bound<'_, PyAny>, flush: &str) -> PyResult<u64> {
        let i = self.cpu(initiator, "initiator")?;
        let f = flush_arg(flush)?;
        self.h.kernel_flush_tlb_all(i, f).map_err(verr)
    }

    pub(crate) fn snp_set_cpu_idle(&mut self, cpus: &Bound<'_, PyAny>, idle: bool) -> PyResult<()> {
        let cs = self.cpu_list(cpus, "cpus")?;
        self.h.set_cpu_idle(&cs, idle).map_err(verr)
    }

    pub(crate) fn snp_cpu_idle<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<bool>> {
        PyArray1::from_slice(py, self.h.cpu_idle())
    }

    pub(crate) fn snp_clear_page_list(&mut self, cpu: &Bound<'_, PyAny>, pa: &Bound<'_, PyAny>, page: Option<&Bound<'_, PyAny>>) -> PyResult<u64> {
        let c = self.cpu(cpu, "cpu")?;
        let size = match page {
            Some(p) if !p.is_none() => crate::page_size_arg(p)?,
            _ => sevsim_engine::paging::PageSize::K4,
        };
        let pa = array_arg::<u64>(pa, "pa", "uint64")?;
        let mut owned = Vec::new();
        let p = contiguous(&pa, &mut owned);
        self.h.clear_page_list(c, p, size).map_err(verr)
    }

    pub(crate) fn snp_direct_map_walks(&mut self, cpu: &Bound<'_, PyAny>, pa: &Bound<'_, PyAny>) -> PyResult<(u64, u64)> {
        let c = self.cpu(cpu, "cpu")?;
        let pa = array_arg::<u64>(pa, "pa", "uint64")?;
        let mut owned = Vec::new();
        let p = contiguous(&pa, &mut owned);
        self.h.direct_map_walks(c, p).map_err(verr)
    }
}
