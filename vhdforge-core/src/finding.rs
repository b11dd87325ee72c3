//! Validation findings: what `vhdforge check` and `info` report.
//!
//! Parsers collect findings instead of stopping at the first problem; the strict open path
//! ([`crate::open`]) turns any error-severity structural finding into an [`crate::Error`].
//! Codes are stable, dotted, lower-case identifiers (`vhd.footer.checksum`); the full list
//! is in the README.

use serde::Serialize;
use std::fmt;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing, nothing to do.
    Info,
    /// Probably fine, but a trap for some consumers (e.g. Marketplace limits).
    Warning,
    /// The image is invalid or not acceptable to Azure as it stands.
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// One observation about an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// How bad.
    pub severity: Severity,
    /// Stable identifier of the kind of finding.
    pub code: &'static str,
    /// What was found and what was expected, and what to do about it.
    pub message: String,
    /// Byte offset in the image file the finding is about, if any.
    pub offset: Option<u64>,
}

impl Finding {
    /// A finding of any severity.
    pub fn new(
        severity: Severity,
        code: &'static str,
        offset: Option<u64>,
        message: impl Into<String>,
    ) -> Self {
        Finding {
            severity,
            code,
            message: message.into(),
            offset,
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}] {}", self.severity, self.code, self.message)?;
        if let Some(o) = self.offset {
            write!(f, " (offset {o:#x})")?;
        }
        Ok(())
    }
}

impl From<&crate::Error> for Finding {
    fn from(e: &crate::Error) -> Self {
        let message = match e.kind() {
            crate::ErrorKind::Io => e.to_string(),
            _ => e.message().to_string(),
        };
        Finding::new(Severity::Error, e.code(), e.offset(), message)
    }
}

/// A growing list of findings.
#[derive(Debug, Clone, Default)]
pub struct Findings(pub Vec<Finding>);

impl Findings {
    /// Record an error finding.
    pub fn error(&mut self, code: &'static str, offset: Option<u64>, message: impl Into<String>) {
        self.0
            .push(Finding::new(Severity::Error, code, offset, message));
    }
    /// Record a warning.
    pub fn warning(&mut self, code: &'static str, offset: Option<u64>, message: impl Into<String>) {
        self.0
            .push(Finding::new(Severity::Warning, code, offset, message));
    }
    /// Record an informational finding.
    pub fn info(&mut self, code: &'static str, offset: Option<u64>, message: impl Into<String>) {
        self.0
            .push(Finding::new(Severity::Info, code, offset, message));
    }
    /// True when any finding is an error.
    pub fn has_errors(&self) -> bool {
        self.0.iter().any(|f| f.severity == Severity::Error)
    }
    /// The first error finding.
    pub fn first_error(&self) -> Option<&Finding> {
        self.0.iter().find(|f| f.severity == Severity::Error)
    }
}
