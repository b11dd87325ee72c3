//! The one public error type of the library.
//!
//! Every error carries a small, stable [`ErrorKind`], a stable `code` (the same codes that
//! findings use, see [`crate::finding`]), a message that says what was found and what was
//! expected, and where known the file and byte offset.

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

/// The library's error.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    code: &'static str,
    message: String,
    offset: Option<u64>,
    path: Option<PathBuf>,
    source: Option<io::Error>,
}

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind` with a stable `code` and a human message.
    pub fn new(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        Error {
            kind,
            code,
            message: message.into(),
            offset: None,
            path: None,
            source: None,
        }
    }

    /// A structural error at a byte offset of the image file.
    pub fn corrupt(code: &'static str, offset: u64, message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Corrupt, code, message).at(offset)
    }

    /// Something valid but not supported.
    pub fn unsupported(code: &'static str, message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Unsupported, code, message)
    }

    /// An I/O failure with what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        let kind = if source.kind() == io::ErrorKind::Interrupted {
            ErrorKind::Interrupted
        } else {
            ErrorKind::Io
        };
        Error {
            kind,
            code: "io",
            message: context.into(),
            offset: None,
            path: None,
            source: Some(source),
        }
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

    /// The coarse kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The stable code (e.g. `vhd.footer.checksum`).
    pub fn code(&self) -> &'static str {
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
        self.source.as_ref().map(|e| e as _)
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::io("I/O error", e)
    }
}
