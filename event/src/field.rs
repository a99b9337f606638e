//! The field vocabulary: the names rules match on and evidence captures.
//!
//! One list serves both, so a rule can capture exactly what it can match, and a typo in either
//! place is the same error.

use std::fmt;
use std::net::IpAddr;

use crate::{Action, Event, Kind, SockAddr};

/// A named field of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Field {
    // Process identity: present on every kind.
    Pid,
    Ppid,
    Tgid,
    Uid,
    Gid,
    Exe,
    ExeSha256,
    Comm,
    ParentExe,
    ParentComm,
    CgroupId,
    Cgroup,
    Unit,
    Agent,
    // Action fields.
    /// exec: the executed file; open: the opened file; watch: the watched path.
    Path,
    /// exec: the argument vector.
    Argv,
    /// open: open(2) flags.
    Flags,
    /// open: creation mode.
    Mode,
    /// connect / send / model_call: address family (inet, inet6, unix).
    Family,
    /// connect / send / model_call: destination IP address.
    Addr,
    /// connect / send / model_call: destination port.
    Port,
    /// connect / send: unix socket path.
    UnixPath,
    /// send: payload size in bytes.
    Bytes,
    /// watch: inotify mask.
    Mask,
    /// model_call: provider name.
    Provider,
    /// model_call: model name, when visible.
    Model,
    /// model_call: API style.
    Api,
    /// model_call: local weights file.
    Weights,
}

/// The value of a field on one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValue<'a> {
    Str(&'a str),
    List(&'a [String]),
    Uint(u64),
    Ip(IpAddr),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown field {0:?}")]
pub struct UnknownField(pub String);

const NAMES: &[(Field, &str)] = &[
    (Field::Pid, "pid"),
    (Field::Ppid, "ppid"),
    (Field::Tgid, "tgid"),
    (Field::Uid, "uid"),
    (Field::Gid, "gid"),
    (Field::Exe, "exe"),
    (Field::ExeSha256, "exe_sha256"),
    (Field::Comm, "comm"),
    (Field::ParentExe, "parent_exe"),
    (Field::ParentComm, "parent_comm"),
    (Field::CgroupId, "cgroup_id"),
    (Field::Cgroup, "cgroup"),
    (Field::Unit, "unit"),
    (Field::Agent, "agent"),
    (Field::Path, "path"),
    (Field::Argv, "argv"),
    (Field::Flags, "flags"),
    (Field::Mode, "mode"),
    (Field::Family, "family"),
    (Field::Addr, "addr"),
    (Field::Port, "port"),
    (Field::UnixPath, "unix_path"),
    (Field::Bytes, "bytes"),
    (Field::Mask, "mask"),
    (Field::Provider, "provider"),
    (Field::Model, "model"),
    (Field::Api, "api"),
    (Field::Weights, "weights"),
];

impl Field {
    pub fn name(self) -> &'static str {
        NAMES
            .iter()
            .find(|(f, _)| *f == self)
            .map(|(_, n)| *n)
            .expect("every field is named")
    }

    pub fn from_name(name: &str) -> Result<Field, UnknownField> {
        NAMES
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(f, _)| *f)
            .ok_or_else(|| UnknownField(name.to_owned()))
    }

    pub fn all_names() -> impl Iterator<Item = &'static str> {
        NAMES.iter().map(|(_, n)| *n)
    }

    /// True for the process-identity fields every event carries.
    pub fn is_process(self) -> bool {
        self <= Field::Agent
    }

    /// Whether an event of `kind` can carry this field.
    pub fn applies_to(self, kind: Kind) -> bool {
        use Field::*;
        if self.is_process() {
            return true;
        }
        match kind {
            Kind::Exec => matches!(self, Path | Argv),
            Kind::Open => matches!(self, Path | Flags | Mode),
            Kind::Connect => matches!(self, Family | Addr | Port | UnixPath),
            Kind::Send => matches!(self, Family | Addr | Port | UnixPath | Bytes),
            Kind::Watch => matches!(self, Path | Mask),
            Kind::ModelCall => matches!(
                self,
                Provider | Model | Api | Weights | Family | Addr | Port | UnixPath
            ),
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Event {
    /// The value of `field` on this event, or `None` when the event does not carry it.
    pub fn field(&self, field: Field) -> Option<FieldValue<'_>> {
        use FieldValue::*;
        let p = &self.process;
        let dest = match &self.action {
            Action::Connect { dest } | Action::Send { dest, .. } => Some(dest),
            Action::ModelCall { dest, .. } => dest.as_ref(),
            _ => None,
        };
        match field {
            Field::Pid => Some(Uint(p.pid.into())),
            Field::Ppid => Some(Uint(p.ppid.into())),
            Field::Tgid => Some(Uint(p.tgid.into())),
            Field::Uid => Some(Uint(p.uid.into())),
            Field::Gid => Some(Uint(p.gid.into())),
            Field::Exe => Some(Str(&p.exe)),
            Field::ExeSha256 => opt(&p.exe_sha256),
            Field::Comm => Some(Str(&p.comm)),
            Field::ParentExe => opt(&p.parent_exe),
            Field::ParentComm => opt(&p.parent_comm),
            Field::CgroupId => Some(Uint(p.cgroup_id)),
            Field::Cgroup => opt(&p.cgroup),
            Field::Unit => opt(&p.unit),
            Field::Agent => opt(&p.agent),
            Field::Path => match &self.action {
                Action::Exec { path, .. }
                | Action::Open { path, .. }
                | Action::Watch { path, .. } => Some(Str(path)),
                _ => None,
            },
            Field::Argv => match &self.action {
                Action::Exec { argv, .. } => Some(List(argv)),
                _ => None,
            },
            Field::Flags => match &self.action {
                Action::Open { flags, .. } => Some(Uint((*flags).into())),
                _ => None,
            },
            Field::Mode => match &self.action {
                Action::Open { mode, .. } => Some(Uint((*mode).into())),
                _ => None,
            },
            Field::Family => dest.map(|d| Str(d.family())),
            Field::Addr => dest.and_then(SockAddr::ip).map(Ip),
            Field::Port => dest.and_then(SockAddr::port).map(|p| Uint(p.into())),
            Field::UnixPath => match dest {
                Some(SockAddr::Unix { path }) => Some(Str(path)),
                _ => None,
            },
            Field::Bytes => match &self.action {
                Action::Send { bytes, .. } => Some(Uint(*bytes)),
                _ => None,
            },
            Field::Mask => match &self.action {
                Action::Watch { mask, .. } => Some(Uint((*mask).into())),
                _ => None,
            },
            Field::Provider => match &self.action {
                Action::ModelCall { provider, .. } => Some(Str(provider)),
                _ => None,
            },
            Field::Model => match &self.action {
                Action::ModelCall { model, .. } => opt(model),
                _ => None,
            },
            Field::Api => match &self.action {
                Action::ModelCall { api, .. } => opt(api),
                _ => None,
            },
            Field::Weights => match &self.action {
                Action::ModelCall { weights, .. } => opt(weights),
                _ => None,
            },
        }
    }
}

fn opt(s: &Option<String>) -> Option<FieldValue<'_>> {
    s.as_deref().map(FieldValue::Str)
}

impl FieldValue<'_> {
    /// The value as JSON, for evidence capture.
    pub fn to_json(self) -> serde_json::Value {
        match self {
            FieldValue::Str(s) => s.into(),
            FieldValue::List(items) => items.into(),
            FieldValue::Uint(n) => n.into(),
            FieldValue::Ip(ip) => ip.to_string().into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for name in Field::all_names() {
            assert!(seen.insert(name), "{name} listed twice");
            assert_eq!(Field::from_name(name).unwrap().name(), name);
        }
        assert!(Field::from_name("pat").is_err());
    }

    #[test]
    fn fields_exist_exactly_where_they_apply() {
        let line = r#"{"time":"2026-11-22T08:30:00Z","source":"recorded",
            "process":{"pid":7,"uid":1000,"exe":"/bin/nc","comm":"nc"},
            "kind":"connect","dest":{"family":"inet","addr":"192.0.2.1","port":4444}}"#;
        let event = Event::from_json(line).unwrap();
        assert_eq!(event.field(Field::Port), Some(FieldValue::Uint(4444)));
        assert_eq!(
            event.field(Field::Addr).map(FieldValue::to_json),
            Some("192.0.2.1".into())
        );
        assert_eq!(event.field(Field::Path), None);
        assert!(Field::Port.applies_to(Kind::Connect));
        assert!(!Field::Argv.applies_to(Kind::Open));
        assert!(Field::Uid.applies_to(Kind::Watch));
    }
}
