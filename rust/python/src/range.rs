//! Range operations at the cost of what is cached: clflush_cache_range() and its batch form,
//! VM_PAGE_FLUSH over a page list, set_owner over runs, and the reference (line-by-line) switch.
//! Argument conversion and checking only: the semantics are the engine's (range.rs).

use numpy::PyReadonlyArray1;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use sevsim_engine::host::FlushOp;
use sevsim_engine::range::RangeMode;

use crate::PyHost;
use crate::args::*;

impl PyHost {
    pub(crate) fn set_range_mode_arg(&self, mode: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut h = self.host("set_range_mode_arg")?;
        let s: String = mode
            .extract()
            .map_err(|_| PyValueError::new_err(format!("range_mode must be one of {}", RangeMode::NAMES.join(", "))))?;
        let m = RangeMode::from_name(&s).map_err(|_| {
            PyValueError::new_err(format!("range_mode = {s:?} is not one of {}", RangeMode::NAMES.join(", ")))
        })?;
        h.set_range_mode(m);
        Ok(())
    }

    pub(crate) fn flush_ranges(
        &self,
        py: Python<'_>,
        cpu: &Bound<'_, PyAny>,
        pa: PyReadonlyArray1<'_, u64>,
        size: PyReadonlyArray1<'_, u64>,
        key: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<u64> {
        let mut h = self.host("flush_ranges")?;
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
        let h = &mut *h;
        py.allow_threads(|| h.clflush_ranges(c, &pas, &sizes, key, FlushOp::Clflushopt, true)).map_err(verr)
    }

    pub(crate) fn owner_ranges(
        &self,
        pa: PyReadonlyArray1<'_, u64>,
        size: PyReadonlyArray1<'_, u64>,
        key: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let mut h = self.host("owner_ranges")?;
        let key = Self::key(key, "key")?;
        let (mut o1, mut o2) = (Vec::new(), Vec::new());
        let pas = contiguous(&pa, &mut o1);
        let sizes = contiguous(&size, &mut o2);
        h.set_owner_ranges(pas, sizes, key).map_err(verr)
    }
}

#[pymethods]
impl PyHost {
    /// clflush_cache_range(): fence, CLFLUSHOPT of every line of [pa, pa + size), fence.
    #[pyo3(signature = (cpu, pa, size, key=None))]
    fn clflushopt_range(
        &self,
        cpu: &Bound<'_, PyAny>,
        pa: &Bound<'_, PyAny>,
        size: &Bound<'_, PyAny>,
        key: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<u64> {
        self.flush(cpu, pa, Some(size), key, FlushOp::Clflushopt, true)
    }
    /// clflush_cache_range() of each range [pa[i], pa[i] + size[i]) in order (uint64 arrays), in
    /// one call. Returns the cycles charged, all ranges together.
    #[pyo3(signature = (cpu, pa, size, key=None))]
    fn clflushopt_ranges(&self, py: Python<'_>, cpu: &Bound<'_, PyAny>, pa: &Bound<'_, PyAny>,
                         size: &Bound<'_, PyAny>, key: Option<&Bound<'_, PyAny>>) -> PyResult<u64> {
        self.flush_ranges(py, cpu, array_arg(pa, "pa", "uint64")?, array_arg(size, "size", "uint64")?, key)
    }
    /// Range operations visit only the cached lines of a range (True, the default) or every
    /// line (False: the reference form). Results are identical.
    #[getter]
    fn range_fast(&self) -> PyResult<bool> {
        let h = self.host("range_fast")?;
        Ok(h.range_fast())
    }
    #[setter]
    fn set_range_fast(&self, range_fast: bool) -> PyResult<()> {
        // the parameter's name is what a wrong type's TypeError names
        let mut h = self.host("set_range_fast")?;
        h.set_range_fast(range_fast);
        Ok(())
    }
    /// How range operations find their lines: "auto", "lines", "directory" or "caches".
    #[getter]
    fn range_mode(&self) -> PyResult<&'static str> {
        let h = self.host("range_mode")?;
        Ok(h.range_mode().name())
    }
    #[setter]
    fn set_range_mode(&self, mode: &Bound<'_, PyAny>) -> PyResult<()> {
        self.set_range_mode_arg(mode)
    }
    /// set_owner of each range [pa[i], pa[i] + size[i]) (uint64 arrays) to `key`, in one call.
    fn set_owner_ranges(&self, pa: &Bound<'_, PyAny>, size: &Bound<'_, PyAny>,
                        key: &Bound<'_, PyAny>) -> PyResult<()> {
        self.owner_ranges(array_arg(pa, "pa", "uint64")?, array_arg(size, "size", "uint64")?, key)
    }
    /// One VM_PAGE_FLUSH per page address in `pa` (a uint64 array), with guest ASID `asid`, in one
    /// call. Returns False (one fault counted, nothing flushed) where the CPU lacks the feature.
    fn vm_page_flush_pages(&self, py: Python<'_>, cpu: &Bound<'_, PyAny>, pa: &Bound<'_, PyAny>,
                           asid: &Bound<'_, PyAny>) -> PyResult<bool> {
        let pa = array_arg::<u64>(pa, "pa", "uint64")?;
        let mut h = self.host("vm_page_flush_pages")?;
        let c = self.cpu(cpu, "cpu")?;
        let asid = Self::key(asid, "asid")?;
        // a copy: the engine runs with the GIL released (see `stage`)
        let pas = pa.as_array().to_vec();
        let h = &mut *h;
        py.allow_threads(|| h.vm_page_flush_many(c, &pas, asid)).map_err(verr)
    }
}
