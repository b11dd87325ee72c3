//! Offline guest preflight: what a certification run or Azure provisioning would reject,
//! found by reading the guest's files through [`crate::guest`] — no mounting, no root, no VM.
//!
//! A guest check reports [`GuestFinding`]s: a container [`Finding`](crate::Finding) plus
//! where the evidence is (volume, path, line or value) and the command that fixes it inside
//! the guest, because the person reading it has to go and change the guest.

pub mod windows;

use serde::Serialize;

use crate::finding::{Code, Severity};

/// One thing a guest check found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuestFinding {
    /// How bad it is: errors fail certification or provisioning, warnings probably will.
    pub severity: Severity,
    /// Stable code (`guest.linux.*`, `guest.windows.*`, `guest.disk.*`, `guest.fs.*`).
    pub code: Code,
    /// What was found, what was expected.
    pub message: String,
    /// Where: the volume and path inside the guest, and the line or value found.
    pub evidence: Option<String>,
    /// What to run in the guest to fix it.
    pub fix: Option<String>,
}

impl GuestFinding {
    /// A finding with its evidence and fix.
    pub fn new(
        severity: Severity,
        code: impl Into<Code>,
        message: impl Into<String>,
        evidence: Option<String>,
        fix: Option<String>,
    ) -> GuestFinding {
        GuestFinding {
            severity,
            code: code.into(),
            message: message.into(),
            evidence,
            fix,
        }
    }
}
