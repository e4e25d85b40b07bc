//! The binding's translation-context methods (bodies; the `#[pymethods]` entries in lib.rs call
//! these): argument conversion and checking only, the semantics are the engine's (context.rs).

use numpy::{PyArray1, PyReadonlyArray1};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use sevsim_engine::context::CTX_COUNTERS;
use sevsim_engine::tlb::{Mode, NO_TABLE};
use sevsim_engine::translate::VmrunResult;

use crate::{contiguous, opt_int, verr, write_arg, PyHost};

impl PyHost {
    pub(crate) fn ctx_arg(&self, obj: &Bound<'_, PyAny>, name: &str) -> PyResult<u32> {
        let n = self.h.context_count();
        let v = crate::int_arg(obj, name, u32::MAX as u64)? as u32;
        if v as usize >= n {
            return Err(PyValueError::new_err(format!("{name} = {v}: no such context (there are {n}: 0..{})", n - 1)));
        }
        Ok(v)
    }

    pub(crate) fn tlb_set_context(
        &mut self,
        ctx: &Bound<'_, PyAny>,
        tag: Option<&Bound<'_, PyAny>>,
        nested: Option<&Bound<'_, PyAny>>,
        vm: Option<&Bound<'_, PyAny>>,
        key: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let id = self.ctx_arg(ctx, "ctx")?;
        let tag = opt_int(tag, "tag", 0xFFFF)?.map(|v| v as u16);
        let nested = opt_int(nested, "nested", u32::MAX as u64 - 1)?.map(|v| v as u32);
        let vm = opt_int(vm, "vm", u32::MAX as u64)?.map(|v| v as u32);
        let key = match opt_int(key, "key", u64::MAX >> 1)? {
            Some(k) => Some(self.h.check_key("key", k).map_err(verr)?),
            None => None,
        };
        self.h.set_context(id, tag, nested, vm, key).map_err(verr)
    }

    pub(crate) fn tlb_context<'py>(&self, py: Python<'py>, ctx: &Bound<'_, PyAny>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.h.context(self.ctx_arg(ctx, "ctx")?).map_err(verr)?;
        let d = PyDict::new(py);
        d.set_item("mode", match c.mode { Mode::Host => "host", Mode::Svm => "svm", Mode::Vmx => "vmx" })?;
        d.set_item("tag", c.tag)?;
        d.set_item("pcid", c.pcid)?;
        d.set_item("cr3", c.cr3)?;
        d.set_item("nested", if c.nested == NO_TABLE { None } else { Some(c.nested) })?;
        d.set_item("key", c.key)?;
        d.set_item("vm", c.vm)?;
        let chain = self.h.nested_truth(self.ctx_arg(ctx, "ctx")?).map_err(verr)?;
        d.set_item("nested12", chain.map(|c| c.0))?;
        d.set_item("nested01", chain.map(|c| c.1))?;
        Ok(d)
    }

    pub(crate) fn tlb_context_counters<'py>(&self, py: Python<'py>, ctx: Option<&Bound<'_, PyAny>>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        match ctx {
            Some(c) if !c.is_none() => {
                let id = self.ctx_arg(c, "ctx")?;
                let v = self.h.context_counters(id).map_err(verr)?;
                for (name, x) in CTX_COUNTERS.iter().zip(v) {
                    d.set_item(*name, x)?;
                }
            }
            _ => {
                let all = self.h.context_counters_all();
                let w = CTX_COUNTERS.len();
                for (j, name) in CTX_COUNTERS.iter().enumerate() {
                    let col: Vec<u64> = all.chunks(w).map(|r| r[j]).collect();
                    d.set_item(*name, PyArray1::from_vec(py, col))?;
                }
            }
        }
        Ok(d)
    }

    pub(crate) fn tlb_set_nested_truth(&mut self, ctx: &Bound<'_, PyAny>, nested12: Option<&Bound<'_, PyAny>>, nested01: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let id = self.ctx_arg(ctx, "ctx")?;
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
        self.h.set_nested_truth(id, chain).map_err(verr)
    }

    pub(crate) fn tlb_run_guest<'py>(
        &mut self,
        py: Python<'py>,
        cpu: &Bound<'py, PyAny>,
        ctx: &Bound<'py, PyAny>,
        va: PyReadonlyArray1<'py, u64>,
        tlb_control: Option<&Bound<'py, PyAny>>,
        write: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<(&'static str, u64, u64)> {
        let c = self.cpu(cpu, "cpu")?;
        let id = self.ctx_arg(ctx, "ctx")?;
        let tc = opt_int(tlb_control, "tlb_control", 0xFF)?.unwrap_or(0) as u8;
        let write_c = write_arg(py, write)?;
        let (mut o1, mut o2) = (Vec::new(), Vec::new());
        let va_s = contiguous(&va, &mut o1);
        let write_s = write_c.col(&mut o2);
        let (r, by) = self.h.run_guest(c, id, tc, va_s, write_s).map_err(verr)?;
        let r = match r {
            VmrunResult::Entered => "entered",
            VmrunResult::VmexitInvalid => "vmexit_invalid",
        };
        Ok((r, by[7], by[6]))
    }
}
