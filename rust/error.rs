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
    /// A numerical routine could not produce a trustworthy answer.
    Numerical(String),
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
        }
    }
}

impl std::error::Error for Error {}

pub(crate) fn invalid<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error::InvalidInput(msg.into()))
}
