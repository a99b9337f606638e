//! oknek's rule engine.
//!
//! A rule set is a directory of YAML files in the rule language of `rules/README.md`. Loading it
//! validates everything (each problem reported as `file:line:column` with a hint), resolves the
//! shared lists, compiles every predicate once and indexes the rules by event kind. Judging an
//! event then touches only the rules of its kind:
//!
//! ```
//! use oknek_engine::{EvalContext, QuotaLedger, RuleSet};
//! use oknek_event::{Event, NoBaseline, Verdict};
//!
//! let rules = r#"
//! oknek_rules: 1
//! rules:
//!   - id: R1.ssh
//!     title: Agent reads an SSH private key
//!     kind: open
//!     match: { path: { glob: /home/*/.ssh/id_* }, not: { path: { suffix: .pub } } }
//!     action: block
//! "#;
//! let set = RuleSet::from_sources(&[("10-ssh.yaml", rules)])
//! .unwrap();
//! let event = Event::from_json(
//!     r#"{"time":"2026-11-22T08:30:00Z","source":"fanotify",
//!         "process":{"pid":4242,"uid":1000,"exe":"/usr/bin/cat","agent":"claude-code"},
//!         "kind":"open","path":"/home/dev/.ssh/id_ed25519"}"#,
//! )
//! .unwrap();
//! let mut quotas = QuotaLedger::new();
//! let decision = set.evaluate(&event, &mut EvalContext::new(&mut quotas, &NoBaseline));
//! assert_eq!(decision.verdict, Verdict::Block);
//! assert_eq!(&*decision.deciding_rule().unwrap().rule_id, "R1.ssh");
//! ```
//!
//! A daemon keeps the active set in an [`Engine`] and swaps whole sets on reload; the block rules
//! that kernel maps can enforce are described by [`RuleSet::kernel_plan`].

mod compile;
mod error;
pub mod fixtures;
mod glob;
mod holder;
mod index;
mod kernel;
mod model_plan;
mod predicate;
mod quota;
mod ruleset;
mod when;
mod yaml;

pub use compile::LANGUAGE_VERSION;
pub use error::{LoadError, LoadErrors};
pub use glob::{Glob, GlobError, GlobShape};
pub use holder::Engine;
pub use kernel::{
    Cidr, Enforceability, KernelEntry, KernelPlan, KernelRule, PortRange, kernel_rule,
};
pub use model_plan::{ModelConnectRule, ProviderRef};
pub use quota::{QuotaBy, QuotaLedger, QuotaSpec, QuotaState, QuotaUnit};
pub use ruleset::{
    DecidedQuotas, Decision, EvalContext, Fired, Rule, RuleSet, RuleSource, Severity, UsageCharge,
    default_capture,
};
pub use yaml::MAX_FILE_BYTES;
