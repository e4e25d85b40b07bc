//! Errors for API misuse. Modelled instructions never return these: they report failures the way
//! the hardware does (return codes, recorded faults).

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineError {
    /// An argument is out of range or malformed; `arg` names it, `msg` says what is allowed.
    Invalid { arg: String, msg: String },
    /// The configuration is valid but the model would need more memory than this machine has;
    /// `arg` names the field that asks for the most.
    OutOfMemory { arg: String, msg: String },
}

impl EngineError {
    pub fn invalid(arg: &str, msg: impl Into<String>) -> Self {
        EngineError::Invalid { arg: arg.to_string(), msg: msg.into() }
    }
    pub fn arg(&self) -> &str {
        match self {
            EngineError::Invalid { arg, .. } | EngineError::OutOfMemory { arg, .. } => arg,
        }
    }
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::Invalid { msg, .. } | EngineError::OutOfMemory { msg, .. } => f.write_str(msg),
        }
    }
}

impl std::error::Error for EngineError {}

pub type Result<T> = std::result::Result<T, EngineError>;
