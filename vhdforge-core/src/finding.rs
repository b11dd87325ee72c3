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

/// The stable identifier of a kind of finding or error (`vhd.footer.checksum`): the same
/// string in JSON, the README's tables and `--json` errors, and a type of its own in the
/// code, so a seam takes a `Code`, never any string. Codes that code branches on are
/// named constants (see [`codes`]) and compared as such.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Code(&'static str);

impl Code {
    /// A code with this stable string form.
    #[must_use]
    pub const fn new(s: &'static str) -> Self {
        Code(s)
    }

    /// The stable string form.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        self.0
    }
}

impl From<&'static str> for Code {
    fn from(s: &'static str) -> Self {
        Code(s)
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

impl PartialEq<&str> for Code {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<str> for Code {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

/// The codes the library's own logic branches on, by name.
pub mod codes {
    use super::Code;

    /// A file could not be opened (as opposed to read).
    pub const IO_OPEN: Code = Code::new("io.open");
    /// Every network attempt failed (connection, timeout, DNS).
    pub const UPLOAD_TRANSPORT: Code = Code::new("upload.transport");
    /// The body kept arriving corrupted.
    pub const UPLOAD_CHECKSUM: Code = Code::new("upload.checksum");
    /// 412: a condition of the request (the blob's sequence number) no longer holds.
    pub const UPLOAD_PRECONDITION: Code = Code::new("upload.precondition");
    /// The parent chain comes back to a file already in it.
    pub const PARENT_LOOP: Code = Code::new("parent.loop");
    /// More images in the chain than allowed.
    pub const PARENT_CHAIN_TOO_DEEP: Code = Code::new("parent.chain_too_deep");
    /// A differencing disk opened without following parents.
    pub const PARENT_NOT_FOLLOWED: Code = Code::new("parent.not_followed");
}

/// One observation about an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// How bad.
    pub severity: Severity,
    /// Stable identifier of the kind of finding.
    pub code: Code,
    /// What was found and what was expected, and what to do about it.
    pub message: String,
    /// Byte offset in the image file the finding is about, if any.
    pub offset: Option<u64>,
}

impl Finding {
    /// A finding of any severity.
    pub fn new(
        severity: Severity,
        code: impl Into<Code>,
        offset: Option<u64>,
        message: impl Into<String>,
    ) -> Self {
        Finding {
            severity,
            code: code.into(),
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
    pub fn error(
        &mut self,
        code: impl Into<Code>,
        offset: Option<u64>,
        message: impl Into<String>,
    ) {
        self.0
            .push(Finding::new(Severity::Error, code, offset, message));
    }
    /// Record a warning.
    pub fn warning(
        &mut self,
        code: impl Into<Code>,
        offset: Option<u64>,
        message: impl Into<String>,
    ) {
        self.0
            .push(Finding::new(Severity::Warning, code, offset, message));
    }
    /// Record an informational finding.
    pub fn info(&mut self, code: impl Into<Code>, offset: Option<u64>, message: impl Into<String>) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_keeps_its_string_form_at_every_edge() {
        let f = Finding::new(Severity::Error, codes::PARENT_LOOP, Some(512), "loop");
        // JSON and Display show the stable string; comparisons work with the named
        // constant and with the string the README lists.
        let json = serde_json::to_value(&f).unwrap();
        assert_eq!(json["code"], "parent.loop");
        assert_eq!(f.code.to_string(), "parent.loop");
        assert_eq!(f.code, codes::PARENT_LOOP);
        assert_eq!(f.code, "parent.loop");
        assert_ne!(f.code, codes::PARENT_NOT_FOLLOWED);
        let e = crate::Error::new(crate::ErrorKind::Parent, codes::PARENT_LOOP, "x");
        assert_eq!(e.code(), Finding::from(&e).code);
    }
}
