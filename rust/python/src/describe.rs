//! The Host's construction and description: presets, topology, geometry, costs, sizes.

use numpy::ToPyArray;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use sevsim_engine::config::{self, HostConfig};
use sevsim_engine::host::Host;

use crate::args::*;
use crate::PyHost;

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
            // an int is bounded by the engine's limit (past it, the message names 64 TiB, not the
            // parser's 2^63); Host::new checks the rest (config::check_memory)
            Some(m) if !m.is_none() && !m.is_instance_of::<pyo3::types::PyString>() => Some(int_arg(m, "memory", config::MAX_MEMORY)?),
            Some(m) if !m.is_none() => Some(size_arg(m, "memory")?),
            _ => None,
        };
        Ok(PyHost::new(Host::new(cfg, mem).map_err(verr)?))
    }
    /// Names and descriptions of the presets in the shipped (or a given) profile.
    #[staticmethod]
    #[pyo3(signature = (profile=None))]
    fn presets(profile: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<(String, String)>> {
        config::list_presets(&read_profile(profile)?).map_err(verr)
    }
    #[getter]
    fn preset(&self) -> PyResult<String> {
        let h = self.host("preset")?;
        Ok(h.cfg.name.clone())
    }
    #[getter]
    fn description(&self) -> PyResult<String> {
        let h = self.host("description")?;
        Ok(h.cfg.description.clone())
    }
    #[getter]
    fn cpu_count(&self) -> PyResult<usize> {
        let h = self.host("cpu_count")?;
        Ok(h.topo.cpus)
    }
    #[getter]
    fn core_count(&self) -> PyResult<usize> {
        let h = self.host("core_count")?;
        Ok(h.topo.cores)
    }
    #[getter]
    fn ccd_count(&self) -> PyResult<usize> {
        let h = self.host("ccd_count")?;
        Ok(h.topo.ccds)
    }
    #[getter]
    fn socket_count(&self) -> PyResult<usize> {
        let h = self.host("socket_count")?;
        Ok(h.topo.sockets)
    }
    /// Bytes of physical memory.
    #[getter]
    fn memory(&self) -> PyResult<u64> {
        let h = self.host("memory")?;
        Ok(h.memory_bytes())
    }
    #[getter]
    fn freq_ghz(&self) -> PyResult<f64> {
        let h = self.host("freq_ghz")?;
        Ok(h.cfg.freq_ghz)
    }
    /// {'sme_coherent': bool, 'wbnoinvd': bool, 'vm_page_flush': bool, 'tlb_smt_tagged': bool}
    /// (tlb_smt_tagged: TLB entries carry the logical thread, the preset's `tlb.smt_tagged`)
    #[getter]
    fn features<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let h = self.host("features")?;
        let f = &h.cfg.features;
        let d = PyDict::new(py);
        d.set_item("sme_coherent", f.sme_coherent)?;
        d.set_item("wbnoinvd", f.wbnoinvd)?;
        d.set_item("vm_page_flush", f.vm_page_flush)?;
        d.set_item("snp", f.snp)?;
        d.set_item("tlb_smt_tagged", h.cfg.tlb.smt_tagged)?;
        Ok(d)
    }
    /// KVM's software costs from the profile's `kvm` table (cycles, or GB/s where the name says
    /// so), for the Python kvm layer; the engine itself never reads them.
    #[getter]
    fn kvm_cost<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let h = self.host("kvm_cost")?;
        let d = PyDict::new(py);
        for (k, v) in &h.cfg.kvm {
            d.set_item(k, *v)?;
        }
        Ok(d)
    }
    /// The cache geometry and latencies: {'l1d': {'size', 'ways', 'sets', 'latency'}, ...}
    #[getter]
    fn caches<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let h = self.host("caches")?;
        let d = PyDict::new(py);
        for (name, g) in [("l1d", &h.cfg.l1d), ("l2", &h.cfg.l2), ("l3", &h.cfg.l3)] {
            let e = PyDict::new(py);
            e.set_item("size", g.size.0)?;
            e.set_item("ways", g.ways)?;
            e.set_item("sets", g.sets())?;
            e.set_item("latency", g.latency)?;
            d.set_item(name, e)?;
        }
        d.set_item(
            "wbinvd_scope",
            match h.cfg.wbinvd_scope {
                config::WbinvdScope::Core => "core",
                config::WbinvdScope::Ccd => "ccd",
            },
        )?;
        Ok(d)
    }
    /// {'cpu_core', 'cpu_ccd', 'cpu_socket', 'core_ccd'}: numpy arrays describing the topology.
    fn topology<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let h = self.host("topology")?;
        let t = &h.topo;
        let d = PyDict::new(py);
        let cpu_ccd: Vec<u32> = (0..t.cpus).map(|c| t.ccd_of_cpu(c) as u32).collect();
        let cpu_socket: Vec<u32> = cpu_ccd.iter().map(|&d| t.ccd_socket[d as usize]).collect();
        d.set_item("cpu_core", t.cpu_core.to_pyarray(py))?;
        d.set_item("cpu_ccd", cpu_ccd.to_pyarray(py))?;
        d.set_item("cpu_socket", cpu_socket.to_pyarray(py))?;
        d.set_item("core_ccd", t.core_ccd.to_pyarray(py))?;
        Ok(d)
    }
    /// The preset's TLB geometry and translation costs (its `tlb` table, overrides applied).
    #[getter]
    fn tlb_cost<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let h = self.host("tlb_cost")?;
        config_dict(py, toml::Value::try_from(&h.cfg.tlb))
    }
    /// The preset's SEV-SNP host costs (its `snp` table, overrides applied; cycles, or GB/s
    /// where the name says so).
    #[getter]
    fn snp_cost<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let h = self.host("snp_cost")?;
        config_dict(py, toml::Value::try_from(&h.cfg.snp))
    }
    /// The cost profile's numbers for this host (cycles unless named otherwise).
    #[getter]
    fn cost<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let h = self.host("cost")?;
        let c = &h.cfg.cost;
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
        let l = &h.cfg.latency;
        for (k, v) in [("peer_core", l.peer_core), ("remote_ccd", l.remote_ccd), ("remote_socket", l.remote_socket), ("memory", l.memory)] {
            d.set_item(format!("latency_{k}"), v)?;
        }
        Ok(d)
    }
    /// Bytes held by the engine's tables (caches, directory, memory ownership, violations). A
    /// memory figure, not a result: the directory is sized ahead for each access call, so it
    /// depends on how a trace is split into calls.
    #[getter]
    fn heap_bytes(&self) -> PyResult<usize> {
        let h = self.host("heap_bytes")?;
        Ok(h.heap_bytes())
    }
    #[getter]
    fn directory_entries(&self) -> PyResult<usize> {
        let h = self.host("directory_entries")?;
        Ok(h.directory_entries())
    }
    /// Bytes of TLB state of all cores.
    #[getter]
    fn tlb_bytes(&self) -> PyResult<usize> {
        let h = self.host("tlb_bytes")?;
        Ok(h.tlb_bytes())
    }
    fn __repr__(&self) -> String {
        // never an error (a repr is printed by tracebacks and debuggers): say busy instead
        let Ok(h) = self.h.try_lock() else { return "Host(<busy in another thread's call>)".into() };
        format!(
            "Host(preset={:?}, cpus={}, memory={} GiB, sme_coherent={})",
            h.cfg.name,
            h.topo.cpus,
            h.memory_bytes() as f64 / (1u64 << 30) as f64,
            h.cfg.features.sme_coherent
        )
    }
}

/// A flat configuration table as a dict of ints, floats and bools.
fn config_dict<'py>(py: Python<'py>, v: Result<toml::Value, toml::ser::Error>) -> PyResult<Bound<'py, PyDict>> {
    let v = v.map_err(|e| PyValueError::new_err(format!("configuration: {e}")))?;
    let d = PyDict::new(py);
    if let toml::Value::Table(t) = v {
        for (k, x) in t {
            match x {
                toml::Value::Integer(i) => d.set_item(k, i)?,
                toml::Value::Float(f) => d.set_item(k, f)?,
                toml::Value::Boolean(b) => d.set_item(k, b)?,
                other => d.set_item(k, other.to_string())?,
            }
        }
    }
    Ok(d)
}
