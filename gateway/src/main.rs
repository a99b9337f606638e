//! `oknek-gateway`: the model gateway. Agents use it as their provider base URL; it asks oknekd
//! to authorise every request, forwards allowed ones to the provider (TLS for cloud APIs) and
//! answers refused ones in the provider's own error format.
//!
//! It runs as its own process, not inside oknekd: HTTP parsing, TLS and slow upstream streams
//! stay out of the enforcement daemon, whose one thread must never wait on the network. The
//! daemon keeps the decisions and the evidence; the gateway carries verdicts out.

mod api;
mod authz;
mod config;
mod http;
mod peer;
// One definition of providers and name resolution, shared with the daemon.
#[path = "../../oknekd/src/providers.rs"]
#[allow(dead_code)]
mod providers;
mod server;
mod upstream;
mod usage;

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "\
usage: oknek-gateway [--config FILE] [--listen ADDR]... [--control-socket PATH]

  --config FILE          oknek configuration with `providers:` and `gateway:` (default /etc/oknek/oknek.yaml)
  --listen ADDR          a unix socket path or loopback ip:port; replaces gateway.listen
  --control-socket PATH  oknekd's control socket (default <paths.runtime_dir>/control.sock)
  --check                validate the configuration and exit

Point an SDK at http://ADDR/<provider>/… (e.g. base_url=\"http://127.0.0.1:8088/openai/v1\").
";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("oknek-gateway: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    use lexopt::prelude::*;
    let mut config_path = PathBuf::from(config::DEFAULT_CONFIG);
    let mut listen = Vec::new();
    let mut control = None;
    let mut check = false;
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Long("config") => config_path = parser.value().map_err(|e| e.to_string())?.into(),
            Long("listen") => listen.push(
                parser
                    .value()
                    .map_err(|e| e.to_string())?
                    .string()
                    .map_err(|e| e.to_string())?,
            ),
            Long("control-socket") => {
                control = Some(PathBuf::from(parser.value().map_err(|e| e.to_string())?));
            }
            Long("check") => check = true,
            Short('h') | Long("help") => {
                print!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("{}\n{USAGE}", other.unexpected())),
        }
    }
    let mut cfg = config::Config::load(&config_path).map_err(|e| e.to_string())?;
    if !listen.is_empty() {
        cfg.listen = listen
            .iter()
            .map(|l| config::Listen::parse(l))
            .collect::<Result<_, _>>()?;
    }
    if let Some(c) = control {
        cfg.control_socket = c;
    }
    if check {
        println!(
            "{}: {} provider(s), listening on {} address(es)",
            config_path.display(),
            cfg.providers.iter().count(),
            cfg.listen.len()
        );
        return Ok(());
    }
    server::serve(cfg).map_err(|e| e.to_string())
}
