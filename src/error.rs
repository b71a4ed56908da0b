//! The crate's error type: every failure names the file or value it is about.

use std::path::{Path, PathBuf};

/// Errors of the `fml` library. Bad input is reported with the file and the field or problem,
/// never with a panic.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system error while reading or writing `path`.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The contents of `path` are malformed: `what` says which field and how.
    #[error("{}: {what}", path.display())]
    Format { path: PathBuf, what: String },
    /// An argument, configuration value or in-memory input is invalid.
    #[error("{0}")]
    Invalid(String),
    /// A loss, gradient or parameter became NaN or infinite.
    #[error("non-finite value: {0}")]
    NonFinite(String),
    /// An error from the tensor library.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().to_path_buf(), source }
    }

    /// A malformed-content error on `path`.
    pub fn format(path: impl AsRef<Path>, what: impl Into<String>) -> Self {
        Error::Format { path: path.as_ref().to_path_buf(), what: what.into() }
    }

    /// An invalid argument or value.
    pub fn invalid(what: impl Into<String>) -> Self {
        Error::Invalid(what.into())
    }
}
