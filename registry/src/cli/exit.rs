//! Exit codes, and the failures that map to them.

use std::fmt;

/// Everything went as asked.
pub const OK: u8 = 0;
/// Something failed while running (e.g. the wrapped program never became ready).
pub const RUNTIME: u8 = 1;
/// The command line was wrong, or etcd could not be reached (clap uses 2 too).
pub const USAGE: u8 = 2;

/// What a subcommand returns: the exit code to use, or why it failed.
pub type Outcome = Result<u8, Failure>;

/// A failure, printed once by `main` as `error: ...`.
#[derive(Debug)]
pub enum Failure {
    /// Bad input or etcd unreachable: exit code [`USAGE`].
    Usage(anyhow::Error),
    /// Failed while running: exit code [`RUNTIME`].
    Runtime(anyhow::Error),
}

impl Failure {
    pub fn code(&self) -> u8 {
        match self {
            Failure::Usage(_) => USAGE,
            Failure::Runtime(_) => RUNTIME,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // `{:#}` prints the whole context chain on one line.
            Failure::Usage(e) | Failure::Runtime(e) => write!(f, "{e:#}"),
        }
    }
}

/// `?` on an `anyhow` result inside a subcommand is a runtime failure;
/// usage failures are always built explicitly.
impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure::Runtime(error)
    }
}
