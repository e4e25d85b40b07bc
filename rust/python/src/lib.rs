//! PyO3 bindings: the `sevsim._core` extension module. A thin layer: argument conversion and
//! checking, numpy views, GIL release around batches. All semantics live in `sevsim-engine`.

use numpy::{PyArray1, PyArrayMethods, PyReadonlyArray1, ToPyArray};
use pyo3::exceptions::{PyMemoryError, PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString};

use sevsim_engine::config::{self, parse_size, HostConfig, DEFAULT_PROFILE};
use sevsim_engine::host::{Col, Counters, FlushOp, Host, LEVEL_NAMES};
use sevsim_engine::violation::{Cause, Violation, CAUSES};
use sevsim_engine::paging::{PageSize, TableKind, F_CBIT, F_GLOBAL, F_RDONLY};
use sevsim_engine::rmp::{RmpState, MAX_ASID};
use sevsim_engine::snp::PAGE_OFFSET;
use sevsim_engine::tlb::{Context, Invlpgb, Mode, NO_TABLE};
use sevsim_engine::translate::{Translated, VmrunResult};
use sevsim_engine::EngineError;

mod range;
mod snp;
mod tlb;

fn verr(e: EngineError) -> PyErr {
    match e {
        EngineError::OutOfMemory { .. } => PyMemoryError::new_err(e.to_string()),
        _ => PyValueError::new_err(e.to_string()),
    }
}

/// A non-negative Python int (or numpy integer) no larger than `max`, else TypeError/ValueError
/// naming the argument.
fn int_arg(obj: &Bound<'_, PyAny>, name: &str, max: u64) -> PyResult<u64> {
    if obj.is_instance_of::<PyFloat>() || obj.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(format!(
            "{name} must be an int, got {}",
            obj.get_type().name()?
        )));
    }
    let v: i128 = match obj.call_method0("__index__").and_then(|i| i.extract::<i128>()) {
        Ok(v) => v,
        Err(_) => {
            return Err(PyTypeError::new_err(format!(
                "{name} must be an int, got {}",
                obj.get_type().name()?
            )))
        }
    };
    if v < 0 || v > max as i128 {
        return Err(PyValueError::new_err(format!("{name} = {v} is out of range 0..={max}")));
    }
    Ok(v as u64)
}

fn size_arg(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<u64> {
    if let Ok(s) = obj.downcast::<PyString>() {
        let s = s.to_str()?;
        return parse_size(s).map_err(|e| PyValueError::new_err(format!("{name}: {e}")));
    }
    int_arg(obj, name, u64::MAX >> 1)
}

fn dtype_name(obj: &Bound<'_, PyAny>) -> String {
    obj.getattr("dtype")
        .and_then(|d| d.str())
        .map(|s| s.to_string())
        .unwrap_or_else(|_| obj.get_type().name().map(|n| n.to_string()).unwrap_or_default())
}

enum ColArg<'py, T: numpy::Element> {
    One(T),
    Each(PyReadonlyArray1<'py, T>),
}

/// A scalar, or a 1-D numpy array of exactly dtype `T` (read in place, no copy when contiguous).
fn col_arg<'py, T: numpy::Element + Copy>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    dtype: &str,
    scalar: impl Fn(&Bound<'py, PyAny>) -> PyResult<T>,
) -> PyResult<ColArg<'py, T>> {
    if let Ok(a) = obj.downcast::<PyArray1<T>>() {
        return Ok(ColArg::Each(a.try_readonly().map_err(|e| PyValueError::new_err(format!("{name}: {e}")))?));
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
fn array_arg<'py, T: numpy::Element>(obj: &Bound<'py, PyAny>, name: &str, dtype: &str) -> PyResult<PyReadonlyArray1<'py, T>> {
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
fn rmp_asid(obj: &Bound<'_, PyAny>) -> PyResult<u16> {
    // the RMP's ASID field has 10 bits (int_arg names the argument, the value and the range)
    Ok(int_arg(obj, "asid", MAX_ASID as u64)? as u16)
}

impl<'py, T: numpy::Element + Copy> ColArg<'py, T> {
    /// The engine's view: the array in place (copied only if not contiguous), or the scalar.
    fn col<'a>(&'a self, owned: &'a mut Vec<T>) -> Col<'a, T> {
        match self {
            ColArg::Each(a) => Col::Each(contiguous(a, owned)),
            ColArg::One(v) => Col::One(*v),
        }
    }
}

/// The `write` column of a batch: a bool (default False) or a numpy bool array.
fn write_arg<'py>(py: Python<'py>, write: Option<&Bound<'py, PyAny>>) -> PyResult<ColArg<'py, bool>> {
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
fn stage<'b, T: Copy>(col: &Col<'_, T>, i: usize, j: usize, buf: &'b mut Vec<T>) -> Col<'b, T> {
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
fn partial(e: EngineError, done: usize, n: usize) -> PyErr {
    let err = verr(e);
    Python::with_gil(|py| {
        let note = format!("sevsim: the batch's arrays changed during the call: the first {done} of {n} accesses were applied, the rest were not");
        let _ = err.value(py).call_method1("add_note", (note,));
    });
    err
}

/// Accesses per chunk of a long batch: between chunks the binding takes the GIL back and checks
/// for signals, so Ctrl-C stops a batch of any length within a few milliseconds.
const CHUNK: usize = 1 << 18;

/// A signal's exception (KeyboardInterrupt for Ctrl-C), with a note saying how far the batch got.
fn interrupted(py: Python<'_>, e: PyErr, done: usize, n: usize) -> PyErr {
    let note = format!(
        "sevsim: interrupted after {done} of {n} accesses: the first {done} were applied in order (the engine is consistent), the rest were not"
    );
    let _ = e.value(py).call_method1("add_note", (note,));
    e
}

fn py_to_toml(obj: &Bound<'_, PyAny>, path: &str) -> PyResult<toml::Value> {
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

fn read_profile(profile: Option<&Bound<'_, PyAny>>) -> PyResult<String> {
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


fn page_size_arg(obj: &Bound<'_, PyAny>) -> PyResult<PageSize> {
    let bytes = size_arg(obj, "size")?;
    PageSize::from_bytes(bytes)
        .ok_or_else(|| PyValueError::new_err(format!("size = {bytes} is not a page size: use 4K, 2M or 1G")))
}

fn opt_int(obj: Option<&Bound<'_, PyAny>>, name: &str, max: u64) -> PyResult<Option<u64>> {
    match obj {
        Some(o) if !o.is_none() => Ok(Some(int_arg(o, name, max)?)),
        _ => Ok(None),
    }
}

fn opt_result<'py>(py: Python<'py>, v: Option<u64>) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Some(n) => n.into_pyobject(py)?.into_any(),
        None => py.None().into_bound(py),
    })
}

/// One oracle finding.
#[pyclass(name = "Violation", module = "sevsim._core", frozen, eq)]
#[derive(Clone, PartialEq)]
pub struct PyViolation {
    v: Violation,
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

/// A simulated host: topology, caches, coherence, memory ownership, clocks, counters and oracles.
#[pyclass(name = "Host", module = "sevsim._core")]
pub struct PyHost {
    h: Host,
}

impl PyHost {
    pub(crate) fn cpu(&self, obj: &Bound<'_, PyAny>, name: &str) -> PyResult<usize> {
        let max = self.h.topo.cpus as u64 - 1;
        let v = int_arg(obj, name, u64::MAX >> 1)?;
        if v > max {
            return Err(PyValueError::new_err(format!(
                "{name} = {v} is out of range: this host has CPUs 0..{max}"
            )));
        }
        Ok(v as usize)
    }
    pub(crate) fn key(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<u16> {
        Ok(int_arg(obj, name, sevsim_engine::memory::MAX_KEY as u64)? as u16)
    }
    fn cpu_list(&self, obj: &Bound<'_, PyAny>, name: &str) -> PyResult<Vec<usize>> {
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

#[pymethods]
impl PyHost {
    /// Build a host from a named preset. `memory`: bytes as an int or a string such as "1.5TiB"
    /// (default: the preset's). `sme_coherent`: override the preset's feature. `overrides`: a dict
    /// shaped like a preset in the profile, merged into it (e.g. {"l3": {"size": "16MiB"}}).
    /// `profile`: path to a TOML profile to read presets from instead of the shipped one.
    #[staticmethod]
    #[pyo3(signature = (name, memory=None, *, sme_coherent=None, overrides=None, profile=None))]
    fn from_preset(
        name: &str,
        memory: Option<&Bound<'_, PyAny>>,
        sme_coherent: Option<bool>,
        overrides: Option<&Bound<'_, PyAny>>,
        profile: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let text = read_profile(profile)?;
        let mut table = match overrides {
            Some(o) if !o.is_none() => match py_to_toml(o, "")? {
                toml::Value::Table(t) => t,
                _ => return Err(PyTypeError::new_err("overrides must be a dict")),
            },
            _ => toml::Table::new(),
        };
        if let Some(c) = sme_coherent {
            let f = table
                .entry("features")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(f) = f {
                f.insert("sme_coherent".into(), toml::Value::Boolean(c));
            }
        }
        let cfg = HostConfig::from_profile(&text, name, Some(&table)).map_err(verr)?;
        let mem = match memory {
            Some(m) if !m.is_none() => Some(size_arg(m, "memory")?),
            _ => None,
        };
        Ok(PyHost { h: Host::new(cfg, mem).map_err(verr)? })
    }

    /// Names and descriptions of the presets in the shipped (or a given) profile.
    #[staticmethod]
    #[pyo3(signature = (profile=None))]
    fn presets(profile: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<(String, String)>> {
        config::list_presets(&read_profile(profile)?).map_err(verr)
    }

    #[getter]
    fn preset(&self) -> &str {
        &self.h.cfg.name
    }
    #[getter]
    fn description(&self) -> &str {
        &self.h.cfg.description
    }
    #[getter]
    fn cpu_count(&self) -> usize {
        self.h.topo.cpus
    }
    #[getter]
    fn core_count(&self) -> usize {
        self.h.topo.cores
    }
    #[getter]
    fn ccd_count(&self) -> usize {
        self.h.topo.ccds
    }
    #[getter]
    fn socket_count(&self) -> usize {
        self.h.topo.sockets
    }
    /// Bytes of physical memory.
    #[getter]
    fn memory(&self) -> u64 {
        self.h.memory_bytes()
    }
    #[getter]
    fn freq_ghz(&self) -> f64 {
        self.h.cfg.freq_ghz
    }
    /// {'sme_coherent': bool, 'wbnoinvd': bool, 'vm_page_flush': bool, 'tlb_smt_tagged': bool}
    /// (tlb_smt_tagged: TLB entries carry the logical thread, the preset's `tlb.smt_tagged`)
    #[getter]
    fn features<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let f = &self.h.cfg.features;
        let d = PyDict::new(py);
        d.set_item("sme_coherent", f.sme_coherent)?;
        d.set_item("wbnoinvd", f.wbnoinvd)?;
        d.set_item("vm_page_flush", f.vm_page_flush)?;
        d.set_item("snp", f.snp)?;
        d.set_item("tlb_smt_tagged", self.h.cfg.tlb.smt_tagged)?;
        Ok(d)
    }
    /// KVM's software costs from the profile's `kvm` table (cycles, or GB/s where the name says
    /// so), for the Python kvm layer; the engine itself never reads them.
    #[getter]
    fn kvm_cost<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (k, v) in &self.h.cfg.kvm {
            d.set_item(k, *v)?;
        }
        Ok(d)
    }
    /// The cache geometry and latencies: {'l1d': {'size', 'ways', 'sets', 'latency'}, ...}
    #[getter]
    fn caches<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (name, g) in [("l1d", &self.h.cfg.l1d), ("l2", &self.h.cfg.l2), ("l3", &self.h.cfg.l3)] {
            let e = PyDict::new(py);
            e.set_item("size", g.size.0)?;
            e.set_item("ways", g.ways)?;
            e.set_item("sets", g.sets())?;
            e.set_item("latency", g.latency)?;
            d.set_item(name, e)?;
        }
        d.set_item(
            "wbinvd_scope",
            match self.h.cfg.wbinvd_scope {
                config::WbinvdScope::Core => "core",
                config::WbinvdScope::Ccd => "ccd",
            },
        )?;
        Ok(d)
    }
    /// {'cpu_core', 'cpu_ccd', 'cpu_socket', 'core_ccd'}: numpy arrays describing the topology.
    fn topology<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let t = &self.h.topo;
        let d = PyDict::new(py);
        let cpu_ccd: Vec<u32> = (0..t.cpus).map(|c| t.ccd_of_cpu(c) as u32).collect();
        let cpu_socket: Vec<u32> = cpu_ccd.iter().map(|&d| t.ccd_socket[d as usize]).collect();
        d.set_item("cpu_core", t.cpu_core.to_pyarray(py))?;
        d.set_item("cpu_ccd", cpu_ccd.to_pyarray(py))?;
        d.set_item("cpu_socket", cpu_socket.to_pyarray(py))?;
        d.set_item("core_ccd", t.core_ccd.to_pyarray(py))?;
        Ok(d)
    }

    /// Run a batch of memory accesses, in order, in one call (the GIL is released while it runs).
    /// `cpu` (uint32), `addr` (uint64, physical), `write` (bool), `key` (uint16): 1-D numpy arrays
    /// of one length, or scalars applied to every access. Returns counts of where the accesses were
    /// served ({'l1', 'l2', 'l3', 'peer', 'remote', 'memory', 'rmp_fault'}) and, with
    /// `return_levels`, a uint8 array 'levels' with one code per access (0=l1 .. 5=memory,
    /// 6=refused by the SEV-SNP RMP checks). Nothing runs if any argument is bad.
    #[pyo3(signature = (cpu, addr, write=None, key=None, *, return_levels=false))]
    fn access<'py>(
        &mut self,
        py: Python<'py>,
        cpu: &Bound<'py, PyAny>,
        addr: &Bound<'py, PyAny>,
        write: Option<&Bound<'py, PyAny>>,
        key: Option<&Bound<'py, PyAny>>,
        return_levels: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let cpu_c = col_arg::<u32>(cpu, "cpu", "uint32", |o| Ok(self.cpu(o, "cpu")? as u32))?;
        let addr_c = col_arg::<u64>(addr, "addr", "uint64", |o| int_arg(o, "addr", u64::MAX))?;
        let zero = 0i64.into_pyobject(py)?.into_any();
        let write_c = write_arg(py, write)?;
        let key_c = col_arg::<u16>(key.unwrap_or(&zero), "key", "uint16", |o| Self::key(o, "key"))?;
        let (mut o1, mut o2, mut o3, mut o4) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let single_addr;
        let addr_s: &[u64] = match &addr_c {
            ColArg::Each(a) => contiguous(a, &mut o2),
            ColArg::One(a) => {
                single_addr = [*a];
                &single_addr
            }
        };
        let (cpu_s, write_s, key_s) = (cpu_c.col(&mut o1), write_c.col(&mut o3), key_c.col(&mut o4));
        let n = addr_s.len();
        let mut levels = if return_levels { vec![0u8; n] } else { Vec::new() };
        let h = &mut self.h;
        // the whole batch is checked before any chunk runs (nothing runs if an argument is bad);
        // each chunk is checked again on its copy, which only fails if the arrays changed meanwhile
        h.check_access_batch(&cpu_s, addr_s, &write_s, &key_s, return_levels.then_some(n)).map_err(verr)?;
        let mut by_level = [0u64; 7];
        let mut i = 0;
        let m = n.min(CHUNK);
        let (mut bc, mut ba, mut bw, mut bk) = (Vec::with_capacity(m), Vec::with_capacity(m), Vec::with_capacity(m), Vec::with_capacity(m));
        while i < n {
            let j = (i + CHUNK).min(n);
            let lv = if return_levels { Some(&mut levels[i..j]) } else { None };
            let (c, w, k) = (stage(&cpu_s, i, j, &mut bc), stage(&write_s, i, j, &mut bw), stage(&key_s, i, j, &mut bk));
            let Col::Each(a) = stage(&Col::Each(addr_s), i, j, &mut ba) else { unreachable!() };
            let got = py.allow_threads(|| h.access_batch(c, a, w, k, lv)).map_err(|e| partial(e, i, n))?;
            for (t, g) in by_level.iter_mut().zip(got) {
                *t += g;
            }
            i = j;
            if i < n {
                py.check_signals().map_err(|e| interrupted(py, e, i, n))?;
            }
        }
        let d = PyDict::new(py);
        for (i, name) in LEVEL_NAMES.iter().enumerate() {
            d.set_item(*name, by_level[i])?;
        }
        if return_levels {
            d.set_item("levels", PyArray1::from_vec(py, levels))?;
        }
        Ok(d)
    }

    /// WBINVD on `cpu`: write back and invalidate its core's caches (and, per the preset's
    /// wbinvd_scope, its CCD's L3). Returns the cycles it took.
    fn wbinvd(&mut self, cpu: &Bound<'_, PyAny>) -> PyResult<u64> {
        let c = self.cpu(cpu, "cpu")?;
        self.h.wbinvd(c).map_err(verr)
    }
    /// WBNOINVD on `cpu`: write back dirty lines, keep every line valid.
    fn wbnoinvd(&mut self, cpu: &Bound<'_, PyAny>) -> PyResult<u64> {
        let c = self.cpu(cpu, "cpu")?;
        self.h.wbnoinvd(c).map_err(verr)
    }
    /// WBINVD on every CPU in `cpus`, sent by IPI from `initiator`, which waits for all of them
    /// (wbinvd_on_cpus_mask). Returns the initiator's cycles.
    fn wbinvd_on_cpus(&mut self, initiator: &Bound<'_, PyAny>, cpus: &Bound<'_, PyAny>) -> PyResult<u64> {
        let i = self.cpu(initiator, "initiator")?;
        let cs = self.cpu_list(cpus, "cpus")?;
        self.h.wbinvd_on_cpus(i, &cs, true).map_err(verr)
    }
    /// WBNOINVD on every CPU in `cpus` (wbnoinvd_on_cpus_mask). Returns the initiator's cycles.
    fn wbnoinvd_on_cpus(&mut self, initiator: &Bound<'_, PyAny>, cpus: &Bound<'_, PyAny>) -> PyResult<u64> {
        let i = self.cpu(initiator, "initiator")?;
        let cs = self.cpu_list(cpus, "cpus")?;
        self.h.wbinvd_on_cpus(i, &cs, false).map_err(verr)
    }
    /// Run a function of `work` cycles on every CPU in `cpus` by IPI from `initiator`, waiting for
    /// all of them (smp_call_function_many with wait). Returns the initiator's cycles.
    #[pyo3(signature = (initiator, cpus, work=None))]
    fn ipi_call(&mut self, initiator: &Bound<'_, PyAny>, cpus: &Bound<'_, PyAny>, work: Option<&Bound<'_, PyAny>>) -> PyResult<u64> {
        let i = self.cpu(initiator, "initiator")?;
        let cs = self.cpu_list(cpus, "cpus")?;
        let w = match work {
            Some(w) => int_arg(w, "work", 1 << 48)?,
            None => 0,
        };
        self.h.ipi_call(i, &cs, w).map_err(verr)
    }
    /// Charge `cycles` to `cpu` for work not modelled instruction by instruction (firmware
    /// commands, page-table edits); counted in the other_cycles counter.
    fn spend(&mut self, cpu: &Bound<'_, PyAny>, cycles: &Bound<'_, PyAny>) -> PyResult<()> {
        let c = self.cpu(cpu, "cpu")?;
        let n = int_arg(cycles, "cycles", 1 << 48)?;
        self.h.spend(c, n).map_err(verr)
    }
    /// The cost profile's numbers for this host (cycles unless named otherwise).
    #[getter]
    fn cost<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = &self.h.cfg.cost;
        let d = PyDict::new(py);
        for (k, v) in [
            ("wbinvd_base", c.wbinvd_base),
            ("clflush_line", c.clflush_line),
            ("clflushopt_line", c.clflushopt_line),
            ("flush_dirty_line", c.flush_dirty_line),
            ("fence", c.fence),
            ("vm_page_flush_base", c.vm_page_flush_base),
            ("ipi_send_base", c.ipi_send_base),
            ("ipi_send_per_target", c.ipi_send_per_target),
            ("ipi_latency", c.ipi_latency),
            ("ipi_handler", c.ipi_handler),
            ("ipi_ack", c.ipi_ack),
            ("df_flush", c.df_flush),
            ("psp_command", c.psp_command),
        ] {
            d.set_item(k, v)?;
        }
        d.set_item("wbinvd_walk_per_line", c.wbinvd_walk_per_line)?;
        d.set_item("wbinvd_writeback_per_line", c.wbinvd_writeback_per_line)?;
        d.set_item("socket_writeback_gbps", c.socket_writeback_gbps)?;
        let l = &self.h.cfg.latency;
        for (k, v) in [("peer_core", l.peer_core), ("remote_ccd", l.remote_ccd), ("remote_socket", l.remote_socket), ("memory", l.memory)] {
            d.set_item(format!("latency_{k}"), v)?;
        }
        Ok(d)
    }
    /// CLFLUSH of the line holding `pa` through a mapping with `key`. Returns cycles.
    #[pyo3(signature = (cpu, pa, key=None))]
    fn clflush(&mut self, cpu: &Bound<'_, PyAny>, pa: &Bound<'_, PyAny>, key: Option<&Bound<'_, PyAny>>) -> PyResult<u64> {
        self.flush(cpu, pa, None, key, FlushOp::Clflush, false)
    }
    /// CLFLUSHOPT of the line holding `pa` through a mapping with `key`. Returns cycles.
    #[pyo3(signature = (cpu, pa, key=None))]
    fn clflushopt(&mut self, cpu: &Bound<'_, PyAny>, pa: &Bound<'_, PyAny>, key: Option<&Bound<'_, PyAny>>) -> PyResult<u64> {
        self.flush(cpu, pa, None, key, FlushOp::Clflushopt, false)
    }
    /// clflush_cache_range(): fence, CLFLUSHOPT of every line of [pa, pa + size), fence.
    #[pyo3(signature = (cpu, pa, size, key=None))]
    fn clflushopt_range(
        &mut self,
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
    fn clflushopt_ranges(&mut self, py: Python<'_>, cpu: &Bound<'_, PyAny>, pa: PyReadonlyArray1<'_, u64>,
                         size: PyReadonlyArray1<'_, u64>, key: Option<&Bound<'_, PyAny>>) -> PyResult<u64> {
        self.flush_ranges(py, cpu, pa, size, key)
    }
    /// Range operations visit only the cached lines of a range (True, the default) or every
    /// line (False: the reference form). Results are identical.
    #[getter]
    fn range_fast(&self) -> bool {
        self.h.range_fast()
    }
    #[setter]
    fn set_range_fast(&mut self, on: bool) {
        self.h.set_range_fast(on)
    }
    /// How range operations find their lines: "auto", "lines", "directory" or "caches".
    #[getter]
    fn range_mode(&self) -> &'static str {
        self.h.range_mode().name()
    }
    #[setter]
    fn set_range_mode(&mut self, mode: &Bound<'_, PyAny>) -> PyResult<()> {
        self.set_range_mode_arg(mode)
    }
    /// set_owner of each range [pa[i], pa[i] + size[i]) (uint64 arrays) to `key`, in one call.
    fn set_owner_ranges(&mut self, pa: PyReadonlyArray1<'_, u64>, size: PyReadonlyArray1<'_, u64>,
                        key: &Bound<'_, PyAny>) -> PyResult<()> {
        self.owner_ranges(pa, size, key)
    }
    /// WRMSR MSR_AMD64_VM_PAGE_FLUSH: write back and invalidate the 4 KiB page at `pa` cached under
    /// guest ASID `asid`. Returns False (and counts a fault) where the CPU lacks the feature (#GP).
    fn vm_page_flush(&mut self, cpu: &Bound<'_, PyAny>, pa: &Bound<'_, PyAny>, asid: &Bound<'_, PyAny>) -> PyResult<bool> {
        let c = self.cpu(cpu, "cpu")?;
        let pa = int_arg(pa, "pa", u64::MAX)?;
        let asid = Self::key(asid, "asid")?;
        self.h.vm_page_flush(c, pa, asid).map_err(verr)
    }
    /// One VM_PAGE_FLUSH per page address in `pa` (a uint64 array), with guest ASID `asid`, in one
    /// call. Returns False (one fault counted, nothing flushed) where the CPU lacks the feature.
    fn vm_page_flush_pages(&mut self, py: Python<'_>, cpu: &Bound<'_, PyAny>, pa: PyReadonlyArray1<'_, u64>,
                           asid: &Bound<'_, PyAny>) -> PyResult<bool> {
        let c = self.cpu(cpu, "cpu")?;
        let asid = Self::key(asid, "asid")?;
        // a copy: the engine runs with the GIL released (see `stage`)
        let pas = pa.as_array().to_vec();
        let h = &mut self.h;
        py.allow_threads(|| h.vm_page_flush_many(c, &pas, asid)).map_err(verr)
    }
    /// A device reads [pa, pa + size) with `key` (0 = plaintext).
    #[pyo3(signature = (pa, size, key=None))]
    fn dma_read(&mut self, pa: &Bound<'_, PyAny>, size: &Bound<'_, PyAny>, key: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        self.dma(pa, size, key, false)
    }
    /// A device writes [pa, pa + size) with `key` (0 = plaintext).
    #[pyo3(signature = (pa, size, key=None))]
    fn dma_write(&mut self, pa: &Bound<'_, PyAny>, size: &Bound<'_, PyAny>, key: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        self.dma(pa, size, key, true)
    }
    /// Hand the 4 KiB pages of [pa, pa + size) to `key`; their memory now holds the new owner's data.
    fn set_owner(&mut self, pa: &Bound<'_, PyAny>, size: &Bound<'_, PyAny>, key: &Bound<'_, PyAny>) -> PyResult<()> {
        let pa = int_arg(pa, "pa", u64::MAX)?;
        let size = size_arg(size, "size")?;
        let key = Self::key(key, "key")?;
        self.h.set_owner(pa, size, key).map_err(verr)
    }
    /// The owner key of the page holding `pa`.
    fn owner(&self, pa: &Bound<'_, PyAny>) -> PyResult<u16> {
        let pa = int_arg(pa, "pa", u64::MAX)?;
        self.h.owner(pa).map_err(verr)
    }
    /// (key, version) of the last write to the line holding `pa` in memory: the owner's key and 0
    /// if the line holds its owner's data, else the foreign key and the write's sequence number.
    fn memory_line(&self, pa: &Bound<'_, PyAny>) -> PyResult<(u16, u64)> {
        let pa = int_arg(pa, "pa", u64::MAX)?;
        self.h.check_addr("pa", pa).map_err(verr)?;
        Ok(self.h.mem.line_state(pa / 64))
    }
    /// Firmware ACTIVATE of a new key into key slot `key`: lines still cached under it become stale.
    /// Returns how many cached copies became stale.
    fn activate(&mut self, key: &Bound<'_, PyAny>) -> PyResult<u64> {
        let k = Self::key(key, "key")?;
        self.h.activate(k).map_err(verr)
    }

    /// The simulated clock of `cpu`, in cycles.
    fn cycles(&self, cpu: &Bound<'_, PyAny>) -> PyResult<u64> {
        Ok(self.h.cycles(self.cpu(cpu, "cpu")?))
    }
    /// Every CPU's clock (uint64 array).
    #[getter]
    fn clocks<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u64>> {
        self.h.clocks().to_pyarray(py)
    }
    /// Per-CPU counters: {name: uint64 array indexed by CPU} (a copy).
    #[getter]
    fn counters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (name, arr) in self.h.ctr.all() {
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
    fn violations(&self) -> Vec<PyViolation> {
        self.h.violations().iter().map(|&v| PyViolation { v }).collect()
    }
    /// {cause: count} over every violation seen, including any not kept.
    fn violation_counts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (c, n) in self.h.cause_counts() {
            d.set_item(c.name(), n)?;
        }
        Ok(d)
    }
    /// {kind: count}: corruption, dma, isolation.
    fn violation_kinds<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for k in ["corruption", "dma", "isolation", "stale_translation", "rmp_fault"] {
            d.set_item(k, 0u64)?;
        }
        for (c, n) in self.h.cause_counts() {
            let k = c.kind().name();
            let cur: u64 = d.get_item(k)?.map(|v| v.extract()).transpose()?.unwrap_or(0);
            d.set_item(k, cur + n)?;
        }
        Ok(d)
    }
    /// Kept violations as columns: {'cause': int codes (see violation_causes()), 'cpu', 'pa', ...}.
    fn violations_array<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let v = self.h.violations();
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
    fn clear_violations(&mut self) {
        self.h.clear_violations();
    }
    #[getter]
    fn max_violations(&self) -> usize {
        self.h.max_violations
    }
    #[setter]
    fn set_max_violations(&mut self, n: &Bound<'_, PyAny>) -> PyResult<()> {
        self.h.max_violations = int_arg(n, "max_violations", 1 << 32)? as usize;
        Ok(())
    }

    /// Every cached copy of the line holding `pa`: a list of dicts with level (1-3), inst (core or
    /// CCD), key, dirty, exclusive, stale.
    fn copies<'py>(&self, py: Python<'py>, pa: &Bound<'_, PyAny>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let pa = int_arg(pa, "pa", u64::MAX)?;
        let cs = self.h.copies(pa).map_err(verr)?;
        cs.iter()
            .map(|c| {
                let d = PyDict::new(py);
                d.set_item("level", c.level)?;
                d.set_item("inst", c.inst)?;
                d.set_item("key", c.key)?;
                d.set_item("dirty", c.dirty)?;
                d.set_item("exclusive", c.exclusive)?;
                d.set_item("stale", c.stale)?;
                Ok(d)
            })
            .collect()
    }
    /// The lines of one cache set, most recently used first: [(line address, key, dirty)].
    fn set_contents(&self, level: &Bound<'_, PyAny>, inst: &Bound<'_, PyAny>, set: &Bound<'_, PyAny>) -> PyResult<Vec<(u64, u16, bool)>> {
        let level = int_arg(level, "level", 0xFF)? as u8;
        let inst = int_arg(inst, "inst", u32::MAX as u64)? as usize;
        let set = int_arg(set, "set", u32::MAX as u64)? as usize;
        self.h.set_contents(level, inst, set).map_err(verr)
    }
    /// (valid, dirty) line counts per instance of cache `level` (1, 2: per core; 3: per CCD).
    fn occupancy<'py>(&self, py: Python<'py>, level: &Bound<'_, PyAny>) -> PyResult<(Bound<'py, PyArray1<u64>>, Bound<'py, PyArray1<u64>>)> {
        let level = int_arg(level, "level", 0xFF)? as u8;
        let (v, d) = self.h.occupancy(level).map_err(verr)?;
        Ok((PyArray1::from_vec(py, v), PyArray1::from_vec(py, d)))
    }
    /// Number of cached copies (L2 and L3) under `key` (any key if None); with `dirty`, only dirty ones.
    #[pyo3(signature = (key=None, dirty=false))]
    fn cached_lines(&self, key: Option<&Bound<'_, PyAny>>, dirty: bool) -> PyResult<u64> {
        let k = match key {
            Some(k) if !k.is_none() => Some(Self::key(k, "key")?),
            _ => None,
        };
        Ok(self.h.cached_lines(k, dirty))
    }
    /// Latent hazards, without changing anything: dirty cached copies that will corrupt memory
    /// when written back. {'dirty_foreign_owner': n, 'dirty_stale_key': n}.
    fn audit<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let (f, st) = self.h.audit();
        let d = PyDict::new(py);
        d.set_item("dirty_foreign_owner", f)?;
        d.set_item("dirty_stale_key", st)?;
        Ok(d)
    }
    /// Bytes held by the engine's tables (caches, directory, memory ownership, violations).
    #[getter]
    fn heap_bytes(&self) -> usize {
        self.h.heap_bytes()
    }
    #[getter]
    fn directory_entries(&self) -> usize {
        self.h.directory_entries()
    }

    // -----------------------------------------------------------------------------------
    // page tables, contexts, translation (the TLB engine)

    /// A new page table: "host" (VA -> PA), "guest" (GVA -> GPA) or "nested" (GPA -> HPA, NPT/EPT).
    /// Table 0 is the host's own. Returns its id. Editing a table never touches a TLB.
    fn create_table(&mut self, kind: &str) -> PyResult<u32> {
        let k = match kind {
            "host" => TableKind::Host,
            "guest" => TableKind::Guest,
            "nested" | "npt" | "ept" => TableKind::Nested,
            _ => return Err(PyValueError::new_err(format!("kind = {kind:?}: use 'host', 'guest' or 'nested'"))),
        };
        Ok(self.h.create_table(k))
    }
    /// Map [addr, addr + size) of `table` to `target`; size 4K, 2M or 1G; `cbit` selects the
    /// encrypted (C=1) view, `global_` the global bit, `writable` the R/W bit (a write through a
    /// read-only leaf faults). Overlapping leaves are refused.
    #[pyo3(signature = (table, addr, target, size=None, *, cbit=false, global_=false, writable=true))]
    #[allow(clippy::too_many_arguments)]
    fn map(&mut self, table: &Bound<'_, PyAny>, addr: &Bound<'_, PyAny>, target: &Bound<'_, PyAny>, size: Option<&Bound<'_, PyAny>>,
           cbit: bool, global_: bool, writable: bool) -> PyResult<()> {
        let table = int_arg(table, "table", u32::MAX as u64)? as u32;
        let addr = int_arg(addr, "addr", u64::MAX)?;
        let target = int_arg(target, "target", u64::MAX)?;
        let size = match size { Some(s) if !s.is_none() => page_size_arg(s)?, _ => PageSize::K4 };
        let flags = if cbit { F_CBIT } else { 0 } | if global_ { F_GLOBAL } else { 0 } | if writable { 0 } else { F_RDONLY };
        self.h.map(table, addr, target, size, flags).map_err(verr)
    }
    /// Map many pages at once: addr[i] -> target[i] (uint64 arrays), all of one size and flags.
    /// All or nothing: a bad one (ValueError naming its index) leaves the table as it was.
    #[pyo3(signature = (table, addr, target, size=None, *, cbit=false, global_=false, writable=true))]
    #[allow(clippy::too_many_arguments)]
    fn map_many(&mut self, table: &Bound<'_, PyAny>, addr: PyReadonlyArray1<'_, u64>, target: PyReadonlyArray1<'_, u64>,
                size: Option<&Bound<'_, PyAny>>, cbit: bool, global_: bool, writable: bool) -> PyResult<()> {
        let table = int_arg(table, "table", u32::MAX as u64)? as u32;
        let (mut o1, mut o2) = (Vec::new(), Vec::new());
        let (a, t) = (contiguous(&addr, &mut o1), contiguous(&target, &mut o2));
        let size = match size { Some(s) if !s.is_none() => page_size_arg(s)?, _ => PageSize::K4 };
        let flags = if cbit { F_CBIT } else { 0 } | if global_ { F_GLOBAL } else { 0 } | if writable { 0 } else { F_RDONLY };
        self.h.map_many(table, a, t, size, flags).map_err(verr)
    }
    /// Remove the leaf of `table` that maps `addr`; returns whether there was one.
    fn unmap(&mut self, table: &Bound<'_, PyAny>, addr: &Bound<'_, PyAny>) -> PyResult<bool> {
        let table = int_arg(table, "table", u32::MAX as u64)? as u32;
        let addr = int_arg(addr, "addr", u64::MAX)?;
        Ok(self.h.unmap(table, addr).map_err(verr)?.is_some())
    }
    /// Walk one table: (translated address, leaf size in bytes, cbit, global), or None.
    fn walk(&self, table: &Bound<'_, PyAny>, addr: &Bound<'_, PyAny>) -> PyResult<Option<(u64, u64, bool, bool)>> {
        let table = int_arg(table, "table", u32::MAX as u64)? as u32;
        let addr = int_arg(addr, "addr", u64::MAX)?;
        Ok(self.h.table_walk(table, addr).map_err(verr)?.map(|(l, out)| (out, l.size.bytes(), l.flags & F_CBIT != 0, l.flags & F_GLOBAL != 0)))
    }
    /// A translation context. mode "host": cr3 is a host table. mode "svm"/"vmx": cr3 is the
    /// guest's table, `nested` its NPT/EPT, `tag` the ASID/VPID; `key` is used for C-bit pages;
    /// `vm` says which VM the context belongs to (for the isolation oracle). Returns its id.
    #[pyo3(signature = (mode, cr3, *, nested=None, tag=None, pcid=None, key=None, vm=None))]
    fn create_context(&mut self, mode: &str, cr3: &Bound<'_, PyAny>, nested: Option<&Bound<'_, PyAny>>, tag: Option<&Bound<'_, PyAny>>, pcid: Option<&Bound<'_, PyAny>>, key: Option<&Bound<'_, PyAny>>, vm: Option<&Bound<'_, PyAny>>) -> PyResult<u32> {
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
        let key = self.h.check_key("key", key).map_err(verr)?;
        let (tag, pcid) = (tag as u16, pcid as u16);
        self.h
            .create_context(Context { mode, tag, pcid, cr3, nested: nested.unwrap_or(NO_TABLE), key, vm })
            .map_err(verr)
    }
    /// Change context `ctx`: its tag (ASID/VPID), nested table, VM or key (None: unchanged), as
    /// KVM gives a VMCB a new ASID or another nested table. Checked like create_context (the
    /// context unchanged on an error); it takes effect at the context's next entry.
    #[pyo3(signature = (ctx, *, tag=None, nested=None, vm=None, key=None))]
    fn set_context(&mut self, ctx: &Bound<'_, PyAny>, tag: Option<&Bound<'_, PyAny>>, nested: Option<&Bound<'_, PyAny>>,
                   vm: Option<&Bound<'_, PyAny>>, key: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        self.tlb_set_context(ctx, tag, nested, vm, key)
    }
    /// Context `ctx` as stored (a guest's CR3/PCID as of its last exit): {mode, tag, pcid, cr3,
    /// nested, key, vm}.
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
    fn set_nested_truth(&mut self, ctx: &Bound<'_, PyAny>, nested12: Option<&Bound<'_, PyAny>>, nested01: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        self.tlb_set_nested_truth(ctx, nested12, nested01)
    }
    /// Enter guest `ctx` on `cpu` (SVM: VMRUN with `tlb_control`; VMX: VM entry, tlb_control 0),
    /// make the translated accesses `va` (writes where `write`), exit: one call per guest run.
    /// Returns (result, page_faults, rmp_refusals), result "entered" or "vmexit_invalid".
    #[pyo3(signature = (cpu, ctx, va, tlb_control=None, write=None))]
    fn run_guest<'py>(&mut self, py: Python<'py>, cpu: &Bound<'py, PyAny>, ctx: &Bound<'py, PyAny>, va: PyReadonlyArray1<'py, u64>,
                      tlb_control: Option<&Bound<'py, PyAny>>, write: Option<&Bound<'py, PyAny>>) -> PyResult<(&'static str, u64, u64)> {
        self.tlb_run_guest(py, cpu, ctx, va, tlb_control, write)
    }
    /// The context `cpu` translates with now.
    fn current_context(&self, cpu: &Bound<'_, PyAny>) -> PyResult<u32> {
        Ok(self.h.current_context(self.cpu(cpu, "cpu")?))
    }
    /// The (table, pcid) in `cpu`'s CR3 now: per CPU, changed by `mov_cr3` on that CPU only.
    fn cpu_cr3(&self, cpu: &Bound<'_, PyAny>) -> PyResult<(u32, u16)> {
        let c = self.cpu(cpu, "cpu")?;
        self.h.cpu_cr3(c).map_err(verr)
    }
    /// Make host context `ctx` current on `cpu` and its host context, the one `vmexit` returns
    /// to (no flush).
    fn set_host_context(&mut self, cpu: &Bound<'_, PyAny>, ctx: &Bound<'_, PyAny>) -> PyResult<()> {
        let ctx = int_arg(ctx, "ctx", u32::MAX as u64)? as u32;
        let c = self.cpu(cpu, "cpu")?;
        self.h.set_host_context(c, ctx).map_err(verr)
    }
    /// VMRUN of SVM context `ctx` with TLB_CONTROL 0 (nothing), 1 (FLUSH_ALL_ASID), 3 (FLUSH_ASID)
    /// or 7 (FLUSH_ASID_LOCAL): "entered", or "vmexit_invalid" (ASID 0, a bad TLB_CONTROL) as the
    /// hardware reports it.
    #[pyo3(signature = (cpu, ctx, tlb_control=None))]
    fn vmrun(&mut self, cpu: &Bound<'_, PyAny>, ctx: &Bound<'_, PyAny>, tlb_control: Option<&Bound<'_, PyAny>>) -> PyResult<&'static str> {
        let ctx = int_arg(ctx, "ctx", u32::MAX as u64)? as u32;
        let tlb_control = opt_int(tlb_control, "tlb_control", 0xFF)?.unwrap_or(0) as u8;
        let c = self.cpu(cpu, "cpu")?;
        Ok(match self.h.vmrun(c, ctx, tlb_control).map_err(verr)? {
            VmrunResult::Entered => "entered",
            VmrunResult::VmexitInvalid => "vmexit_invalid",
        })
    }
    /// VM entry of VMX context `ctx` (VPID 0 flushes the VPID-0 mappings).
    fn vmentry(&mut self, cpu: &Bound<'_, PyAny>, ctx: &Bound<'_, PyAny>) -> PyResult<()> {
        let ctx = int_arg(ctx, "ctx", u32::MAX as u64)? as u32;
        let c = self.cpu(cpu, "cpu")?;
        self.h.vmentry(c, ctx).map_err(verr)
    }
    /// #VMEXIT / VM exit: the guest's CR3 is stored into its context; back to the CPU's own host
    /// context (`set_host_context`, 0 by default) with the host CR3 it had at entry.
    fn vmexit(&mut self, cpu: &Bound<'_, PyAny>) -> PyResult<()> {
        let c = self.cpu(cpu, "cpu")?;
        self.h.vmexit(c).map_err(verr)
    }
    /// Translate one address in `cpu`'s current context (through and into its TLBs) for a read, or
    /// a write if `write`: (pa, key), or None for a fault (no mapping, or a write through a
    /// read-only translation: counted in `write_faults`).
    #[pyo3(signature = (cpu, va, write=false))]
    fn translate(&mut self, cpu: &Bound<'_, PyAny>, va: &Bound<'_, PyAny>, write: bool) -> PyResult<Option<(u64, u16)>> {
        let c = self.cpu(cpu, "cpu")?;
        let va = int_arg(va, "va", u64::MAX)?;
        if !sevsim_engine::paging::canonical(va) {
            return Err(PyValueError::new_err(format!("va = {va:#x} is not a canonical address")));
        }
        Ok(match self.h.translate_access(c, va, write) {
            Translated::Ok { pa, key } => Some((pa, key)),
            Translated::Fault | Translated::RmpFault => None,
        })
    }
    /// Translated accesses, as `access` but with virtual addresses in each CPU's current context.
    /// Levels: 0..5 as for `access`, 6 = refused by the RMP checks, 7 = a page fault (not performed).
    #[pyo3(signature = (cpu, va, write=None, *, return_levels=false))]
    fn access_virtual<'py>(&mut self, py: Python<'py>, cpu: &Bound<'py, PyAny>, va: PyReadonlyArray1<'py, u64>,
                           write: Option<&Bound<'py, PyAny>>, return_levels: bool) -> PyResult<Bound<'py, PyDict>> {
        let cpu_c = col_arg::<u32>(cpu, "cpu", "uint32", |o| Ok(self.cpu(o, "cpu")? as u32))?;
        let write_c = write_arg(py, write)?;
        let (mut o1, mut o2, mut o3) = (Vec::new(), Vec::new(), Vec::new());
        let va_s = contiguous(&va, &mut o2);
        let (cpu_s, write_s) = (cpu_c.col(&mut o1), write_c.col(&mut o3));
        let n = va_s.len();
        let mut levels = if return_levels { vec![0u8; n] } else { Vec::new() };
        let h = &mut self.h;
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
    fn invlpg(&mut self, cpu: &Bound<'_, PyAny>, va: &Bound<'_, PyAny>) -> PyResult<u64> {
        let c = self.cpu(cpu, "cpu")?;
        self.h.invlpg(c, int_arg(va, "va", u64::MAX)?).map_err(verr)
    }
    /// MOV to CR3 in the current context (noflush = CR3 bit 63 with PCIDs).
    #[pyo3(signature = (cpu, table, pcid=None, noflush=false))]
    fn mov_cr3(&mut self, cpu: &Bound<'_, PyAny>, table: &Bound<'_, PyAny>, pcid: Option<&Bound<'_, PyAny>>, noflush: bool) -> PyResult<u64> {
        let table = int_arg(table, "table", u32::MAX as u64)? as u32;
        let pcid = opt_int(pcid, "pcid", 0xFFFF)?.unwrap_or(0) as u16;
        let c = self.cpu(cpu, "cpu")?;
        self.h.mov_cr3(c, table, pcid, noflush).map_err(verr)
    }
    /// INVPCID type 0-3 in the current ASID/VPID; None for #GP (an undefined type, a
    /// non-canonical address).
    #[pyo3(signature = (cpu, kind, pcid=None, va=None))]
    fn invpcid<'py>(&mut self, py: Python<'py>, cpu: &Bound<'_, PyAny>, kind: &Bound<'_, PyAny>, pcid: Option<&Bound<'_, PyAny>>, va: Option<&Bound<'_, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
        let kind = int_arg(kind, "kind", 0xFF)? as u8;
        let pcid = opt_int(pcid, "pcid", 0xFFFF)?.unwrap_or(0) as u16;
        let va = opt_int(va, "va", u64::MAX)?.unwrap_or(0) as u64;
        let c = self.cpu(cpu, "cpu")?;
        opt_result(py, self.h.invpcid(c, kind, pcid, va).map_err(verr)?)
    }
    /// INVLPGA(va, asid) on this CPU only.
    fn invlpga(&mut self, cpu: &Bound<'_, PyAny>, va: &Bound<'_, PyAny>, asid: &Bound<'_, PyAny>) -> PyResult<u64> {
        let asid = int_arg(asid, "asid", 0xFFFF)? as u16;
        let c = self.cpu(cpu, "cpu")?;
        self.h.invlpga(c, int_arg(va, "va", u64::MAX)?, asid).map_err(verr)
    }
    /// INVLPGB: broadcast, asynchronous until this CPU's TLBSYNC. va None = all addresses.
    #[pyo3(signature = (cpu, va=None, *, count=None, stride_2m=false, pcid=None, asid=None, include_global=false,
                        final_only=false, include_nested=false))]
    #[allow(clippy::too_many_arguments)]
    fn invlpgb(&mut self, cpu: &Bound<'_, PyAny>, va: Option<&Bound<'_, PyAny>>, count: Option<&Bound<'_, PyAny>>, stride_2m: bool,
               pcid: Option<&Bound<'_, PyAny>>, asid: Option<&Bound<'_, PyAny>>, include_global: bool, final_only: bool,
               include_nested: bool) -> PyResult<()> {
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
        self.h.invlpgb(c, op).map_err(verr)
    }
    /// TLBSYNC: the INVLPGBs this CPU issued complete everywhere. Returns entries dropped.
    fn tlbsync(&mut self, cpu: &Bound<'_, PyAny>) -> PyResult<u64> {
        let c = self.cpu(cpu, "cpu")?;
        self.h.tlbsync(c).map_err(verr)
    }
    /// INVEPT type 1 (single context: EPT table `eptp`) or 2 (all); None for VMfail.
    #[pyo3(signature = (cpu, kind, eptp=None))]
    fn invept<'py>(&mut self, py: Python<'py>, cpu: &Bound<'_, PyAny>, kind: &Bound<'_, PyAny>, eptp: Option<&Bound<'_, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
        let kind = int_arg(kind, "kind", 0xFF)? as u8;
        let eptp = opt_int(eptp, "eptp", u32::MAX as u64)?.unwrap_or(0) as u32;
        let c = self.cpu(cpu, "cpu")?;
        opt_result(py, self.h.invept(c, kind, eptp).map_err(verr)?)
    }
    /// INVVPID type 0 (address), 1 (single), 2 (all but VPID 0), 3 (single, keeping globals);
    /// None for VMfail.
    #[pyo3(signature = (cpu, kind, vpid=None, va=None))]
    fn invvpid<'py>(&mut self, py: Python<'py>, cpu: &Bound<'_, PyAny>, kind: &Bound<'_, PyAny>, vpid: Option<&Bound<'_, PyAny>>, va: Option<&Bound<'_, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
        let kind = int_arg(kind, "kind", 0xFF)? as u8;
        let vpid = opt_int(vpid, "vpid", 0xFFFF)?.unwrap_or(0) as u16;
        let va = opt_int(va, "va", u64::MAX)?.unwrap_or(0) as u64;
        let c = self.cpu(cpu, "cpu")?;
        opt_result(py, self.h.invvpid(c, kind, vpid, va).map_err(verr)?)
    }
    /// A full TLB flush on each CPU of `cpus` by IPI from `initiator` (flush_tlb_all). Returns the
    /// initiator's cycles.
    fn flush_tlb_all_on_cpus(&mut self, initiator: &Bound<'_, PyAny>, cpus: &Bound<'_, PyAny>) -> PyResult<u64> {
        let i = self.cpu(initiator, "initiator")?;
        let cs = self.cpu_list(cpus, "cpus")?;
        self.h.flush_tlb_all_on_cpus(i, &cs).map_err(verr)
    }
    /// The TLB entries of `cpu`'s core: dicts with level, category, domain, tag, pcid, eptp,
    /// global, cbit, size, addr, target, thread (the SMT thread that filled it, 0 if untagged).
    fn tlb_entries<'py>(&self, py: Python<'py>, cpu: &Bound<'_, PyAny>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let c = self.cpu(cpu, "cpu")?;
        let es = self.h.tlb_entries(c).map_err(verr)?;
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
        let d = PyDict::new(py);
        for (k, ops, dropped) in self.h.invalidation_stats() {
            d.set_item(k, (ops, dropped))?;
        }
        Ok(d)
    }
    // -----------------------------------------------------------------------------------
    // SEV-SNP: RMP, direct map, page-in primitives

    /// Start of the direct map (__va(0)).
    #[classattr]
    const PAGE_OFFSET: u64 = PAGE_OFFSET;
    /// SYSCFG.SNPEn: from now on the RMP checks apply to memory accesses. ValueError on a preset
    /// without SEV-SNP (features['snp'] false).
    fn snp_enable(&mut self) -> PyResult<()> {
        self.h.snp_enable().map_err(verr)
    }
    #[getter]
    fn snp_enabled(&self) -> bool {
        self.h.snp_enabled()
    }
    /// Mark guest key `asid` as an SNP guest's (its private accesses get the RMP checks).
    #[pyo3(signature = (asid, snp=true))]
    fn snp_set_asid(&mut self, asid: &Bound<'_, PyAny>, snp: bool) -> PyResult<()> {
        let asid = int_arg(asid, "asid", 0xFFFF)? as u16;
        self.h.snp_set_asid(asid, snp).map_err(verr)
    }
    /// RMPUPDATE of the 4 KiB page (or, with huge, the 2 MiB region) at `pa`: the hardware's return
    /// code (0 success, 1 FAIL_INPUT, 2 FAIL_PERMISSION, 4 FAIL_OVERLAP). Clears Validated.
    #[pyo3(signature = (cpu, pa, *, assigned, huge=false, asid=None, gpa=None, immutable=false))]
    #[allow(clippy::too_many_arguments)]
    fn rmpupdate(&mut self, cpu: &Bound<'_, PyAny>, pa: &Bound<'_, PyAny>, assigned: bool, huge: bool, asid: Option<&Bound<'_, PyAny>>, gpa: Option<&Bound<'_, PyAny>>,
                 immutable: bool) -> PyResult<u8> {
        let asid = opt_int(asid, "asid", 0xFFFF)?.unwrap_or(0) as u16;
        let gpa = opt_int(gpa, "gpa", u64::MAX)?.unwrap_or(0) as u64;
        let c = self.cpu(cpu, "cpu")?;
        let pa = int_arg(pa, "pa", u64::MAX)?;
        self.h.rmpupdate(c, pa, RmpState { assigned, huge, asid, gpa, immutable }).map_err(verr)
    }
    /// RMPUPDATE of many pages in one call: pa[i] gets (assigned, huge, asid, gpa[i], immutable).
    /// Returns the codes (uint8 array). Every address is checked before any update.
    #[pyo3(signature = (cpu, pa, gpa, *, assigned, huge=false, asid=None, immutable=false))]
    #[allow(clippy::too_many_arguments)]
    fn rmpupdate_batch<'py>(&mut self, py: Python<'py>, cpu: &Bound<'py, PyAny>, pa: &Bound<'py, PyAny>,
                            gpa: &Bound<'py, PyAny>, assigned: bool, huge: bool, asid: Option<&Bound<'py, PyAny>>,
                            immutable: bool)
                            -> PyResult<Bound<'py, PyArray1<u8>>> {
        // scalars first, whatever the arrays' lengths (an empty batch is checked too)
        let c = self.cpu(cpu, "cpu")?;
        let asid = match asid { Some(a) => rmp_asid(a)?, None => 0 };
        let (pa, gpa) = (array_arg::<u64>(pa, "pa", "uint64")?, array_arg::<u64>(gpa, "gpa", "uint64")?);
        let (p, g) = (pa.as_array(), gpa.as_array());
        if p.len() != g.len() {
            return Err(PyValueError::new_err(format!("pa has {} elements, gpa {}", p.len(), g.len())));
        }
        let mem = self.h.memory_bytes();
        for (i, &a) in p.iter().enumerate() {
            // every argument is checked before any update: a bad batch changes nothing
            if a >= mem || (huge && (a & !((1 << 21) - 1)) + (1 << 21) > mem) {
                return Err(PyValueError::new_err(format!("pa[{i}] = {a:#x} is past the end of memory")));
            }
        }
        let mut out = Vec::with_capacity(p.len()); // (a bad asid fails on the first, before any change)
        for i in 0..p.len() {
            out.push(self.h.rmpupdate(c, p[i], RmpState { assigned, huge, asid, gpa: g[i], immutable }).map_err(verr)?);
        }
        Ok(PyArray1::from_vec(py, out))
    }
    /// PSMASH of the 2 MiB entry at `pa`: its return code.
    fn psmash(&mut self, cpu: &Bound<'_, PyAny>, pa: &Bound<'_, PyAny>) -> PyResult<u8> {
        let c = self.cpu(cpu, "cpu")?;
        self.h.psmash(c, int_arg(pa, "pa", u64::MAX)?).map_err(verr)
    }
    /// PVALIDATE by guest `asid` on `cpu` of the page at `pa` mapped at `gpa`: (code, changed).
    /// Codes: 0, 1 FAIL_INPUT, 6 FAIL_SIZEMISMATCH, 0x80 #NPF(RMP), 0x81 #NPF(RMP|SIZEM);
    /// changed False with code 0 is the hardware's CF=1 "no change".
    #[pyo3(signature = (cpu, asid, pa, gpa, *, huge=false, validate=true))]
    fn pvalidate(&mut self, cpu: &Bound<'_, PyAny>, asid: &Bound<'_, PyAny>, pa: &Bound<'_, PyAny>, gpa: &Bound<'_, PyAny>,
                 huge: bool, validate: bool) -> PyResult<(u8, bool)> {
        let c = self.cpu(cpu, "cpu")?;
        let asid = rmp_asid(asid)?;
        let (pa, gpa) = (int_arg(pa, "pa", u64::MAX)?, int_arg(gpa, "gpa", u64::MAX)?);
        self.h.pvalidate(c, asid, pa, gpa, huge, validate).map_err(verr)
    }
    /// PVALIDATE of many pages: returns (codes uint8, changed bool) arrays.
    #[pyo3(signature = (cpu, asid, pa, gpa, *, huge=false, validate=true))]
    #[allow(clippy::too_many_arguments)]
    fn pvalidate_batch<'py>(&mut self, py: Python<'py>, cpu: &Bound<'py, PyAny>, asid: &Bound<'py, PyAny>,
                            pa: &Bound<'py, PyAny>, gpa: &Bound<'py, PyAny>, huge: bool, validate: bool)
                            -> PyResult<(Bound<'py, PyArray1<u8>>, Bound<'py, PyArray1<bool>>)> {
        let c = self.cpu(cpu, "cpu")?;
        let asid = rmp_asid(asid)?;
        let (pa, gpa) = (array_arg::<u64>(pa, "pa", "uint64")?, array_arg::<u64>(gpa, "gpa", "uint64")?);
        let (p, g) = (pa.as_array(), gpa.as_array());
        if p.len() != g.len() {
            return Err(PyValueError::new_err(format!("pa has {} elements, gpa {}", p.len(), g.len())));
        }
        for (i, &a) in p.iter().enumerate() {
            if a >= self.h.memory_bytes() {
                return Err(PyValueError::new_err(format!("pa[{i}] = {a:#x} is past the end of memory")));
            }
        }
        let (mut codes, mut changed) = (Vec::with_capacity(p.len()), Vec::with_capacity(p.len()));
        for i in 0..p.len() {
            let (code, ch) = self.h.pvalidate(c, asid, p[i], g[i], huge, validate).map_err(verr)?;
            codes.push(code);
            changed.push(ch);
        }
        Ok((PyArray1::from_vec(py, codes), PyArray1::from_vec(py, changed)))
    }
    /// The RMP entry of the page at `pa`: dict with assigned, huge, asid, gpa, validated, immutable.
    fn rmp_entry<'py>(&self, py: Python<'py>, pa: &Bound<'_, PyAny>) -> PyResult<Bound<'py, PyDict>> {
        let e = self.h.rmp_entry(int_arg(pa, "pa", u64::MAX)?).map_err(verr)?;
        let d = PyDict::new(py);
        d.set_item("assigned", e.assigned)?;
        d.set_item("huge", e.huge)?;
        d.set_item("asid", e.asid)?;
        d.set_item("gpa", e.gpa)?;
        d.set_item("validated", e.validated)?;
        d.set_item("immutable", e.immutable)?;
        Ok(d)
    }
    /// Bytes the RMP's storage takes.
    #[getter]
    fn rmp_bytes(&self) -> usize {
        self.h.rmp_heap_bytes()
    }
    /// lookup_address(): the size in bytes of the host-table leaf mapping `va`, or None.
    fn lookup_address(&self, va: &Bound<'_, PyAny>) -> PyResult<Option<u64>> {
        Ok(self.h.lookup_address(int_arg(va, "va", u64::MAX)?).map(|s| s.bytes()))
    }
    /// __va(pa): the direct-map address of `pa`.
    fn direct_map_va(&self, pa: &Bound<'_, PyAny>) -> PyResult<u64> {
        let pa = int_arg(pa, "pa", u64::MAX)?;
        self.h.check_addr("pa", pa).map_err(verr)?;
        Ok(self.h.direct_map_va(pa))
    }
    /// set_memory_4k(va, 1) from `cpu`: split the direct-map leaf down to 4 KiB under cpa_lock
    /// with a flush_tlb_all() per split ("ipi", "invlpgb", or "none": a broken kernel that does
    /// not flush); nothing if already 4 KiB. Returns cycles (waiting included).
    #[pyo3(signature = (cpu, va, *, flush="ipi"))]
    fn set_memory_4k(&mut self, cpu: &Bound<'_, PyAny>, va: &Bound<'_, PyAny>, flush: &str) -> PyResult<u64> {
        self.snp_set_memory_4k(cpu, va, flush)
    }
    // --- SNP at host scale (bodies in snp.rs) ---
    /// set_memory_4k(__va(pa[i]), 1) for each i in order: (cycles, splits uint8 per element).
    #[pyo3(signature = (cpu, pa, *, flush="ipi"))]
    fn set_memory_4k_batch<'py>(&mut self, py: Python<'py>, cpu: &Bound<'py, PyAny>, pa: &Bound<'py, PyAny>, flush: &str)
                                -> PyResult<(u64, Bound<'py, PyArray1<u8>>)> {
        self.snp_set_memory_4k_batch(py, cpu, pa, flush)
    }
    /// The size in bytes of the direct-map leaf over physical address `pa`.
    fn direct_map_leaf(&self, pa: &Bound<'_, PyAny>) -> PyResult<u64> {
        self.snp_direct_map_leaf(pa)
    }
    /// `direct_map_leaf` of every element of a uint64 array: uint32 sizes in bytes.
    fn direct_map_leaf_sizes<'py>(&self, py: Python<'py>, pa: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyArray1<u32>>> {
        self.snp_direct_map_leaf_sizes(py, pa)
    }
    /// Build the whole direct map at 4 KiB, free of charge (before the run): (1G, 2M) leaves split.
    fn direct_map_presplit(&mut self) -> (u64, u64) {
        self.h.direct_map_presplit()
    }
    /// Direct-map leaves by size: {"4K": n, "2M": n, "1G": n}.
    #[getter]
    fn direct_map_leaves<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.snp_direct_map_leaves(py)
    }
    /// Bytes the direct map's storage takes.
    #[getter]
    fn direct_map_bytes(&self) -> usize {
        self.h.direct_map_bytes()
    }
    /// The kernel's flush_tlb_all() from `initiator`: "ipi" (every other CPU interrupted; guest-mode
    /// targets exit and re-enter, idle ones wake) or "invlpgb" (INVLPGB + TLBSYNC). Returns cycles.
    #[pyo3(signature = (initiator, *, flush="ipi"))]
    fn flush_tlb_all(&mut self, initiator: &Bound<'_, PyAny>, flush: &str) -> PyResult<u64> {
        self.snp_flush_tlb_all(initiator, flush)
    }
    /// Mark `cpus` idle (an IPI must wake them from a C-state) or busy.
    #[pyo3(signature = (cpus, idle=true))]
    fn set_cpu_idle(&mut self, cpus: &Bound<'_, PyAny>, idle: bool) -> PyResult<()> {
        self.snp_set_cpu_idle(cpus, idle)
    }
    /// Per CPU: idle (bool array).
    #[getter]
    fn cpu_idle<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<bool>> {
        self.snp_cpu_idle(py)
    }
    /// Charge `cpu` for allocating `count` pages (2 MiB with huge, else 4 KiB). Returns cycles.
    #[pyo3(signature = (cpu, count=None, *, huge=false))]
    fn alloc_pages(&mut self, cpu: &Bound<'_, PyAny>, count: Option<&Bound<'_, PyAny>>, huge: bool) -> PyResult<u64> {
        let count = opt_int(count, "count", u64::MAX)?.unwrap_or(1) as u64;
        let c = self.cpu(cpu, "cpu")?;
        self.h.alloc_pages(c, huge, count).map_err(verr)
    }
    /// Zero [pa, pa + size) from `cpu`, bounded by core and socket memory bandwidth (shared by
    /// every CPU's clears). Timing only. Returns cycles.
    fn clear_pages(&mut self, cpu: &Bound<'_, PyAny>, pa: &Bound<'_, PyAny>, size: &Bound<'_, PyAny>) -> PyResult<u64> {
        let c = self.cpu(cpu, "cpu")?;
        self.h.clear_pages(c, int_arg(pa, "pa", u64::MAX)?, size_arg(size, "size")?).map_err(verr)
    }
    /// Charge `cpu` `count` nested page fault round trips (one call). Returns cycles.
    #[pyo3(signature = (cpu, count=None))]
    fn npf_exit(&mut self, cpu: &Bound<'_, PyAny>, count: Option<&Bound<'_, PyAny>>) -> PyResult<u64> {
        let n = opt_int(count, "count", u32::MAX as u64)?.unwrap_or(1);
        let c = self.cpu(cpu, "cpu")?;
        self.h.npf_exits(c, n).map_err(verr)
    }
    /// Clear each page of `pa` (uint64; `page` "4K" or "2M") in order on `cpu`. Returns cycles.
    #[pyo3(signature = (cpu, pa, page=None))]
    fn clear_page_list(&mut self, cpu: &Bound<'_, PyAny>, pa: &Bound<'_, PyAny>, page: Option<&Bound<'_, PyAny>>) -> PyResult<u64> {
        self.snp_clear_page_list(cpu, pa, page)
    }
    /// Kernel data at `pa` (uint64) reached through the direct map: (walks, cycles).
    fn direct_map_walks(&mut self, cpu: &Bound<'_, PyAny>, pa: &Bound<'_, PyAny>) -> PyResult<(u64, u64)> {
        self.snp_direct_map_walks(cpu, pa)
    }
    /// DRAM utilisation of `cpu`'s socket now, in [0, 0.95].
    fn socket_utilisation(&self, cpu: &Bound<'_, PyAny>) -> PyResult<f64> {
        let c = self.cpu(cpu, "cpu")?;
        self.h.socket_utilisation(c).map_err(verr)
    }
    /// Memory-latency factor beta of `cpu`'s socket now (>= 1).
    fn memory_factor(&self, cpu: &Bound<'_, PyAny>) -> PyResult<f64> {
        let c = self.cpu(cpu, "cpu")?;
        self.h.memory_factor(c).map_err(verr)
    }
    /// Count `bytes` of DRAM traffic from `cpu` (raises its socket's utilisation; free).
    fn add_memory_traffic(&mut self, cpu: &Bound<'_, PyAny>, bytes: &Bound<'_, PyAny>) -> PyResult<()> {
        let c = self.cpu(cpu, "cpu")?;
        let b = size_arg(bytes, "bytes")?;
        self.h.add_memory_traffic(c, b).map_err(verr)
    }
    /// Charge `cycles` of memory-bound work, times beta. Returns the cycles charged.
    fn spend_memory_bound(&mut self, cpu: &Bound<'_, PyAny>, cycles: &Bound<'_, PyAny>) -> PyResult<u64> {
        let c = self.cpu(cpu, "cpu")?;
        let n = int_arg(cycles, "cycles", u64::MAX >> 2)?;
        self.h.spend_memory_bound(c, n).map_err(verr)
    }

    /// Bytes of TLB state of all cores.
    #[getter]
    fn tlb_bytes(&self) -> usize {
        self.h.tlb_bytes()
    }

    fn __repr__(&self) -> String {
        format!(
            "Host(preset={:?}, cpus={}, memory={} GiB, sme_coherent={})",
            self.h.cfg.name,
            self.h.topo.cpus,
            self.h.memory_bytes() as f64 / (1u64 << 30) as f64,
            self.h.cfg.features.sme_coherent
        )
    }
}

impl PyHost {
    fn flush(
        &mut self,
        cpu: &Bound<'_, PyAny>,
        pa: &Bound<'_, PyAny>,
        size: Option<&Bound<'_, PyAny>>,
        key: Option<&Bound<'_, PyAny>>,
        op: FlushOp,
        fenced: bool,
    ) -> PyResult<u64> {
        let c = self.cpu(cpu, "cpu")?;
        let pa = int_arg(pa, "pa", u64::MAX)?;
        let size = match size {
            Some(s) => {
                let s = size_arg(s, "size")?;
                if s == 0 {
                    return Err(PyValueError::new_err("size must be positive"));
                }
                s
            }
            None => 1,
        };
        let key = match key {
            Some(k) if !k.is_none() => Self::key(k, "key")?,
            _ => 0,
        };
        self.h.clflush(c, pa, size, key, op, fenced).map_err(verr)
    }

    fn dma(&mut self, pa: &Bound<'_, PyAny>, size: &Bound<'_, PyAny>, key: Option<&Bound<'_, PyAny>>, write: bool) -> PyResult<()> {
        let pa = int_arg(pa, "pa", u64::MAX)?;
        let size = size_arg(size, "size")?;
        if size == 0 {
            return Err(PyValueError::new_err("size must be positive"));
        }
        let key = match key {
            Some(k) if !k.is_none() => Self::key(k, "key")?,
            _ => 0,
        };
        self.h.dma(pa, size, key, write).map_err(verr)
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
