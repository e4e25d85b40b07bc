//! The oracle's findings as Python objects.

use pyo3::prelude::*;
use pyo3::types::PyDict;
use sevsim_engine::violation::Violation;


/// One oracle finding.
#[pyclass(name = "Violation", module = "sevsim._core", frozen, eq)]
#[derive(Clone, PartialEq)]
pub struct PyViolation {
    pub(crate) v: Violation,
}

#[pymethods]
impl PyViolation {
    /// corruption, dma or isolation
    #[getter]
    fn kind(&self) -> &'static str {
        self.v.kind().name()
    }
    /// the specific hazard, e.g. writeback_foreign_owner
    #[getter]
    fn cause(&self) -> &'static str {
        self.v.cause.name()
    }
    /// CPU whose action exposed it, or -1 for a device
    #[getter]
    fn cpu(&self) -> i32 {
        self.v.cpu
    }
    #[getter]
    fn pa(&self) -> u64 {
        self.v.pa
    }
    #[getter]
    fn key(&self) -> u16 {
        self.v.key
    }
    #[getter]
    fn other_key(&self) -> u16 {
        self.v.other_key
    }
    #[getter]
    fn owner(&self) -> u16 {
        self.v.owner
    }
    #[getter]
    fn cycle(&self) -> u64 {
        self.v.cycle
    }
    /// translation findings: the virtual address, the context, the true target (None: unmapped)
    #[getter]
    fn va(&self) -> u64 {
        self.v.va
    }
    #[getter]
    fn ctx(&self) -> u32 {
        self.v.ctx
    }
    #[getter]
    fn true_pa(&self) -> Option<u64> {
        (self.v.true_pa != u64::MAX).then_some(self.v.true_pa)
    }
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("kind", self.kind())?;
        d.set_item("cause", self.cause())?;
        d.set_item("cpu", self.v.cpu)?;
        d.set_item("pa", self.v.pa)?;
        d.set_item("key", self.v.key)?;
        d.set_item("other_key", self.v.other_key)?;
        d.set_item("owner", self.v.owner)?;
        d.set_item("cycle", self.v.cycle)?;
        if self.v.cause.kind() == sevsim_engine::Kind::StaleTranslation || self.v.va != 0 {
            d.set_item("va", self.v.va)?;
            d.set_item("ctx", self.v.ctx)?;
            d.set_item("true_pa", self.true_pa())?;
        }
        Ok(d)
    }
    fn __repr__(&self) -> String {
        format!(
            "Violation(kind={:?}, cause={:?}, cpu={}, pa={:#x}, key={}, other_key={}, owner={}, cycle={})",
            self.kind(),
            self.cause(),
            self.v.cpu,
            self.v.pa,
            self.v.key,
            self.v.other_key,
            self.v.owner,
            self.v.cycle
        )
    }
}

