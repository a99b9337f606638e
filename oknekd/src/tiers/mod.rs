//! Enforcement tiers: each is a mechanism that turns a kernel hook into permission requests and
//! answers them. None of them knows the rule engine; the daemon builds events from their
//! requests and decides.

pub mod ebpf;
pub mod fanotify;
pub mod seccomp;
