//! The registry keys the Windows checks read, copied out of a hive so the hive can be
//! dropped before the next one is read (`docs/preflight-windows.md`, "Reading").
//!
//! A SYSTEM or SOFTWARE hive may be 100 MiB; holding both, their logs and a BCD store at once
//! would break vhdforge's memory budget. The checks therefore name the keys they need up
//! front ([`super::tables`]); [`HiveView::capture`] copies those keys' values and subkey
//! names, and the checks then ask the view, which also renders the evidence line of every
//! finding (`SYSTEM\ControlSet001\…: Name = value (REG_…)`).

use std::collections::HashMap;

use crate::error::Result;
use crate::guest::registry::{Hive, Value, ValueData};

/// Values copied from one key at most; a real key holds a few hundred (firewall rules: ~1000).
const MAX_VALUES_PER_KEY: usize = 65_536;
/// Bytes of value data copied from one view at most (the firewall rules dominate: ~1 MiB).
const MAX_VIEW_BYTES: usize = 32 << 20;

/// One copied key.
#[derive(Debug, Clone)]
struct KeyData {
    /// The path as found, `CurrentControlSet` replaced by the control set it names.
    path: String,
    values: Vec<Value>,
    subkeys: Vec<String>,
}

/// The keys of one hive the checks asked for.
#[derive(Debug, Clone)]
pub(crate) struct HiveView {
    /// `SYSTEM`, `SOFTWARE` or `BCD`: the prefix of every evidence line.
    pub name: &'static str,
    /// `ControlSet00N` when `CurrentControlSet` was resolved.
    pub control_set: Option<String>,
    /// Keyed by the requested path in ASCII lower case.
    keys: HashMap<String, KeyData>,
    /// Keys that could not be read (damaged cells), with the reason.
    pub unreadable: Vec<String>,
    /// False for a hive that could not be read at all: the checks that need it are skipped
    /// (its absence is reported once) rather than reporting every value as missing.
    pub loaded: bool,
}

impl HiveView {
    /// A view with no key at all: the hive is missing, every lookup answers "absent".
    pub fn empty(name: &'static str) -> HiveView {
        HiveView {
            name,
            control_set: None,
            keys: HashMap::new(),
            unreadable: Vec::new(),
            loaded: false,
        }
    }

    /// Copy `paths` out of `hive`. A key that is damaged is recorded in
    /// [`HiveView::unreadable`] and reads as absent; only a hive whose
    /// `CurrentControlSet` is needed but unresolvable is an error.
    pub fn capture(hive: &Hive, name: &'static str, paths: &[String]) -> Result<HiveView> {
        let needs_ccs = paths
            .iter()
            .any(|p| p.to_ascii_lowercase().starts_with("currentcontrolset\\"));
        let control_set = if needs_ccs {
            Some(hive.current_control_set()?)
        } else {
            None
        };
        let mut view = HiveView {
            name,
            control_set,
            keys: HashMap::new(),
            unreadable: Vec::new(),
            loaded: true,
        };
        let mut bytes = 0usize;
        for p in paths {
            let shown = view.resolve(p);
            let key = match hive.key(p) {
                Ok(Some(k)) => k,
                Ok(None) => continue,
                Err(e) => {
                    view.unreadable
                        .push(format!("{name}\\{shown}: {}", e.message()));
                    continue;
                }
            };
            let values = match key.values() {
                Ok(v) if v.len() <= MAX_VALUES_PER_KEY => v,
                Ok(v) => {
                    view.unreadable.push(format!(
                        "{name}\\{shown}: {} values, more than the {MAX_VALUES_PER_KEY} read",
                        v.len()
                    ));
                    continue;
                }
                Err(e) => {
                    view.unreadable
                        .push(format!("{name}\\{shown}: {}", e.message()));
                    Vec::new()
                }
            };
            bytes += values.iter().map(|v| v.raw().len()).sum::<usize>();
            if bytes > MAX_VIEW_BYTES {
                view.unreadable.push(format!(
                    "{name}\\{shown}: the keys read hold more than {MAX_VIEW_BYTES} bytes of values"
                ));
                break;
            }
            let subkeys = match key.subkeys() {
                Ok(s) => s.iter().map(|k| k.name().to_string()).collect(),
                Err(e) => {
                    view.unreadable
                        .push(format!("{name}\\{shown}: {}", e.message()));
                    Vec::new()
                }
            };
            view.keys.insert(
                p.to_ascii_lowercase(),
                KeyData {
                    path: shown,
                    values,
                    subkeys,
                },
            );
        }
        Ok(view)
    }

    /// `path` with a leading `CurrentControlSet` replaced by the resolved control set.
    pub fn resolve(&self, path: &str) -> String {
        match (&self.control_set, path.split_once('\\')) {
            (Some(ccs), Some((first, rest))) if first.eq_ignore_ascii_case("CurrentControlSet") => {
                format!("{ccs}\\{rest}")
            }
            _ => path.to_string(),
        }
    }

    fn key(&self, path: &str) -> Option<&KeyData> {
        self.keys.get(&path.to_ascii_lowercase())
    }

    /// True when the key exists.
    pub fn has_key(&self, path: &str) -> bool {
        self.key(path).is_some()
    }

    /// The value `name` of the key at `path` (case-insensitive, as Windows compares).
    pub fn value(&self, path: &str, name: &str) -> Option<&Value> {
        self.key(path)?
            .values
            .iter()
            .find(|v| crate::guest::registry::name::eq_ignore_case(v.name(), name))
    }

    /// The value as a DWORD, when it is one.
    pub fn dword(&self, path: &str, name: &str) -> Option<u32> {
        self.value(path, name).and_then(Value::as_dword)
    }

    /// The value as a string, when it is one.
    pub fn string(&self, path: &str, name: &str) -> Option<String> {
        self.value(path, name).and_then(Value::as_string)
    }

    /// Every value of the key (none when it is absent).
    pub fn values(&self, path: &str) -> &[Value] {
        self.key(path).map_or(&[], |k| k.values.as_slice())
    }

    /// The names of the key's subkeys (none when it is absent).
    pub fn subkeys(&self, path: &str) -> &[String] {
        self.key(path).map_or(&[], |k| k.subkeys.as_slice())
    }

    /// `HIVE\path` as found (control set resolved).
    pub fn key_path(&self, path: &str) -> String {
        let shown = self
            .key(path)
            .map_or_else(|| self.resolve(path), |k| k.path.clone());
        format!("{}\\{shown}", self.name)
    }

    /// The evidence line for value `name` of `path`: what was found, or that it is absent.
    pub fn evidence(&self, path: &str, name: &str) -> String {
        let at = self.key_path(path);
        if !self.has_key(path) {
            return format!("{at}: key absent (so `{name}` is not set)");
        }
        match self.value(path, name) {
            Some(v) => format!("{at}: {name} = {} ({})", render(v), v.value_type()),
            None => format!("{at}: {name} absent"),
        }
    }
}

/// A value as a person reads it in evidence: numbers in decimal (and hex when large),
/// strings quoted (Windows paths keep their single backslashes; control characters and
/// quotes, which could forge an evidence line, are escaped), lists bracketed, other data as
/// at most 32 hex bytes.
pub(crate) fn render(v: &Value) -> String {
    match v.data() {
        ValueData::Dword(n) if n > 9 => format!("{n} ({n:#x})"),
        ValueData::Dword(n) => n.to_string(),
        ValueData::Qword(n) => n.to_string(),
        ValueData::String(s) => format!("\"{}\"", shown(&s)),
        ValueData::MultiString(list) => format!(
            "[{}]",
            list.iter()
                .map(|s| format!("\"{}\"", shown(s)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        ValueData::Raw(bytes) => {
            let shown: Vec<String> = bytes.iter().take(32).map(|b| format!("{b:02x}")).collect();
            let more = if bytes.len() > 32 { " …" } else { "" };
            format!("{} bytes: {}{more}", bytes.len(), shown.join(" "))
        }
    }
}

/// `s` with control characters and quotes escaped, backslashes kept.
fn shown(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '"' => "\\\"".to_string(),
            c if c.is_control() => c.escape_default().to_string(),
            c => c.to_string(),
        })
        .collect()
}
