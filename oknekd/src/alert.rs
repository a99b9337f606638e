//! Alerts: what happens, besides evidence, when a warn or block rule fires.
//!
//! The loop must never wait on an alert, so a sink only queues. Today the one sink logs to the
//! journal; webhook delivery (Slack, PagerDuty, a generic URL) will be a sink that hands alerts
//! to one bounded worker thread, with the same interface.

use oknek_event::{Event, Verdict};

use crate::notice;

/// One alert: a warn or block decision, with what an on-call engineer needs first.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Alert<'a> {
    pub verdict: Verdict,
    pub rule_id: &'a str,
    pub title: &'a str,
    pub severity: &'a str,
    pub agent: Option<&'a str>,
    pub pid: u32,
    pub uid: u32,
    pub kind: &'a str,
    /// The evidence bundle's sequence number, when it was written.
    pub seq: Option<u64>,
    #[serde(skip)]
    pub event: &'a Event,
}

/// Where alerts go. Implementations must not block.
pub trait AlertSink {
    fn alert(&mut self, alert: &Alert<'_>);
}

/// Writes alerts to the log (the journal under systemd), one line each.
#[derive(Debug, Default)]
pub struct LogAlerts;

impl AlertSink for LogAlerts {
    fn alert(&mut self, a: &Alert<'_>) {
        notice!(
            "oknekd: {}: rule {} ({}, {}) agent {} pid {} uid {} {}{}",
            a.verdict,
            a.rule_id,
            a.title,
            a.severity,
            a.agent.unwrap_or("-"),
            a.pid,
            a.uid,
            a.kind,
            a.seq
                .map_or_else(String::new, |s| format!(" evidence seq {s}"))
        );
    }
}
