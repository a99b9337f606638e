//! `oknek agent enable|disable UNIT`: the systemd drop-in that puts a service under oknek.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use oknekd::config::{Config, DEFAULT_CONFIG, valid_agent_name};

use crate::cli::{CliError, Global};

/// The shipped template (dist/systemd/oknek-agent.conf); install.sh installs the same file.
const TEMPLATE: &str = include_str!("../../dist/systemd/oknek-agent.conf");
pub const DROP_IN_NAME: &str = "oknek-agent.conf";
const DEFAULT_SYSTEMD_DIR: &str = "/etc/systemd/system";
const DEFAULT_PRELOAD: &str = "/usr/local/lib/oknek/liboknek_preload.so";

const HELP: &str = "\
oknek agent — put a systemd service under oknek

Usage: oknek agent enable UNIT [--agent NAME] [--no-preload] [--preload LIB]
                          [--systemd-dir DIR] [--config FILE]
       oknek agent disable UNIT [--systemd-dir DIR]

enable writes DIR/UNIT.d/oknek-agent.conf: the unit starts after oknekd and, unless
--no-preload, carries the preload shim (LD_PRELOAD). Membership by cgroup — every process of
the unit, which none of them can shed — needs the unit under the agent in the configuration;
enable checks FILE and prints the entry to add when it is missing. Then run
`systemctl daemon-reload` and restart the unit. disable removes the drop-in.

Options:
  --agent NAME        The agent's name [default: the unit name without .service]
  --no-preload        Rely on the kernel tiers only: no LD_PRELOAD line
  --preload LIB       The shim's path [default: /usr/local/lib/oknek/liboknek_preload.so]
  --systemd-dir DIR   Where unit drop-ins go [default: /etc/systemd/system]
  --config FILE       oknekd's configuration to check [default: /etc/oknek/oknek.yaml]

Example:
  $ sudo oknek agent enable aider.service --agent aider
  $ sudo systemctl daemon-reload && sudo systemctl restart aider.service
";

pub fn main(parser: &mut lexopt::Parser, _global: &Global) -> Result<ExitCode, CliError> {
    use lexopt::prelude::*;
    let mut action: Option<String> = None;
    let mut unit: Option<String> = None;
    let mut agent: Option<String> = None;
    let mut preload: Option<String> = Some(DEFAULT_PRELOAD.to_owned());
    let mut systemd_dir = PathBuf::from(DEFAULT_SYSTEMD_DIR);
    let mut config = PathBuf::from(DEFAULT_CONFIG);
    while let Some(arg) = parser.next()? {
        match arg {
            Long("agent") => agent = Some(parser.value()?.string()?),
            Long("no-preload") => preload = None,
            Long("preload") => preload = Some(parser.value()?.string()?),
            Long("systemd-dir") => systemd_dir = parser.value()?.into(),
            Long("config") => config = parser.value()?.into(),
            Short('h') | Long("help") => {
                print!("{HELP}");
                return Ok(ExitCode::SUCCESS);
            }
            Value(v) if action.is_none() => action = Some(v.string()?),
            Value(v) if unit.is_none() => unit = Some(v.string()?),
            _ => return Err(arg.unexpected().into()),
        }
    }
    let action = action.ok_or_else(|| CliError::usage("agent needs enable or disable"))?;
    let unit = unit_name(&unit.ok_or_else(|| CliError::usage("agent needs a UNIT"))?)?;
    let drop_in = systemd_dir.join(format!("{unit}.d")).join(DROP_IN_NAME);
    match action.as_str() {
        "enable" => {
            let agent =
                agent.unwrap_or_else(|| unit.strip_suffix(".service").unwrap_or(&unit).to_owned());
            if !valid_agent_name(&agent) {
                return Err(CliError::usage(format!(
                    "{agent:?} is not a valid agent name (letters, digits, - _ ., at most 64)"
                )));
            }
            if let Some(lib) = &preload
                && (!lib.starts_with('/') || lib.contains(char::is_whitespace))
            {
                return Err(CliError::usage(
                    "--preload needs an absolute path without spaces",
                ));
            }
            write_drop_in(&drop_in, &render(&unit, &agent, preload.as_deref()))?;
            println!("wrote {}", drop_in.display());
            check_config(&config, &unit, &agent);
            println!("next: systemctl daemon-reload && systemctl restart {unit}");
            Ok(ExitCode::SUCCESS)
        }
        "disable" => {
            match fs::remove_file(&drop_in) {
                Ok(()) => println!("removed {}", drop_in.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    println!("{} was not there", drop_in.display());
                }
                Err(e) => {
                    return Err(CliError::failed(format!(
                        "cannot remove {}: {e}",
                        drop_in.display()
                    )));
                }
            }
            if let Some(dir) = drop_in.parent() {
                // Only removes the directory when nothing else is in it.
                let _ = fs::remove_dir(dir);
            }
            println!("next: systemctl daemon-reload && systemctl restart {unit}");
            Ok(ExitCode::SUCCESS)
        }
        other => Err(CliError::usage(format!(
            "unknown agent action {other:?}: enable or disable"
        ))),
    }
}

/// A unit name as systemd spells it; a bare name gets `.service`.
fn unit_name(raw: &str) -> Result<String, CliError> {
    let ok = !raw.is_empty()
        && raw.len() <= 255
        && raw.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'.' | b'@' | b'-' | b'\\')
        })
        && !raw.starts_with('.');
    if !ok {
        return Err(CliError::usage(format!(
            "{raw:?} is not a systemd unit name"
        )));
    }
    Ok(if raw.contains('.') {
        raw.to_owned()
    } else {
        format!("{raw}.service")
    })
}

fn render(unit: &str, agent: &str, preload: Option<&str>) -> String {
    let text = TEMPLATE.replace("@UNIT@", unit).replace("@AGENT@", agent);
    match preload {
        Some(lib) => text.replace("@PRELOAD@", lib),
        None => text
            .lines()
            .filter(|l| !l.contains("@PRELOAD@") && !l.starts_with("# The preload shim"))
            .map(|l| format!("{l}\n"))
            .collect(),
    }
}

fn write_drop_in(path: &Path, text: &str) -> Result<(), CliError> {
    let dir = path.parent().expect("drop-in has a directory");
    fs::create_dir_all(dir)
        .map_err(|e| CliError::failed(format!("cannot create {}: {e}", dir.display())))?;
    // Written beside and renamed, so systemd never reads half a file.
    let tmp = dir.join(format!(".{DROP_IN_NAME}.tmp"));
    let mut f = fs::File::create(&tmp)
        .map_err(|e| CliError::failed(format!("cannot write {}: {e}", tmp.display())))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| CliError::failed(format!("cannot write {}: {e}", tmp.display())))?;
    fs::rename(&tmp, path)
        .map_err(|e| CliError::failed(format!("cannot write {}: {e}", path.display())))
}

/// Tells the user when the configuration does not yet select the unit as that agent.
fn check_config(path: &Path, unit: &str, agent: &str) {
    let declared = match Config::load(path, false) {
        Ok(config) => config
            .agents
            .iter()
            .any(|a| a.name == agent && a.unit.iter().any(|u| u == unit)),
        Err(e) => {
            println!("note: cannot check {}: {e}", path.display());
            false
        }
    };
    if !declared {
        println!(
            "note: {} does not list {unit} under agent {agent}; for cgroup membership add\n\
             \x20 agents:\n\
             \x20   - name: {agent}\n\
             \x20     unit: [{unit}]\n\
             and run `systemctl reload oknekd`",
            path.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_placeholders_are_all_filled() {
        let with = render(
            "aider.service",
            "aider",
            Some("/usr/local/lib/oknek/liboknek_preload.so"),
        );
        assert!(!with.contains('@'), "{with}");
        assert!(with.contains("Environment=LD_PRELOAD=/usr/local/lib/oknek/liboknek_preload.so"));
        assert!(with.contains("After=oknekd.service"));
        let without = render("aider.service", "aider", None);
        assert!(!without.contains("LD_PRELOAD"), "{without}");
        assert!(without.contains("Wants=oknekd.service"));
    }

    #[test]
    fn unit_names() {
        assert_eq!(unit_name("aider").unwrap(), "aider.service");
        assert_eq!(unit_name("agent@1.service").unwrap(), "agent@1.service");
        assert!(unit_name("../x").is_err());
        assert!(unit_name("a b").is_err());
    }
}
