//! Token budgets: the usage a model call's response reported, charged to the caller's
//! `unit: tokens` quotas.
//!
//! The model gateway judges a call with `model_call` before it is made and, once the response
//! has completed, reports the tokens the provider said it used with `model_usage`. The daemon
//! charges them to every tokens quota whose rule applies to the call and records one signed
//! bundle per report (rule id [`MODEL_USAGE_RULE`], verdict allow), with the quotas' states after
//! the charge. A tokens quota's rule fires on the next call once its bucket is overspent.

use oknek_engine::EvalContext;
use oknek_event::{Process, Verdict};
use serde_json::{Value, json};

use crate::control::{CallerEcho, ModelUsageRequest, Response};
use crate::judge::Judge;

/// Rule id of the bundles that record a model call's token usage.
pub const MODEL_USAGE_RULE: &str = "oknek.model_usage";

impl Judge {
    /// Charges a completed model call's token usage and records it.
    pub(crate) fn model_usage(&mut self, usage: ModelUsageRequest) -> Response {
        let process = match self.usage_caller(&usage) {
            Ok(p) => p,
            Err(e) => return Response::err(e),
        };
        let event = self.gateway_call(process, usage.provider, usage.model, usage.api, usage.dest);
        let tokens = match (usage.input_tokens, usage.output_tokens) {
            (None, None) => None,
            (input, output) => Some(input.unwrap_or(0).saturating_add(output.unwrap_or(0))),
        };
        let charged = match tokens {
            Some(tokens) if event.agent().is_some() => {
                let rules = std::sync::Arc::clone(self.rules());
                let mut ctx = EvalContext::new(&mut self.quotas, self.store.baseline());
                rules.charge_usage(&event, tokens, &mut ctx)
            }
            _ => Vec::new(),
        };
        let quotas = serde_json::to_value(&charged).unwrap_or(Value::Null);
        let mut extra = serde_json::Map::new();
        let reason = match tokens {
            None => {
                "the response reported no token usage (an OpenAI stream without \
                 stream_options.include_usage, or an API that does not report it): nothing charged"
            }
            Some(_) if event.agent().is_none() => "the caller is not an agent: rules do not apply",
            Some(_) if charged.is_empty() => "no token budget applies to the call",
            Some(_) => "charged to the call's token budgets",
        };
        extra.insert("reason".to_owned(), reason.into());
        extra.insert(
            "usage".to_owned(),
            json!(if tokens.is_some() {
                "reported"
            } else {
                "unknown"
            }),
        );
        extra.insert("input_tokens".to_owned(), json!(usage.input_tokens));
        extra.insert("output_tokens".to_owned(), json!(usage.output_tokens));
        extra.insert("tokens".to_owned(), json!(tokens));
        extra.insert("quotas".to_owned(), quotas.clone());
        self.record_outside_rules(&event, MODEL_USAGE_RULE, reason, Verdict::Allow, &extra);
        Response::ok(json!({
            "tokens": tokens,
            "charged": quotas,
            "agent": event.agent(),
        }))
    }

    /// The caller as the call was judged: the live process when it is still the same program,
    /// otherwise the identity the `model_call` answer gave (the process may have exited since;
    /// its usage is charged all the same).
    fn usage_caller(&mut self, usage: &ModelUsageRequest) -> Result<Process, String> {
        // Only the process the gateway saw is measured (its pid may have been reused since).
        let live = self.identities.get(usage.pid).ok().filter(|p| {
            usage
                .caller
                .as_ref()
                .is_none_or(|c| c.uid == p.uid && c.exe == p.exe)
        });
        let live = live.map(|p| self.measured(usage.pid, p));
        if let Some(process) = live
            && (process.agent.is_some() || usage.agent.is_none())
        {
            return Ok(process);
        }
        match &usage.caller {
            Some(caller) => Ok(echoed(usage.pid, caller, usage.agent.clone())),
            None => Err(format!(
                "caller pid {} is gone and the request does not name the caller",
                usage.pid
            )),
        }
    }
}

fn echoed(pid: u32, caller: &CallerEcho, agent: Option<String>) -> Process {
    Process {
        pid,
        tgid: pid,
        uid: caller.uid,
        exe: caller.exe.clone(),
        exe_sha256: caller.exe_sha256.clone(),
        unit: caller.unit.clone(),
        agent,
        ..Process::default()
    }
}
