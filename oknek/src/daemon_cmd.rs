//! Commands that talk to a running oknekd over its control socket: status, reload, allow, block,
//! unblock, agents, doctor.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

use oknekd::control::{Request, Response};
use serde_json::Value as Json;

use crate::cli::{CliError, Global};

const HELP: &str = "\
Daemon commands (they talk to oknekd over <runtime-dir>/control.sock; root or the control group):

  oknek status               Tiers armed, agents, rule-set digest, counters
  oknek reload               Reload rules and config (a broken set is rejected; the old one stays)
  oknek agents               Declared agents and processes launched with `oknek run`
  oknek doctor               What this kernel offers per action kind, and which tier is used
  oknek allow PID            Release an agent process held by a `hold: true` rule (SIGCONT)
  oknek block PID            Kill a held agent's process tree and block that agent until cleared
  oknek unblock AGENT        Clear a permanent block

Options:
  --json                     Print the daemon's answer as JSON
  -h, --help                 Show this help

Example:
  sudo oknek --runtime-dir /tmp/ok/run status
";

pub fn main(cmd: &str, parser: &mut lexopt::Parser, global: &Global) -> Result<ExitCode, CliError> {
    use lexopt::prelude::*;
    let mut json = false;
    let mut operand: Option<String> = None;
    while let Some(arg) = parser.next()? {
        match arg {
            Long("json") => json = true,
            Short('h') | Long("help") => {
                print!("{HELP}");
                return Ok(ExitCode::SUCCESS);
            }
            Value(v) if operand.is_none() && matches!(cmd, "allow" | "block" | "unblock") => {
                operand = Some(v.string()?);
            }
            _ => return Err(arg.unexpected().into()),
        }
    }
    let pid = |what: &str| -> Result<u32, CliError> {
        operand
            .as_deref()
            .ok_or_else(|| {
                CliError::usage(format!("{what} needs a PID (see oknek {what} --help)"))
            })?
            .parse()
            .map_err(|_| CliError::usage(format!("{what}: PID must be a positive number")))
    };
    let request = match cmd {
        "status" => Request::Status {},
        "reload" => Request::Reload {},
        "agents" => Request::Agents {},
        "doctor" => Request::Doctor {},
        "allow" => Request::Allow { pid: pid("allow")? },
        "block" => Request::Block { pid: pid("block")? },
        "unblock" => Request::Unblock {
            agent: operand.ok_or_else(|| CliError::usage("unblock needs an AGENT name"))?,
        },
        other => return Err(CliError::usage(format!("unknown daemon command {other:?}"))),
    };
    let response = match ask(global, &request) {
        Ok(r) => r,
        Err(e) if cmd == "doctor" => {
            eprintln!("oknek: {e}\noknek: showing what this kernel offers without the daemon:\n");
            let facts = oknekd::kernel::probe(&std::env::temp_dir());
            let table = oknekd::judge::doctor_table(&facts, None, None);
            print_value(cmd, &table, json);
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e),
    };
    if !response.ok {
        return Err(CliError::failed(
            response
                .error
                .unwrap_or_else(|| "the daemon refused".to_owned()),
        ));
    }
    print_value(cmd, &response.result.unwrap_or(Json::Null), json);
    Ok(ExitCode::SUCCESS)
}

/// Sends one request and reads the answer.
pub fn ask(global: &Global, request: &Request) -> Result<Response, CliError> {
    let path = global.runtime_dir.join("control.sock");
    let mut stream = UnixStream::connect(&path).map_err(|e| {
        CliError::failed(format!(
            "cannot reach oknekd at {}: {e} (is it running? is --runtime-dir right? root or the control group only)",
            path.display()
        ))
    })?;
    let timeout = Some(Duration::from_secs(10));
    let _ = stream.set_read_timeout(timeout);
    let _ = stream.set_write_timeout(timeout);
    let mut line = serde_json::to_vec(request).map_err(CliError::failed)?;
    line.push(b'\n');
    stream.write_all(&line).map_err(CliError::failed)?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(|e| CliError::failed(format!("no answer from oknekd: {e}")))?;
    if answer.is_empty() {
        return Err(CliError::failed(
            "oknekd closed the connection without answering (not root or the control group?)",
        ));
    }
    serde_json::from_str(&answer)
        .map_err(|e| CliError::failed(format!("bad answer from oknekd: {e}")))
}

fn print_value(cmd: &str, value: &Json, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
        return;
    }
    match (cmd, value) {
        ("doctor", Json::Object(map)) => print_doctor(map),
        (_, Json::Object(map)) => {
            for (k, v) in map {
                match v {
                    Json::String(s) => println!("{k}: {s}"),
                    Json::Array(items) => {
                        println!("{k}:");
                        for item in items {
                            println!("  {}", one_line(item));
                        }
                    }
                    other => println!("{k}: {}", one_line(other)),
                }
            }
        }
        (_, other) => println!("{}", one_line(other)),
    }
}

fn one_line(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        Json::Object(map) => map
            .iter()
            .map(|(k, v)| format!("{k}={}", one_line(v)))
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}

fn print_doctor(map: &serde_json::Map<String, Json>) {
    if let Some(release) = map.get("kernel").and_then(Json::as_str) {
        println!("kernel {release}\n");
    }
    if let Some(Json::Array(facilities)) = map.get("facilities") {
        println!("{:<28} {:<5} detail", "mechanism", "ok");
        for f in facilities {
            println!(
                "{:<28} {:<5} {}",
                f["name"].as_str().unwrap_or("?"),
                if f["available"].as_bool().unwrap_or(false) {
                    "yes"
                } else {
                    "no"
                },
                f["detail"].as_str().unwrap_or("")
            );
        }
        println!();
    }
    if let Some(Json::Array(rows)) = map.get("tiers") {
        println!("{:<10} {:<31} why", "action", "tier");
        for r in rows {
            println!(
                "{:<10} {:<31} {}",
                r["action"].as_str().unwrap_or("?"),
                r["tier"].as_str().unwrap_or("?"),
                r["why"].as_str().unwrap_or("")
            );
        }
    }
    if let Some(Json::Array(rules)) = map.get("userspace_rules")
        && !rules.is_empty()
    {
        println!("\nblock rules (or parts) the kernel maps cannot hold, decided in userspace:");
        for r in rules {
            println!(
                "  {:<24} {}",
                r["rule"].as_str().unwrap_or("?"),
                r["why"].as_str().unwrap_or("")
            );
        }
    }
}
