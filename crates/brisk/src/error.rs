//! The library's error type.
//!
//! Every variant names what the user has to look at (a file, a config key, a
//! value) so that the CLI can print it as it is. [`Error::is_usage`] separates
//! usage mistakes (exit code 2) from runtime failures (exit code 1).

use std::path::{Path, PathBuf};

/// Result alias used throughout brisk.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config key, value or preset that cannot be used.
    #[error("config error: {0}")]
    Config(String),

    /// A command-line or run-directory mistake (for example an existing run
    /// directory without `--force`).
    #[error("{0}")]
    Usage(String),

    /// A file could not be read or written. The I/O error is part of the
    /// message, not a `source`, so that a printed error chain says it once.
    #[error("{}: {error}{}", path.display(), full_disk_hint(error))]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },

    /// Input data that brisk cannot use, with the file and, where it applies,
    /// the byte offset.
    #[error("{path}: {message}")]
    Data { path: PathBuf, message: String },

    /// A tensor operation failed (shapes, dtypes, devices).
    #[error("tensor: {0}")]
    Tensor(String),

    /// Training went wrong (for example the loss became NaN); the message
    /// says where the last good checkpoint is.
    #[error("{0}")]
    Training(String),

    /// The tokenizer library reported a failure.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

/// What to do when a write failed for want of space: the OS's words ("No
/// space left on device") do not say that nothing was lost.
fn full_disk_hint(error: &std::io::Error) -> &'static str {
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    match error.raw_os_error() {
        Some(ENOSPC) => {
            " (the file system holding it is full: free space, then run the command again)"
        }
        Some(EDQUOT) => " (the disk quota is used up: free space, then run the command again)",
        _ => "",
    }
}

impl Error {
    /// True when the error is the user's input to fix (exit code 2).
    pub fn is_usage(&self) -> bool {
        matches!(self, Error::Config(_) | Error::Usage(_))
    }

    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            error: source,
        }
    }

    pub fn data(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Error::Data {
            path: path.as_ref().to_path_buf(),
            message: message.into(),
        }
    }
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Tensor(e.to_string())
    }
}

impl From<tokenizers::Error> for Error {
    fn from(e: tokenizers::Error) -> Self {
        Error::Tokenizer(e.to_string())
    }
}
