//! Argument conversion and checking shared by the binding's methods: every refusal names the
//! argument, the value and what is allowed.

use numpy::{PyArray1, PyArrayMethods, PyReadonlyArray1};
use pyo3::exceptions::{PyMemoryError, PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString};
use sevsim_engine::config::{parse_size, DEFAULT_PROFILE};
use sevsim_engine::host::Col;
use sevsim_engine::paging::PageSize;
use sevsim_engine::rmp::MAX_ASID;
use sevsim_engine::EngineError;

pub(crate) fn verr(e: EngineError) -> PyErr {
    match e {
        EngineError::OutOfMemory { .. } => PyMemoryError::new_err(e.to_string()),
        _ => PyValueError::new_err(e.to_string()),
    }
}

/// A non-negative Python int (or numpy integer) no larger than `max`, else TypeError/ValueError
/// naming the argument.
pub(crate) fn int_arg(obj: &Bound<'_, PyAny>, name: &str, max: u64) -> PyResult<u64> {
    // the common case, a plain int in range, without the __index__ call (about 0.3 us a call);
    // anything else (bools, numpy integers, out of range) takes the general path and its messages
    if obj.is_exact_instance_of::<PyInt>() {
        if let Ok(v) = obj.extract::<u64>() {
            if v <= max {
                return Ok(v);
            }
        }
    }
    if obj.is_instance_of::<PyFloat>() || obj.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(format!(
            "{name} must be an int, got {}",
            obj.get_type().name()?
        )));
    }
    if !obj.hasattr("__index__")? {
        return Err(PyTypeError::new_err(format!("{name} must be an int, got {}", obj.get_type().name()?)));
    }
    // an __index__ that raises (a numpy array that is not one integer, a user's class): named,
    // with what it said
    let idx = match obj.call_method0("__index__") {
        Ok(i) => i,
        Err(e) => return Err(PyTypeError::new_err(format!("{name} must be an int, got {}: {e}", obj.get_type().name()?))),
    };
    let v: i128 = match idx.extract::<i128>() {
        Ok(v) => v,
        Err(_) => return Err(PyValueError::new_err(format!("{name} = {} is out of range 0..={max}", idx.str()?))),
    };
    if v < 0 || v > max as i128 {
        return Err(PyValueError::new_err(format!("{name} = {v} is out of range 0..={max}")));
    }
    Ok(v as u64)
}

pub(crate) fn size_arg(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<u64> {
    if let Ok(s) = obj.downcast::<PyString>() {
        let s = s.to_str()?;
        return parse_size(s).map_err(|e| PyValueError::new_err(format!("{name}: {e}")));
    }
    int_arg(obj, name, u64::MAX >> 1)
}

pub(crate) fn dtype_name(obj: &Bound<'_, PyAny>) -> String {
    obj.getattr("dtype")
        .and_then(|d| d.str())
        .map(|s| s.to_string())
        .unwrap_or_else(|_| obj.get_type().name().map(|n| n.to_string()).unwrap_or_default())
}

pub(crate) enum ColArg<'py, T: numpy::Element> {
    One(T),
    Each(PyReadonlyArray1<'py, T>),
}

/// A scalar, or a 1-D numpy array of exactly dtype `T` (read in place, no copy when contiguous).
pub(crate) fn col_arg<'py, T: numpy::Element + Copy>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    dtype: &str,
    scalar: impl Fn(&Bound<'py, PyAny>) -> PyResult<T>,
) -> PyResult<ColArg<'py, T>> {
    if let Ok(a) = obj.downcast::<PyArray1<T>>() {
        return Ok(ColArg::Each(a.try_readonly().map_err(|e| PyValueError::new_err(format!("{name}: {e}")))?));
    }
    // plain bools and ints are scalars: skip the attribute probes below (each a failed lookup)
    if obj.is_exact_instance_of::<PyBool>() || obj.is_exact_instance_of::<PyInt>() {
        return Ok(ColArg::One(scalar(obj)?));
    }
    if obj.hasattr("dtype")? && obj.hasattr("ndim")? {
        let ndim: usize = obj.getattr("ndim")?.extract()?;
        if ndim == 0 {
            return Ok(ColArg::One(scalar(obj)?));
        }
        return Err(PyTypeError::new_err(format!(
            "{name} must be a 1-D numpy array of dtype {dtype} (or a scalar), got a {ndim}-D array of dtype {}",
            dtype_name(obj)
        )));
    }
    if obj.is_instance_of::<PyList>() {
        return Err(PyTypeError::new_err(format!(
            "{name} must be a numpy array of dtype {dtype} or a scalar, got a list: use np.asarray({name}, dtype=np.{dtype})"
        )));
    }
    Ok(ColArg::One(scalar(obj)?))
}

/// A 1-D numpy array of exactly dtype `T`, or a TypeError naming the argument and the dtype.
pub(crate) fn array_arg<'py, T: numpy::Element>(obj: &Bound<'py, PyAny>, name: &str, dtype: &str) -> PyResult<PyReadonlyArray1<'py, T>> {
    if let Ok(a) = obj.downcast::<PyArray1<T>>() {
        return a.try_readonly().map_err(|e| PyValueError::new_err(format!("{name}: {e}")));
    }
    let got = if obj.hasattr("dtype")? && obj.hasattr("ndim")? {
        let ndim: usize = obj.getattr("ndim")?.extract()?;
        format!("a {ndim}-D array of dtype {}", dtype_name(obj))
    } else {
        obj.get_type().name()?.to_string()
    };
    Err(PyTypeError::new_err(format!(
        "{name} must be a 1-D numpy array of dtype {dtype}, got {got}: use np.asarray({name}, dtype=np.{dtype})"
    )))
}

/// A guest ASID for the RMP: 0..=MAX_ASID (a 10-bit field of the RMP entry).
pub(crate) fn rmp_asid(obj: &Bound<'_, PyAny>) -> PyResult<u16> {
    // the RMP's ASID field has 10 bits (int_arg names the argument, the value and the range)
    Ok(int_arg(obj, "asid", MAX_ASID as u64)? as u16)
}

impl<'py, T: numpy::Element + Copy> ColArg<'py, T> {
    /// The engine's view: the array in place (copied only if not contiguous), or the scalar.
    pub(crate) fn col<'a>(&'a self, owned: &'a mut Vec<T>) -> Col<'a, T> {
        match self {
            ColArg::Each(a) => Col::Each(contiguous(a, owned)),
            ColArg::One(v) => Col::One(*v),
        }
    }
}

/// The `write` column of a batch: a bool (default False) or a numpy bool array.
pub(crate) fn write_arg<'py>(py: Python<'py>, write: Option<&Bound<'py, PyAny>>) -> PyResult<ColArg<'py, bool>> {
    let false_ = PyBool::new(py, false).to_owned().into_any();
    col_arg::<bool>(write.unwrap_or(&false_), "write", "bool", |o| {
        if o.is_instance_of::<PyBool>() || o.hasattr("dtype").unwrap_or(false) {
            o.extract::<bool>().map_err(|_| PyTypeError::new_err("write must be a bool or a numpy bool array"))
        } else {
            Err(PyTypeError::new_err(format!("write must be a bool or a numpy bool array, got {}", o.get_type().name()?)))
        }
    })
}

/// An array argument as a slice: in place when contiguous (else copied). Read it only with the GIL
/// held: batches that release the GIL copy each chunk first (`stage`).
pub(crate) fn contiguous<'a, T: numpy::Element + Copy>(a: &'a PyReadonlyArray1<'_, T>, owned: &'a mut Vec<T>) -> &'a [T] {
    match a.as_slice() {
        Ok(s) => s,
        Err(_) => {
            *owned = a.as_array().to_vec();
            owned
        }
    }
}

/// Elements `i..j` of a column, copied into `buf` while the GIL is held: the engine then runs on the
/// copy with the GIL released, so another Python thread writing the caller's array meanwhile can
/// neither slip past the engine's checks nor be half seen. (A warm chunk-sized buffer: copying
/// costs well under 1 ns an element; a fresh whole-batch copy would pay page faults.)
pub(crate) fn stage<'b, T: Copy>(col: &Col<'_, T>, i: usize, j: usize, buf: &'b mut Vec<T>) -> Col<'b, T> {
    match *col {
        Col::One(v) => Col::One(v),
        Col::Each(s) => {
            buf.clear();
            buf.extend_from_slice(&s[i..j]);
            Col::Each(&buf[..])
        }
    }
}

/// An error the engine found in a chunk after the batch's up-front checks passed (the caller's
/// arrays changed during the call): say how far the batch got.
pub(crate) fn partial(e: EngineError, done: usize, n: usize) -> PyErr {
    let err = verr(e);
    Python::with_gil(|py| {
        let note = format!("sevsim: the batch's arrays changed during the call: the first {done} of {n} accesses were applied, the rest were not");
        let _ = err.value(py).call_method1("add_note", (note,));
    });
    err
}

/// Accesses per chunk of a long batch: between chunks the binding takes the GIL back and checks
/// for signals, so Ctrl-C stops a batch of any length within a few milliseconds.
pub(crate) const CHUNK: usize = 1 << 18;

/// A signal's exception (KeyboardInterrupt for Ctrl-C), with a note saying how far the batch got.
pub(crate) fn interrupted(py: Python<'_>, e: PyErr, done: usize, n: usize) -> PyErr {
    let note = format!(
        "sevsim: interrupted after {done} of {n} accesses: the first {done} were applied in order (the engine is consistent), the rest were not"
    );
    let _ = e.value(py).call_method1("add_note", (note,));
    e
}

pub(crate) fn py_to_toml(obj: &Bound<'_, PyAny>, path: &str) -> PyResult<toml::Value> {
    if obj.is_instance_of::<PyBool>() {
        return Ok(toml::Value::Boolean(obj.extract()?));
    }
    if obj.is_instance_of::<PyInt>() {
        // TOML integers are 64-bit signed
        return obj.extract::<i64>().map(toml::Value::Integer).map_err(|_| {
            PyValueError::new_err(format!(
                "overrides{path} = {} is out of range: integers must fit in -2^63..2^63-1",
                obj.str().map(|s| s.to_string()).unwrap_or_default()
            ))
        });
    }
    if obj.is_instance_of::<PyFloat>() {
        return Ok(toml::Value::Float(obj.extract()?));
    }
    if let Ok(s) = obj.downcast::<PyString>() {
        return Ok(toml::Value::String(s.to_str()?.to_string()));
    }
    if let Ok(d) = obj.downcast::<PyDict>() {
        let mut t = toml::Table::new();
        for (k, v) in d.iter() {
            let k: String = k
                .extract()
                .map_err(|_| PyTypeError::new_err(format!("overrides{path}: keys must be strings")))?;
            let sub = format!("{path}.{k}");
            t.insert(k, py_to_toml(&v, &sub)?);
        }
        return Ok(toml::Value::Table(t));
    }
    Err(PyTypeError::new_err(format!(
        "overrides{path}: unsupported value of type {}",
        obj.get_type().name()?
    )))
}

pub(crate) fn read_profile(profile: Option<&Bound<'_, PyAny>>) -> PyResult<String> {
    match profile {
        None => Ok(DEFAULT_PROFILE.to_string()),
        Some(p) if p.is_none() => Ok(DEFAULT_PROFILE.to_string()),
        Some(p) => {
            let path: std::path::PathBuf = p
                .extract()
                .map_err(|_| PyTypeError::new_err("profile must be a path to a TOML file"))?;
            std::fs::read_to_string(&path)
                .map_err(|e| PyOSError::new_err(format!("profile {}: {e}", path.display())))
        }
    }
}


pub(crate) fn page_size_arg(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<PageSize> {
    let bytes = size_arg(obj, name)?;
    PageSize::from_bytes(bytes)
        .ok_or_else(|| PyValueError::new_err(format!("{name} = {bytes} is not a page size: use 4K, 2M or 1G")))
}

pub(crate) fn opt_int(obj: Option<&Bound<'_, PyAny>>, name: &str, max: u64) -> PyResult<Option<u64>> {
    match obj {
        Some(o) if !o.is_none() => Ok(Some(int_arg(o, name, max)?)),
        _ => Ok(None),
    }
}

pub(crate) fn opt_result<'py>(py: Python<'py>, v: Option<u64>) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Some(n) => n.into_pyobject(py)?.into_any(),
        None => py.None().into_bound(py),
    })
}

