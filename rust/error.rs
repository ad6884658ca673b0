use std::fmt;

/// Everything the engine can fail with. The Python bindings map each variant to one
/// Python exception type, so the variant, not the message, decides what a caller can catch.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// The caller passed something malformed; the message says what to fix.
    InvalidInput(String),
    /// Enumeration stopped because the number of regions exceeded the caller's limit.
    RegionLimit { limit: usize },
    /// The computation was cancelled (Ctrl-C from Python).
    Interrupted,
    /// A numerical routine could not produce a trustworthy answer (a NaN or infinity where a
    /// number belongs, say); the message says where.
    Numerical(String),
    /// The work would need more memory than the process can get: `bytes` for `what`.
    Memory { bytes: u128, what: String },
    /// A bug: an invariant of the engine failed (a caught panic, with its context).
    Internal(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidInput(msg) => write!(f, "{msg}"),
            Error::RegionLimit { limit } => write!(
                f,
                "the decoder has more than max_regions={limit} linear regions; \
                 pass a larger max_regions (memory grows linearly with it) or use a smaller network"
            ),
            Error::Interrupted => write!(f, "interrupted"),
            Error::Numerical(msg) => write!(f, "numerical failure: {msg}"),
            Error::Memory { bytes, what } => {
                write!(f, "not enough memory: {what} needs {} ({bytes} bytes)", human_bytes(*bytes))?;
                if let Some(available) = crate::memory::available_bytes() {
                    write!(f, ", and about {} is available", human_bytes(available as u128))?;
                }
                write!(
                    f,
                    "; ask for less at a time (fewer points or samples per call, a smaller max_regions or network)"
                )
            }
            Error::Internal(msg) => write!(f, "internal error in exactem's engine (please report it): {msg}"),
        }
    }
}

fn human_bytes(bytes: u128) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

impl std::error::Error for Error {}

pub(crate) fn invalid<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error::InvalidInput(msg.into()))
}
