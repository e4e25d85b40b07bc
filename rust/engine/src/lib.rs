//! sevsim's engine: the hardware a KVM host's cache, TLB and RMP maintenance acts on: topology,
//! caches with key-tagged lines and coherence, memory ownership, per-CPU clocks, a cost model and
//! the oracles that catch unsafe maintenance. No policy lives here; no Python either (the PyO3
//! bindings are a separate crate), so `cargo test` needs no interpreter.

pub mod cache;
pub mod config;
pub mod context;
pub mod directmap;
pub mod directory;
pub mod error;
pub mod flush;
pub mod host;
pub mod inspect;
pub mod kflush;
pub mod membw;
pub mod memory;
pub mod nested_truth;
pub mod paging;
pub mod range;
pub mod rmp;
pub mod slotmap;
pub mod snp;
pub mod tlb;
pub mod translate;
pub mod topology;
pub mod transition;
pub mod util;
pub mod violation;

pub use config::HostConfig;
pub use error::{EngineError, Result};
pub use host::{Col, FlushOp, Host, Level};
pub use violation::{Cause, Kind, Violation};
