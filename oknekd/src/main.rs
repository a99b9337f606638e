//! `oknekd`: the oknek daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use oknekd::config::{Config, DEFAULT_CONFIG};
use oknekd::daemon::{self, Overrides};
use oknekd::log::{self, Level};

const USAGE: &str = "\
oknekd — the oknek daemon: judges every action of AI agents on this host before it happens

Usage: oknekd [options]

Options:
  --config FILE        Configuration file [default: /etc/oknek/oknek.yaml; missing = defaults]
  --rules-dir DIR      Rules directory [default: from config, /var/lib/oknek/rules/active]
  --state-dir DIR      Evidence and key directory [default: from config, /var/lib/oknek]
  --runtime-dir DIR    Sockets directory [default: from config, /run/oknek]
  --bpf-pin-dir DIR    Where the eBPF probes are pinned [default: from config, /sys/fs/bpf/oknek]
  --check              Load the config and rules, print a summary and exit (exit 1 on errors)
  --uninstall-probes   Detach and unpin the eBPF probes, then exit. While pinned they keep
                       enforcing the last rules even with the daemon stopped; this ends that
  -v, --verbose        Log debug messages
  -h, --help           Show this help
  -V, --version        Show the version

A demo in a temporary directory, as root:
  oknekd --rules-dir rules --state-dir /tmp/ok/state --runtime-dir /tmp/ok/run &
  oknek --runtime-dir /tmp/ok/run status

Signals: SIGHUP reloads the rules (a broken rule set is rejected and the old one stays active);
SIGTERM and SIGINT stop after flushing evidence; pinned eBPF probes stay and keep
enforcing, and the next start adopts them (events they kept in the ring buffer are recorded). Under systemd (Type=notify) readiness is
announced only once every hook is armed; WATCHDOG=1 is sent when WatchdogSec is set.
";

struct Args {
    config: Option<PathBuf>,
    overrides: Overrides,
    check: bool,
    uninstall_probes: bool,
}

fn parse_args() -> Result<Option<Args>, lexopt::Error> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_env();
    let mut args = Args {
        config: None,
        overrides: Overrides::default(),
        check: false,
        uninstall_probes: false,
    };
    while let Some(arg) = parser.next()? {
        match arg {
            Long("config") => args.config = Some(parser.value()?.into()),
            Long("rules-dir") => args.overrides.rules_dir = Some(parser.value()?.into()),
            Long("state-dir") => args.overrides.state_dir = Some(parser.value()?.into()),
            Long("runtime-dir") => args.overrides.runtime_dir = Some(parser.value()?.into()),
            Long("bpf-pin-dir") => args.overrides.bpf_pin_dir = Some(parser.value()?.into()),
            Long("check") => args.check = true,
            Long("uninstall-probes") => args.uninstall_probes = true,
            Short('v') | Long("verbose") => log::set_max_level(Level::Debug),
            Short('h') | Long("help") => {
                print!("{USAGE}");
                return Ok(None);
            }
            Short('V') | Long("version") => {
                println!("oknekd {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(Some(args))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("oknekd: {e} (see --help)");
            return ExitCode::from(2);
        }
    };
    let explicit = args.config.is_some();
    let config_path = args.config.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    let mut config = match Config::load(&config_path, explicit) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("<3>oknekd: {e}");
            return ExitCode::from(1);
        }
    };
    args.overrides.apply(&mut config);
    if args.uninstall_probes {
        let dir = &config.paths.bpf_pin_dir;
        return match oknek_bpf::Probes::uninstall(dir) {
            Ok(()) => {
                println!("oknekd: eBPF probes under {} removed", dir.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!(
                    "oknekd: removing the eBPF probes under {}: {e}",
                    dir.display()
                );
                ExitCode::from(1)
            }
        };
    }
    if args.check {
        return match oknekd::judge::check(&config) {
            Ok(summary) => {
                println!("ok: {summary}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("oknekd: {e}");
                ExitCode::from(1)
            }
        };
    }
    match daemon::serve(config, config_path, args.overrides) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("<3>oknekd: {e}");
            ExitCode::from(1)
        }
    }
}
