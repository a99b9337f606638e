//! `oknek rules …` and `oknek simulate`.

use std::process::ExitCode;

use crate::cli::{CliError, Global};

pub fn rules(_parser: &mut lexopt::Parser, _global: &Global) -> Result<ExitCode, CliError> {
    Err(CliError::failed("rules: not built yet"))
}

pub fn simulate(_parser: &mut lexopt::Parser, _global: &Global) -> Result<ExitCode, CliError> {
    Err(CliError::failed("simulate: not built yet"))
}
