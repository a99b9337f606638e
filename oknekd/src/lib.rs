//! oknekd, the oknek daemon: hooks, rules and evidence meet here.
//!
//! One thread runs one `mio` loop ([`daemon`]) over every event source: the hook socket (preload
//! shim and `oknek run`), the control socket (the CLI), fanotify, seccomp listeners, a signalfd,
//! an inotify watch on the rules directory and a timerfd.

pub mod agents;
pub mod alert;
pub mod closer;
pub mod config;
pub mod control;
pub mod daemon;
pub mod expand;
pub mod filehash;
pub mod hook;
pub mod judge;
pub mod kernel;
pub mod log;
pub mod models;
pub mod plaintext;
pub mod plan;
pub mod procinfo;
pub mod providers;
pub mod sys;
pub mod tiers;
pub mod usage;
pub mod weights;
