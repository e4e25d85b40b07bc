//! The binding's translation-context methods (bodies; the `#[pymethods]` entries in lib.rs call
//! these): argument conversion and checking only, the semantics are the engine's (context.rs).

use numpy::PyArray1;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use sevsim_engine::context::CTX_COUNTERS;
use sevsim_engine::tlb::{Mode, NO_TABLE};

use crate::{opt_int, verr, PyHost};

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
}
