//! `oknek`: the command-line interface to oknek.
//!
//! Offline commands (rules, simulate, keys, verify, events) work on files; daemon commands talk to
//! oknekd over its control socket in the runtime directory.

mod agent_cmd;
mod blake2b;
mod cli;
mod daemon_cmd;
mod evidence_cmd;
mod minisign;
mod release_cmd;
mod rules_cmd;
mod run_cmd;
mod sandbox;
mod update_cmd;

use std::process::ExitCode;

use cli::{CliError, Global};

const USAGE: &str = "\
oknek — the security line for AI agents on this host

Usage: oknek [--runtime-dir DIR] <command> [options]

Rules:
  rules check [DIR]        Lint a rule set; exit 1 with file:line:column messages
  rules test [DIR]         Run the rule set's fixtures and print a pass/fail table
  rules list [DIR]         List rules by kind, action and kernel-enforceability
  simulate                 Replay recorded events through the rules (see simulate --help)

Evidence:
  keygen                   Create this host's Ed25519 evidence key
  key show                 Print the public key and its fingerprint
  verify                   Check signatures, the hash chain and the signed head
  events                   Query recorded evidence bundles (--json, --follow)

Agents:
  run [--agent NAME] -- CMD  Launch CMD as an agent under seccomp + Landlock, judged by oknekd
  agent enable UNIT        Put a systemd service under oknek (writes a drop-in)
  agent disable UNIT       Remove that drop-in

Daemon (over <runtime-dir>/control.sock; root or the control group):
  status                   Tiers armed, agents, rule-set digest, counters
  reload                   Reload rules and config; a broken set is rejected, the old one stays
  agents                   Declared agents and launched agent trees
  doctor                   What this kernel offers per action kind, and which tier is used
  allow PID | block PID    Release or kill an agent process held by a `hold: true` rule
  unblock AGENT            Clear a permanent block of an agent

Releases and rule packs:
  update (URL|FILE)        Verify, lint and atomically activate a signed rule pack; reload
  update --rollback        Swap the previous rule pack back in
  sign --key KEY FILE...   Sign files (minisign format)
  verify-release DIR|FILE  Check a release's signatures against the pinned release key

Global options:
  --runtime-dir DIR        Where oknekd's sockets live [default: /run/oknek]
  -h, --help               Show help (also after any command: oknek rules --help)
  -V, --version            Show the version

Run `oknek <command> --help` for a command's options.
";

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(err) => err.report(),
    }
}

fn run() -> Result<ExitCode, CliError> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_env();
    let mut global = Global::default();
    loop {
        match parser.next()? {
            Some(Long("runtime-dir")) => global.runtime_dir = parser.value()?.into(),
            Some(Short('h') | Long("help")) => {
                print!("{USAGE}");
                return Ok(ExitCode::SUCCESS);
            }
            Some(Short('V') | Long("version")) => {
                println!("oknek {}", env!("CARGO_PKG_VERSION"));
                return Ok(ExitCode::SUCCESS);
            }
            Some(Value(cmd)) => {
                let cmd = cmd.string()?;
                return match cmd.as_str() {
                    "rules" => rules_cmd::rules(&mut parser, &global),
                    "simulate" => rules_cmd::simulate(&mut parser, &global),
                    "run" => run_cmd::run(&mut parser, &global),
                    "status" | "reload" | "agents" | "doctor" | "allow" | "block" | "unblock" => {
                        daemon_cmd::main(&cmd, &mut parser, &global)
                    }
                    "agent" => agent_cmd::main(&mut parser, &global),
                    "update" => update_cmd::main(&mut parser, &global),
                    "sign" => release_cmd::sign_cmd(&mut parser, &global),
                    "verify-release" => release_cmd::verify_release_cmd(&mut parser, &global),
                    "keygen" | "key" | "verify" | "events" => {
                        evidence_cmd::main(&cmd, &mut parser, &global)
                    }
                    other => Err(CliError::usage(format!(
                        "unknown command {other:?}; run `oknek --help` for the list"
                    ))),
                };
            }
            Some(arg) => return Err(arg.unexpected().into()),
            None => {
                eprint!("{USAGE}");
                return Err(CliError::usage("a command is required"));
            }
        }
    }
}
