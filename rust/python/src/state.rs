//! Clocks, counters and the oracles' findings, and the calls that only spend time (IPIs, `spend`).

use numpy::{PyArray1, ToPyArray};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use sevsim_engine::host::Counters;
use sevsim_engine::violation::{Cause, CAUSES};

use crate::args::*;
use crate::{PyHost, PyViolation};

#[pymethods]
impl PyHost {
    /// Run a function of `work` cycles on every CPU in `cpus` by IPI from `initiator`, waiting for
    /// all of them (smp_call_function_many with wait). Returns the initiator's cycles.
    #[pyo3(signature = (initiator, cpus, work=None))]
    fn ipi_call(&self, initiator: &Bound<'_, PyAny>, cpus: &Bound<'_, PyAny>, work: Option<&Bound<'_, PyAny>>) -> PyResult<u64> {
        let mut h = self.host("ipi_call")?;
        let i = self.cpu(initiator, "initiator")?;
        let cs = self.cpu_list(cpus, "cpus")?;
        let w = match work {
            Some(w) => int_arg(w, "work", 1 << 48)?,
            None => 0,
        };
        h.ipi_call(i, &cs, w).map_err(verr)
    }
    /// Charge `cycles` to `cpu` for work not modelled instruction by instruction (firmware
    /// commands, page-table edits); counted in the other_cycles counter.
    fn spend(&self, cpu: &Bound<'_, PyAny>, cycles: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut h = self.host("spend")?;
        let c = self.cpu(cpu, "cpu")?;
        let n = int_arg(cycles, "cycles", 1 << 48)?;
        h.spend(c, n).map_err(verr)
    }
    /// The simulated clock of `cpu`, in cycles.
    fn cycles(&self, cpu: &Bound<'_, PyAny>) -> PyResult<u64> {
        let h = self.host("cycles")?;
        Ok(h.cycles(self.cpu(cpu, "cpu")?))
    }
    /// Every CPU's clock (uint64 array).
    #[getter]
    fn clocks<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray1<u64>>> {
        let h = self.host("clocks")?;
        Ok(h.clocks().to_pyarray(py))
    }
    /// Per-CPU counters: {name: uint64 array indexed by CPU} (a copy).
    #[getter]
    fn counters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let h = self.host("counters")?;
        let d = PyDict::new(py);
        for (name, arr) in h.ctr.all() {
            d.set_item(name, arr.to_pyarray(py))?;
        }
        Ok(d)
    }
    #[staticmethod]
    fn counter_names() -> Vec<&'static str> {
        Counters::NAMES.to_vec()
    }
    /// Recorded violations (at most max_violations are kept; violation_counts() counts them all).
    #[getter]
    fn violations(&self) -> PyResult<Vec<PyViolation>> {
        let h = self.host("violations")?;
        Ok(h.violations().iter().map(|&v| PyViolation { v }).collect())
    }
    /// {cause: count} over every violation seen, including any not kept.
    fn violation_counts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let h = self.host("violation_counts")?;
        let d = PyDict::new(py);
        for (c, n) in h.cause_counts() {
            d.set_item(c.name(), n)?;
        }
        Ok(d)
    }
    /// {kind: count}: corruption, dma, isolation.
    fn violation_kinds<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let h = self.host("violation_kinds")?;
        let d = PyDict::new(py);
        for k in ["corruption", "dma", "isolation", "stale_translation", "rmp_fault"] {
            d.set_item(k, 0u64)?;
        }
        for (c, n) in h.cause_counts() {
            let k = c.kind().name();
            let cur: u64 = d.get_item(k)?.map(|v| v.extract()).transpose()?.unwrap_or(0);
            d.set_item(k, cur + n)?;
        }
        Ok(d)
    }
    /// Kept violations as columns: {'cause': int codes (see violation_causes()), 'cpu', 'pa', ...}.
    fn violations_array<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let h = self.host("violations_array")?;
        let v = h.violations();
        let d = PyDict::new(py);
        d.set_item("cause", v.iter().map(|x| x.cause.index() as u8).collect::<Vec<_>>().to_pyarray(py))?;
        d.set_item("cpu", v.iter().map(|x| x.cpu).collect::<Vec<_>>().to_pyarray(py))?;
        d.set_item("pa", v.iter().map(|x| x.pa).collect::<Vec<_>>().to_pyarray(py))?;
        d.set_item("key", v.iter().map(|x| x.key).collect::<Vec<_>>().to_pyarray(py))?;
        d.set_item("other_key", v.iter().map(|x| x.other_key).collect::<Vec<_>>().to_pyarray(py))?;
        d.set_item("owner", v.iter().map(|x| x.owner).collect::<Vec<_>>().to_pyarray(py))?;
        d.set_item("cycle", v.iter().map(|x| x.cycle).collect::<Vec<_>>().to_pyarray(py))?;
        Ok(d)
    }
    #[staticmethod]
    fn violation_causes() -> Vec<(&'static str, &'static str)> {
        CAUSES.iter().map(|c: &Cause| (c.name(), c.kind().name())).collect()
    }
    fn clear_violations(&self) -> PyResult<()> {
        let mut h = self.host("clear_violations")?;
        h.clear_violations();
        Ok(())
    }
    #[getter]
    fn max_violations(&self) -> PyResult<usize> {
        let h = self.host("max_violations")?;
        Ok(h.max_violations)
    }
    #[setter]
    fn set_max_violations(&self, n: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut h = self.host("set_max_violations")?;
        h.max_violations = int_arg(n, "max_violations", 1 << 32)? as usize;
        Ok(())
    }
}
