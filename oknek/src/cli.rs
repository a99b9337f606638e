//! What every command shares: global options and how failures reach the user.

use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;

/// Options given before the command.
#[derive(Debug, Clone)]
pub struct Global {
    pub runtime_dir: PathBuf,
}

impl Default for Global {
    fn default() -> Global {
        Global {
            runtime_dir: PathBuf::from("/run/oknek"),
        }
    }
}

/// A command that could not do its job. Usage errors exit 2, failures exit 1.
#[derive(Debug)]
pub enum CliError {
    Usage(String),
    Failed(String),
}

impl CliError {
    pub fn usage(msg: impl Into<String>) -> CliError {
        CliError::Usage(msg.into())
    }

    pub fn failed(msg: impl fmt::Display) -> CliError {
        CliError::Failed(msg.to_string())
    }

    pub fn report(self) -> ExitCode {
        match self {
            CliError::Usage(msg) => {
                eprintln!("oknek: {msg}");
                ExitCode::from(2)
            }
            CliError::Failed(msg) => {
                eprintln!("oknek: error: {msg}");
                ExitCode::from(1)
            }
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(msg) | CliError::Failed(msg) => f.write_str(msg),
        }
    }
}

impl From<lexopt::Error> for CliError {
    fn from(err: lexopt::Error) -> CliError {
        CliError::Usage(format!("{err} (see --help)"))
    }
}
