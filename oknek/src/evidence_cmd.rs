//! `oknek keygen`, `oknek key show`, `oknek verify`, `oknek events`.

use std::process::ExitCode;

use crate::cli::{CliError, Global};

pub fn main(
    cmd: &str,
    _parser: &mut lexopt::Parser,
    _global: &Global,
) -> Result<ExitCode, CliError> {
    Err(CliError::failed(format!("{cmd}: not built yet")))
}
