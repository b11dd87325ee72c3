//! The one public error type of the library.
//!
//! Every error carries a small, stable [`ErrorKind`], a stable `code` (the same codes that
//! findings use, see [`crate::finding`]), a message that says what was found and what was
//! expected, and where known the file and byte offset.

use crate::finding::Code;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// What went wrong, coarsely; match on this, not on messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The operating system refused or failed an I/O operation.
    Io,
    /// The image is structurally invalid (bad magic, checksum, offset, size ...).
    Corrupt,
    /// The image is valid but uses something vhdforge does not handle (or refuses by policy).
    Unsupported,
    /// A parent disk of a differencing image is missing, mismatched or forms a loop.
    Parent,
    /// The caller asked for something impossible (bad argument, existing output ...).
    InvalidInput,
    /// The operation was interrupted on request.
    Interrupted,
    /// A remote service answered with an error.
    Remote,
}

/// What caused an error: an OS error, another [`Error`] it was given context by, or any
/// other library's error.
type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The library's error.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    code: Code,
    message: String,
    offset: Option<u64>,
    path: Option<PathBuf>,
    source: Option<Source>,
}

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind` with a stable `code` and a human message.
    pub fn new(kind: ErrorKind, code: impl Into<Code>, message: impl Into<String>) -> Self {
        Error {
            kind,
            code: code.into(),
            message: message.into(),
            offset: None,
            path: None,
            source: None,
        }
    }

    /// A structural error at a byte offset of the image file.
    pub fn corrupt(code: impl Into<Code>, offset: u64, message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Corrupt, code, message).at(offset)
    }

    /// Something valid but not supported.
    pub fn unsupported(code: impl Into<Code>, message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Unsupported, code, message)
    }

    /// An I/O failure with what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        // A sharing or lock violation on Windows is almost always a VM holding its disk:
        // say so under its own code, without the OS's numbered message.
        if crate::platform::is_in_use(&source) {
            return Error::new(
                ErrorKind::Io,
                crate::platform::IN_USE_CODE,
                format!("{}: {}", context.into(), crate::platform::IN_USE_HINT),
            );
        }
        let kind = if source.kind() == io::ErrorKind::Interrupted {
            ErrorKind::Interrupted
        } else {
            ErrorKind::Io
        };
        Error {
            kind,
            code: Code::new("io"),
            message: context.into(),
            offset: None,
            path: None,
            source: Some(Box::new(source)),
        }
    }

    /// This error as the cause of a new one that says what was being done: same kind, a new
    /// `code` and `message`, and `self` kept as the [`std::error::Error::source`] (and
    /// printed after the message), so nothing the cause said is lost. Use this instead of
    /// building a new error from `e.message()` by hand.
    #[must_use]
    pub fn context(self, code: impl Into<Code>, message: impl Into<String>) -> Self {
        Error {
            kind: self.kind,
            code: code.into(),
            message: message.into(),
            offset: None,
            path: None,
            source: Some(Box::new(self)),
        }
    }

    /// Record `source` as the cause (replacing any other): it is printed after the message
    /// and reachable through [`std::error::Error::source`].
    #[must_use]
    pub fn with_source(
        mut self,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Attach a byte offset.
    #[must_use]
    pub fn at(mut self, offset: u64) -> Self {
        self.offset = Some(offset);
        self
    }

    /// Attach the file this error is about (kept if one is already set: the innermost wins).
    #[must_use]
    pub fn in_file(mut self, path: &Path) -> Self {
        if self.path.is_none() {
            self.path = Some(path.to_path_buf());
        }
        self
    }

    /// Drop the file this error names: for a file the user never named (a temporary
    /// output), when the caller's context says what it was.
    #[must_use]
    pub fn without_file(mut self) -> Self {
        self.path = None;
        self
    }

    /// The coarse kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The stable code (e.g. `vhd.footer.checksum`).
    pub fn code(&self) -> Code {
        self.code
    }

    /// The message without path or offset.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The byte offset in the file, when known.
    pub fn offset(&self) -> Option<u64> {
        self.offset
    }

    /// The file, when known.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(p) = &self.path {
            write!(f, "{}: ", p.display())?;
        }
        f.write_str(&self.message)?;
        if let Some(o) = self.offset {
            write!(f, " (at byte offset {o:#x})")?;
        }
        if let Some(s) = &self.source {
            write!(f, ": {s}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::io("I/O error", e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn context_keeps_the_cause_and_its_details() {
        let cause = Error::io("cannot read", io::Error::other("disk on fire"))
            .in_file(Path::new("a.vhd"))
            .at(0x200);
        let e = cause.context("convert.self_check", "the output failed its check");
        // Kind of the cause, new code and message; the cause reachable and printed.
        assert_eq!(e.kind(), ErrorKind::Io);
        assert_eq!(e.code(), "convert.self_check");
        assert_eq!(e.message(), "the output failed its check");
        assert_eq!(
            e.to_string(),
            "the output failed its check: a.vhd: cannot read (at byte offset 0x200): disk on fire"
        );
        let inner = e.source().and_then(|s| s.downcast_ref::<Error>()).unwrap();
        assert_eq!((inner.code().as_str(), inner.offset()), ("io", Some(0x200)));
        assert_eq!(inner.path(), Some(Path::new("a.vhd")));
        // The OS error stays reachable one level further down.
        assert!(inner
            .source()
            .and_then(|s| s.downcast_ref::<io::Error>())
            .is_some());
    }

    #[test]
    fn with_source_prints_like_an_io_cause() {
        let e = Error::new(
            ErrorKind::Io,
            "convert.threads",
            "cannot start worker threads",
        )
        .with_source("no threads left");
        assert_eq!(
            e.to_string(),
            "cannot start worker threads: no threads left"
        );
        assert_eq!(e.source().unwrap().to_string(), "no threads left");
    }
}
