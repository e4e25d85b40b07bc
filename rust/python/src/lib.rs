//! PyO3 bindings: the `sevsim._core` extension module. A thin layer: argument conversion and
//! checking, numpy views, GIL release around batches. All semantics live in `sevsim-engine`.

use std::sync::{Mutex, MutexGuard, TryLockError};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyString;
use sevsim_engine::config::{parse_size, DEFAULT_PROFILE};
use sevsim_engine::host::Host;

mod args;
mod caches;
mod describe;
mod range;
mod snp;
mod state;
mod tlb;
mod violation;

use args::*;
pub(crate) use violation::PyViolation;

/// A simulated host: topology, caches, coherence, memory ownership, clocks, counters and oracles.
///
/// A Host may be used from any thread, but not from two at once: a call made while another
/// thread's call on the same Host is running (batches release the GIL) raises RuntimeError
/// instead of waiting. Give each thread its own Host, or serialise calls with a lock.
// `frozen`: PyO3's borrow flag would say only "Already mutably borrowed"; the engine sits behind
// our own Mutex instead, taken with try_lock so that the refusal can say what is going on.
#[pyclass(name = "Host", module = "sevsim._core", frozen)]
pub struct PyHost {
    h: Mutex<Host>,
    /// the Python name of the call holding `h` (for the refusal's message)
    busy: Mutex<&'static str>,
    /// the topology's CPU count, fixed at construction (argument checks read it without the lock)
    cpus: usize,
}

/// The engine, locked for one call (see `PyHost::host`).
pub(crate) type HostGuard<'a> = MutexGuard<'a, Host>;

impl PyHost {
    fn new(h: Host) -> Self {
        let cpus = h.topo.cpus;
        PyHost { h: Mutex::new(h), busy: Mutex::new(""), cpus }
    }

    /// The engine for the call `what`, or RuntimeError when another thread's call holds it.
    pub(crate) fn host(&self, what: &'static str) -> PyResult<HostGuard<'_>> {
        match self.h.try_lock() {
            Ok(g) => {
                *self.busy.lock().unwrap_or_else(|e| e.into_inner()) = what;
                Ok(g)
            }
            Err(TryLockError::WouldBlock) => {
                let other = *self.busy.lock().unwrap_or_else(|e| e.into_inner());
                Err(PyRuntimeError::new_err(format!(
                    "Host.{what}: this Host is busy in another thread's call (Host.{other}): a Host cannot be \
                     shared across threads while a call runs; give each thread its own Host or hold a \
                     threading.Lock around calls"
                )))
            }
            Err(TryLockError::Poisoned(_)) => Err(PyRuntimeError::new_err(format!(
                "Host.{what}: an earlier call on this Host panicked inside the engine (a sevsim bug, \
                 please report it); the Host's state is unknown and it can no longer be used"
            ))),
        }
    }

    pub(crate) fn cpu(&self, obj: &Bound<'_, PyAny>, name: &str) -> PyResult<usize> {
        let max = self.cpus as u64 - 1;
        match int_arg(obj, name, max) {
            Ok(v) => Ok(v as usize),
            // any out-of-range int (negative, past the host's CPUs, past 2^63) names the CPU range
            Err(e) if e.is_instance_of::<PyValueError>(obj.py()) => {
                let v = obj.call_method0("__index__").and_then(|i| i.str()).map(|s| s.to_string()).unwrap_or_default();
                Err(PyValueError::new_err(format!("{name} = {v} is out of range: this host has CPUs 0..{max}")))
            }
            Err(e) => Err(e),
        }
    }
    pub(crate) fn key(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<u16> {
        Ok(int_arg(obj, name, sevsim_engine::memory::MAX_KEY as u64)? as u16)
    }
    pub(crate) fn cpu_list(&self, obj: &Bound<'_, PyAny>, name: &str) -> PyResult<Vec<usize>> {
        if obj.is_instance_of::<PyString>() {
            return Err(PyTypeError::new_err(format!("{name} must be a sequence of CPU numbers")));
        }
        let mut out = Vec::new();
        for item in obj
            .try_iter()
            .map_err(|_| PyTypeError::new_err(format!("{name} must be a sequence of CPU numbers")))?
        {
            out.push(self.cpu(&item?, name)?);
        }
        Ok(out)
    }
}

/// Parse a size such as "1.5TiB" into bytes.
#[pyfunction]
fn parse_bytes(text: &str) -> PyResult<u64> {
    parse_size(text).map_err(PyValueError::new_err)
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyHost>()?;
    m.add_class::<PyViolation>()?;
    m.add_function(wrap_pyfunction!(parse_bytes, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("DEFAULT_PROFILE", DEFAULT_PROFILE)?;
    Ok(())
}
