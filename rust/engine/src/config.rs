//! Host configuration: presets and cost profile, parsed from the TOML profile shipped with the
//! Python package (`python/sevsim/data/profile.toml`), with the same schema for user files.

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

/// The profile shipped with the package. Every number in it names its source or is marked assumed.
pub const DEFAULT_PROFILE: &str = include_str!("../../../python/sevsim/data/profile.toml");

/// A byte size written as an integer or as a string such as "48KiB", "1.5TiB", "64GB".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            I(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::I(v) => Ok(Size(v)),
            Raw::S(s) => parse_size(&s).map(Size).map_err(de::Error::custom),
        }
    }
}

/// Parse "64", "48KiB", "1.5TiB", "2 GiB", "4k" into bytes, exactly (integer arithmetic, no
/// floating point: "16.1KB" is 16,100 bytes and "9007199254740993" is that many). Binary units
/// (KiB, MiB, GiB, TiB and the short K, M, G, T) are powers of 1024; decimal units (KB, MB, GB,
/// TB) powers of 1000. Sizes are whole bytes up to 2^62.
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let s = text.trim();
    if s.starts_with('-') {
        return Err(format!("size {text:?} is negative; sizes are whole bytes from 0 to 2^62"));
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let unit = unit.trim();
    let mult: u128 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(format!("size {text:?}: unknown unit {unit:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)")),
    };
    let digits = num.replace('_', "");
    let (int, frac) = digits.split_once('.').unwrap_or((&digits, ""));
    let is_digits = |d: &str| d.chars().all(|c| c.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !is_digits(int) || !is_digits(frac) {
        return Err(format!("size {text:?}: {num:?} is not a number"));
    }
    let out_of_range = || format!("size {text:?} is out of range (at most 2^62 bytes)");
    if frac.len() > 30 {
        return Err(format!("size {text:?}: too many decimals"));
    }
    let i: u128 = if int.is_empty() { 0 } else { int.parse().map_err(|_| out_of_range())? };
    let f: u128 = if frac.is_empty() { 0 } else { frac.parse().map_err(|_| out_of_range())? };
    let scale = 10u128.pow(frac.len() as u32);
    let whole = i.checked_mul(mult).ok_or_else(out_of_range)?;
    let part = f.checked_mul(mult).ok_or_else(out_of_range)?;
    if part % scale != 0 {
        return Err(format!("size {text:?} is not a whole number of bytes"));
    }
    let bytes = whole.checked_add(part / scale).ok_or_else(out_of_range)?;
    if bytes > 1u128 << 62 {
        return Err(out_of_range());
    }
    Ok(bytes as u64)
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheGeom {
    pub size: Size,
    pub ways: u32,
    pub latency: u32,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WbinvdScope {
    /// The executing core's private caches only.
    Core,
    /// The private caches and the CCD's shared L3.
    Ccd,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Features {
    pub sme_coherent: bool,
    pub wbnoinvd: bool,
    pub vm_page_flush: bool,
    /// SEV-SNP (CPUID 8000_001F EAX[4]); without it SYSCFG.SNPEn cannot be set
    pub snp: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Latencies {
    pub peer_core: u32,
    pub remote_ccd: u32,
    pub remote_socket: u32,
    pub memory: u32,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Costs {
    pub wbinvd_base: u64,
    pub wbinvd_walk_per_line: f64,
    pub wbinvd_writeback_per_line: f64,
    pub socket_writeback_gbps: f64,
    pub clflush_line: u64,
    pub clflushopt_line: u64,
    pub flush_dirty_line: u64,
    pub fence: u64,
    pub vm_page_flush_base: u64,
    pub ipi_send_base: u64,
    pub ipi_send_per_target: u64,
    pub ipi_latency: u64,
    pub ipi_handler: u64,
    pub ipi_ack: u64,
    /// flush_tlb_all() by IPIs also pays, per target, the transfer of one cache line at the
    /// target's distance (peer_core / remote_ccd / remote_socket): smp_call_function_many_cond()
    /// (kernel/smp.c) queues the initiator's csd on each target's call_single_queue with
    /// llist_add(), a locked cmpxchg on a line the target last wrote, one target after another.
    /// Off by default (the flat `ipi_send_per_target` only).
    #[serde(default)]
    pub ipi_queue_line: bool,
    /// PSP firmware commands (SEV API): DF_FLUSH, and a typical short command (ACTIVATE, DEACTIVATE)
    pub df_flush: u64,
    pub psp_command: u64,
}

/// TLB geometry and translation costs (cycles).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlbConfig {
    /// L1 DTLB entries, fully associative, every page size
    pub l1_entries: u32,
    /// L2 DTLB entries and ways; 1 GiB translations are held as 2 MiB pieces
    pub l2_entries: u32,
    pub l2_ways: u32,
    pub l2_latency: u32,
    /// a native (one-dimensional) page walk, and a nested (two-dimensional) one
    pub walk_native: u32,
    pub walk_nested: u32,
    /// the nested half of a walk when the guest-physical entry is cached
    pub walk_guest_only: u32,
    pub invlpg: u32,
    /// a local flush of many entries (MOV CR3, INVPCID, INVEPT, INVVPID, TLB_CONTROL)
    pub flush: u32,
    /// a MOV to CR3 that flushes nothing (CR3 bit 63 with CR4.PCIDE): the serialising CR3 load
    /// alone; absent: 100 [assumed]
    #[serde(default = "default_cr3_load")]
    pub cr3_load: u32,
    /// VMRUN + #VMEXIT (or VM entry + exit) round trip
    pub world_switch: u32,
    pub invlpgb: u32,
    /// TLBSYNC: waiting for a broadcast invalidation to complete on every CPU
    pub tlbsync: u32,
    /// SVM: FLUSHBYASID (CPUID 8000_000A EDX[6]); without it TLB_CONTROL 3 and 7 are invalid
    pub flushbyasid: bool,
    /// entries are tagged with the logical thread that filled them (SMT siblings neither share
    /// entries nor flushes); absent: false
    #[serde(default)]
    pub smt_tagged: bool,
}

fn default_cr3_load() -> u32 {
    100
}

/// SEV-SNP host costs (cycles, bandwidths in GB/s).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SnpConfig {
    pub rmpupdate: u32,
    pub psmash: u32,
    pub pvalidate_4k: u32,
    pub pvalidate_2m: u32,
    pub alloc_4k: u32,
    pub alloc_2m: u32,
    /// filling a new page-table page (512 entries) when a direct-map leaf is split
    pub split_fill: u32,
    /// a nested page fault: #VMEXIT, KVM's fault handling and VMRUN back
    pub npf_exit: u32,
    /// memory bandwidth for clearing pages: one core, and a whole socket
    pub core_clear_gbps: f64,
    pub socket_clear_gbps: f64,
    /// an idle CPU leaving its C-state when an IPI arrives (flush_tlb_all() targets, kflush.rs)
    pub cstate_wake: u32,
    /// a host page walk ending at a 4 KiB direct-map leaf (membw.rs), before DRAM inflation
    pub dm_walk_4k: u32,
    /// the window over which a socket's DRAM utilisation is measured, and the loaded-latency
    /// gain a in beta = 1 + a * rho / (1 - rho) (membw.rs)
    pub bw_window: u32,
    pub dram_queueing: f64,
}

/// One host preset, as written in the profile.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub sockets: u32,
    pub ccds_per_socket: u32,
    pub cores_per_ccd: u32,
    pub threads_per_core: u32,
    pub line_size: u32,
    pub memory: Size,
    pub freq_ghz: f64,
    pub wbinvd_scope: WbinvdScope,
    pub features: Features,
    pub l1d: CacheGeom,
    pub l2: CacheGeom,
    pub l3: CacheGeom,
    pub latency: Latencies,
    pub cost: Costs,
    pub tlb: TlbConfig,
    pub snp: SnpConfig,
    /// KVM's software costs (cycles, or GB/s where the name says so): the engine never reads them,
    /// it carries them for the Python kvm layer so that one profile holds every cost.
    #[serde(default)]
    pub kvm: std::collections::BTreeMap<String, f64>,
}

#[derive(Deserialize)]
struct ProfileFile {
    schema: u32,
    presets: toml::Table,
}

/// The limits of the model, checked by [`HostConfig::validate`].
pub const MAX_CCDS: u32 = 64;
pub const MAX_CORES_PER_CCD: u32 = 32;
pub const MAX_CPUS: u32 = 8192;
pub const MAX_WAYS: u32 = 64;
/// Lines are tagged with 40 bits of line number: 2^46 bytes = 64 TiB of physical memory.
pub const MAX_MEMORY: u64 = 1 << 46;
pub const LINE: u64 = 64;
pub const PAGE: u64 = 4096;

fn parse_profile(text: &str) -> Result<toml::Table> {
    let file: ProfileFile = toml::from_str(text)
        .map_err(|e| EngineError::invalid("profile", format!("cannot parse the profile: {e}")))?;
    if file.schema != 1 {
        return Err(EngineError::invalid(
            "profile",
            format!("profile: schema {} is not supported (this sevsim reads schema 1)", file.schema),
        ));
    }
    Ok(file.presets)
}

/// Names and descriptions of the presets in a profile, sorted by name.
pub fn list_presets(profile: &str) -> Result<Vec<(String, String)>> {
    let presets = parse_profile(profile)?;
    let mut out: Vec<(String, String)> = presets
        .iter()
        .map(|(k, v)| {
            let d = v
                .get("description")
                .and_then(|d| d.as_str())
                .unwrap_or("")
                .to_string();
            (k.clone(), d)
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Deep-merge `over` into `base` (tables merge key by key, anything else replaces).
fn merge(base: &mut toml::Value, over: &toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(bv) => merge(bv, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

impl HostConfig {
    /// Load preset `name` from `profile` (TOML text), apply `overrides` (a TOML table with the same
    /// shape as a preset, merged key by key), and validate the result.
    pub fn from_profile(profile: &str, name: &str, overrides: Option<&toml::Table>) -> Result<Self> {
        let presets = parse_profile(profile)?;
        let raw = presets.get(name).ok_or_else(|| {
            let mut names: Vec<&String> = presets.keys().collect();
            names.sort();
            let names: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
            EngineError::invalid(
                "preset",
                format!("unknown preset {name:?}; the profile has: {}", names.join(", ")),
            )
        })?;
        let mut value = raw.clone();
        if let Some(o) = overrides {
            merge(&mut value, &toml::Value::Table(o.clone()));
        }
        // serde_path_to_error names the field a bad value is in ("tlb.l2_entries: invalid value ...")
        let mut cfg: HostConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let msg = e.into_inner().message().to_string();
            EngineError::invalid(if path == "." { "preset" } else { &path }, format!("preset {name:?}: {path}: {msg}"))
        })?;
        cfg.name = name.to_string();
        cfg.validate()?;
        Ok(cfg)
    }

    /// The shipped profile's preset.
    pub fn preset(name: &str) -> Result<Self> {
        Self::from_profile(DEFAULT_PROFILE, name, None)
    }

    pub fn ccds(&self) -> u32 {
        self.sockets * self.ccds_per_socket
    }
    pub fn cores(&self) -> u32 {
        self.ccds() * self.cores_per_ccd
    }
    pub fn cpus(&self) -> u32 {
        self.cores() * self.threads_per_core
    }

    /// Check the geometry and limits; errors name the field and the allowed range.
    pub fn validate(&self) -> Result<()> {
        let pos = |field: &str, v: u32| -> Result<()> {
            if v == 0 {
                Err(EngineError::invalid(field, format!("{field} must be at least 1, got 0")))
            } else {
                Ok(())
            }
        };
        pos("sockets", self.sockets)?;
        pos("ccds_per_socket", self.ccds_per_socket)?;
        pos("cores_per_ccd", self.cores_per_ccd)?;
        pos("threads_per_core", self.threads_per_core)?;
        if self.ccds() > MAX_CCDS {
            return Err(EngineError::invalid(
                "ccds_per_socket",
                format!("sockets x ccds_per_socket = {} exceeds the model's limit of {MAX_CCDS} CCDs", self.ccds()),
            ));
        }
        if self.cores_per_ccd > MAX_CORES_PER_CCD {
            return Err(EngineError::invalid(
                "cores_per_ccd",
                format!("cores_per_ccd = {} exceeds the limit of {MAX_CORES_PER_CCD}", self.cores_per_ccd),
            ));
        }
        if self.cpus() > MAX_CPUS {
            return Err(EngineError::invalid(
                "threads_per_core",
                format!("threads_per_core: {} logical CPUs exceed the limit of {MAX_CPUS}", self.cpus()),
            ));
        }
        if self.line_size as u64 != LINE {
            return Err(EngineError::invalid(
                "line_size",
                format!("line_size must be 64 (the only line size modelled), got {}", self.line_size),
            ));
        }
        if !(self.freq_ghz.is_finite() && self.freq_ghz > 0.0) {
            return Err(EngineError::invalid("freq_ghz", format!("freq_ghz must be positive, got {}", self.freq_ghz)));
        }
        for (field, g) in [("l1d", &self.l1d), ("l2", &self.l2), ("l3", &self.l3)] {
            g.check(field)?;
        }
        check_memory("memory", self.memory.0)?;
        for (f, v) in [("snp.core_clear_gbps", self.snp.core_clear_gbps), ("snp.socket_clear_gbps", self.snp.socket_clear_gbps)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(EngineError::invalid(f, format!("{f} must be positive, got {v}")));
            }
        }
        if !(self.snp.dram_queueing.is_finite() && (0.0..=100.0).contains(&self.snp.dram_queueing)) {
            return Err(EngineError::invalid("snp.dram_queueing", format!("snp.dram_queueing must be in 0..=100, got {}", self.snp.dram_queueing)));
        }
        if self.snp.bw_window == 0 {
            return Err(EngineError::invalid("snp.bw_window", "snp.bw_window must be positive (cycles)"));
        }
        let t = &self.tlb;
        if t.l1_entries == 0 || t.l1_entries > 1024 {
            return Err(EngineError::invalid("tlb.l1_entries", format!("tlb.l1_entries must be in 1..=1024, got {}", t.l1_entries)));
        }
        // the largest L2 TLBs shipped hold a few thousand entries (Zen 5: 4096 data entries, AMD
        // Software Optimization Guide for the Zen 5 Microarchitecture, 58455); 2^16 is generous
        if t.l2_entries > 1 << 16 {
            return Err(EngineError::invalid("tlb.l2_entries", format!("tlb.l2_entries must be at most 65536, got {}", t.l2_entries)));
        }
        if t.l2_ways == 0 || t.l2_ways > 64 || t.l2_entries % t.l2_ways != 0 || !(t.l2_entries / t.l2_ways).is_power_of_two() {
            return Err(EngineError::invalid(
                "tlb.l2_entries",
                format!("tlb: l2_entries / l2_ways must be a power-of-two number of sets and 1 <= l2_ways <= 64, got {} / {}", t.l2_entries, t.l2_ways),
            ));
        }
        let c = &self.cost;
        for (field, v) in [
            ("cost.wbinvd_walk_per_line", c.wbinvd_walk_per_line),
            ("cost.wbinvd_writeback_per_line", c.wbinvd_writeback_per_line),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(EngineError::invalid(field, format!("{field} must be a non-negative number, got {v}")));
            }
        }
        if !(c.socket_writeback_gbps.is_finite() && c.socket_writeback_gbps > 0.0) {
            return Err(EngineError::invalid(
                "cost.socket_writeback_gbps",
                format!("cost.socket_writeback_gbps must be positive, got {}", c.socket_writeback_gbps),
            ));
        }
        for (k, &v) in &self.kvm {
            if !(v.is_finite() && (0.0..=1e15).contains(&v)) {
                let field = format!("kvm.{k}");
                return Err(EngineError::invalid(&field, format!("{field} must be a number in [0, 1e15], got {v}")));
            }
        }
        Ok(())
    }
}

impl HostConfig {
    /// What the model's structures for this configuration can grow to, per field that sizes them
    /// (bytes; an upper estimate): the cache arrays (8 bytes a line slot) with the coherence
    /// directory's share (a 16-byte slot per cached line, the table up to twice that), the TLBs (about 40 bytes an
    /// entry with its keys, folds and stamps), and the per-2 MiB memory and RMP tables.
    pub fn footprint(&self, memory: u64) -> Vec<(&'static str, u64)> {
        let cores = self.cores() as u64;
        let (cpus, ccds) = (self.cpus() as u64, self.ccds() as u64);
        let lines = |g: &CacheGeom, insts: u64| g.lines().saturating_mul(insts);
        let (l1, l2, l3) = (lines(&self.l1d, cores), lines(&self.l2, cores), lines(&self.l3, ccds));
        let tlb = (self.tlb.l1_entries as u64 + self.tlb.l2_entries as u64).saturating_mul(cpus).saturating_mul(40);
        vec![
            ("l1d.size", l1.saturating_mul(8 + 32)),
            ("l2.size", l2.saturating_mul(8 + 32)),
            ("l3.size", l3.saturating_mul(8 + 32)),
            ("tlb.l2_entries", tlb),
            ("memory", (memory >> 21).saturating_mul(16)),
        ]
    }

    /// Refuse a configuration whose structures could not fit in `available` bytes (the machine's
    /// physical memory), naming the field that asks for the most: an allocation that fails
    /// aborts the process, so it must not be attempted.
    pub fn check_footprint(&self, memory: u64, available: u64) -> Result<()> {
        let parts = self.footprint(memory);
        let total = parts.iter().fold(0u64, |a, (_, b)| a.saturating_add(*b));
        if total <= available {
            return Ok(());
        }
        let (field, most) = parts.iter().copied().max_by_key(|(_, b)| *b).unwrap_or(("memory", total));
        Err(EngineError::OutOfMemory {
            arg: field.to_string(),
            msg: format!(
                "this configuration needs about {} GiB for the model ({field} alone {} GiB) but this machine has {} GiB: \
                 make {field} smaller (or use fewer cores)",
                total >> 30,
                most >> 30,
                available >> 30
            ),
        })
    }
}

/// The machine's physical memory in bytes (None where unknown).
pub fn physical_memory() -> Option<u64> {
    #[cfg(unix)]
    {
        // SAFETY: sysconf has no preconditions.
        let (pages, size) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
        if pages > 0 && size > 0 {
            return Some((pages as u64).saturating_mul(size as u64));
        }
    }
    None
}

/// Memory sizes: a whole number of 4 KiB pages, at least one page, at most [`MAX_MEMORY`].
pub fn check_memory(field: &str, bytes: u64) -> Result<()> {
    if bytes == 0 || bytes % PAGE != 0 || bytes > MAX_MEMORY {
        return Err(EngineError::invalid(
            field,
            format!("{field} must be a positive multiple of 4 KiB and at most 64 TiB, got {bytes} bytes"),
        ));
    }
    Ok(())
}

impl CacheGeom {
    pub fn lines(&self) -> u64 {
        self.size.0 / LINE
    }
    pub fn sets(&self) -> u64 {
        self.lines() / self.ways as u64
    }
    fn check(&self, field: &str) -> Result<()> {
        let size = self.size.0;
        if self.ways == 0 || self.ways > MAX_WAYS {
            return Err(EngineError::invalid(
                &format!("{field}.ways"),
                format!("{field}.ways must be in 1..={MAX_WAYS}, got {}", self.ways),
            ));
        }
        if size == 0 || size % LINE != 0 {
            return Err(EngineError::invalid(
                &format!("{field}.size"),
                format!("{field}.size must be a positive multiple of the 64-byte line, got {size} bytes"),
            ));
        }
        let lines = size / LINE;
        if (self.ways as u64) > lines {
            return Err(EngineError::invalid(
                &format!("{field}.ways"),
                format!("{field}.ways = {} is more than the {lines} lines of a {size}-byte cache", self.ways),
            ));
        }
        if lines % self.ways as u64 != 0 || !(lines / self.ways as u64).is_power_of_two() {
            return Err(EngineError::invalid(
                &format!("{field}.size"),
                format!(
                    "{field}: size / (64 x ways) must be a power-of-two number of sets, got {lines} lines / {} ways",
                    self.ways
                ),
            ));
        }
        if (lines / self.ways as u64) > (1 << 24) {
            return Err(EngineError::invalid(&format!("{field}.size"), format!("{field}: more than 2^24 sets")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("48KiB").unwrap(), 48 * 1024);
        assert_eq!(parse_size("1.5TiB").unwrap(), 1536 * (1 << 30));
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("2 GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("1GB").unwrap(), 1_000_000_000);
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("0.3B").is_err());
        // exact: no floating point (16.1 * 1000 is 16100.000000000002 in f64; 2^53 + 1 is not an f64)
        assert_eq!(parse_size("16.1KB").unwrap(), 16_100);
        assert_eq!(parse_size("9007199254740993").unwrap(), 9_007_199_254_740_993);
        assert_eq!(parse_size("0.5KiB").unwrap(), 512);
        assert_eq!(parse_size(".5KiB").unwrap(), 512);
        assert_eq!(parse_size("1_000").unwrap(), 1000);
        assert!(parse_size("-1KiB").unwrap_err().contains("negative"));
        assert!(parse_size("4611686018427387905").unwrap_err().contains("out of range"));
        assert!(parse_size("99999999999999999999999999999999999999999TiB").unwrap_err().contains("out of range"));
        assert!(parse_size("1.2.3KiB").unwrap_err().contains("not a number"));
        assert!(parse_size(".").unwrap_err().contains("not a number"));
        assert!(parse_size("").is_err());
    }

    #[test]
    fn shipped_presets_load() {
        for (name, _) in list_presets(DEFAULT_PROFILE).unwrap() {
            let c = HostConfig::preset(&name).unwrap();
            assert!(c.cpus() > 0);
        }
        let e = HostConfig::preset("epyc-9755-2s").unwrap();
        assert_eq!(e.cpus(), 512);
        assert_eq!(e.ccds(), 32);
        assert_eq!(e.l1d.sets(), 64);
        assert_eq!(e.l2.sets(), 1024);
        assert_eq!(e.l3.sets(), 32768);
        assert_eq!(e.memory.0, 1536 << 30);
    }

    #[test]
    fn bad_geometry_is_named() {
        let mut o = toml::Table::new();
        let mut l1 = toml::Table::new();
        l1.insert("ways".into(), toml::Value::Integer(0));
        o.insert("l1d".into(), toml::Value::Table(l1));
        let e = HostConfig::from_profile(DEFAULT_PROFILE, "tiny", Some(&o)).unwrap_err();
        assert!(e.to_string().contains("l1d.ways"), "{e}");
        let e = HostConfig::from_profile(DEFAULT_PROFILE, "nope", None).unwrap_err();
        assert!(e.to_string().contains("tiny"), "{e}");
        let mut o = toml::Table::new();
        o.insert("bogus".into(), toml::Value::Integer(1));
        assert!(HostConfig::from_profile(DEFAULT_PROFILE, "tiny", Some(&o)).is_err());
    }
}
