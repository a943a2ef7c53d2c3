//! Errors and the exit codes they map to (documented in the README and `--help`).
use thiserror::Error;

/// Exit status for a usage error (clap's convention).
pub const EXIT_USAGE: i32 = 2;
/// The program cannot be packed (bad input, unsupported kind of program).
pub const EXIT_UNPACKABLE: i32 = 3;
/// Capture failed: the program died, could not be loaded, or timed out.
pub const EXIT_CAPTURE: i32 = 4;
/// Anything else (I/O errors writing the output, ...).
pub const EXIT_OTHER: i32 = 1;

#[derive(Debug, Error)]
pub enum Error {
    #[error("{0}")]
    Unpackable(String),
    #[error("{0}")]
    Capture(String),
    #[error("{0}")]
    Other(String),
    /// Writing OUTPUT failed (the pipeline names the file).
    #[error("writing the output: {0}")]
    Write(std::io::Error),
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Unpackable(_) => EXIT_UNPACKABLE,
            Error::Capture(_) => EXIT_CAPTURE,
            Error::Other(_) | Error::Write(_) => EXIT_OTHER,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// `Error::Unpackable` from a format string.
macro_rules! unpackable {
    ($($t:tt)*) => { $crate::error::Error::Unpackable(format!($($t)*)) };
}
/// `Error::Capture` from a format string.
macro_rules! capture_err {
    ($($t:tt)*) => { $crate::error::Error::Capture(format!($($t)*)) };
}
/// `Error::Other` from a format string.
macro_rules! other {
    ($($t:tt)*) => { $crate::error::Error::Other(format!($($t)*)) };
}
pub(crate) use {capture_err, other, unpackable};
