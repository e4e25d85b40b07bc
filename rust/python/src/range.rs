//! The binding's range-operation methods (bodies; the `#[pymethods]` entries in lib.rs call
//! these): argument conversion and checking only, the semantics are the engine's (range.rs).

use numpy::PyReadonlyArray1;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use sevsim_engine::host::FlushOp;
use sevsim_engine::range::RangeMode;

use crate::{contiguous, verr, PyHost};

impl PyHost {
    pub(crate) fn set_range_mode_arg(&mut self, mode: &Bound<'_, PyAny>) -> PyResult<()> {
        let s: String = mode
            .extract()
            .map_err(|_| PyValueError::new_err(format!("range_mode must be one of {}", RangeMode::NAMES.join(", "))))?;
        let m = RangeMode::from_name(&s).map_err(|_| {
            PyValueError::new_err(format!("range_mode = {s:?} is not one of {}", RangeMode::NAMES.join(", ")))
        })?;
        self.h.set_range_mode(m);
        Ok(())
    }

    pub(crate) fn flush_ranges(
        &mut self,
        py: Python<'_>,
        cpu: &Bound<'_, PyAny>,
        pa: PyReadonlyArray1<'_, u64>,
        size: PyReadonlyArray1<'_, u64>,
        key: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<u64> {
        let c = self.cpu(cpu, "cpu")?;
        let key = match key {
            Some(k) if !k.is_none() => Self::key(k, "key")?,
            _ => 0,
        };
        // copies: the engine runs with the GIL released (see `stage` in lib.rs)
        let (pas, sizes) = (pa.as_array().to_vec(), size.as_array().to_vec());
        if let Some(i) = sizes.iter().position(|&s| s == 0) {
            return Err(PyValueError::new_err(format!("size[{i}] = 0: sizes must be positive")));
        }
        let h = &mut self.h;
        py.allow_threads(|| h.clflush_ranges(c, &pas, &sizes, key, FlushOp::Clflushopt, true)).map_err(verr)
    }

    pub(crate) fn owner_ranges(
        &mut self,
        pa: PyReadonlyArray1<'_, u64>,
        size: PyReadonlyArray1<'_, u64>,
        key: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let key = Self::key(key, "key")?;
        let (mut o1, mut o2) = (Vec::new(), Vec::new());
        let pas = contiguous(&pa, &mut o1);
        let sizes = contiguous(&size, &mut o2);
        self.h.set_owner_ranges(pas, sizes, key).map_err(verr)
    }
}
