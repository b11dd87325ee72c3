//! What a failed Blob service request means and what to do about it (docs/azure-page-blob.md
//! §1.4): retry, throttle, re-read, or stop with a message that names the cause and the fix.
//!
//! Every message held here has already been scrubbed of secrets by the client that made it.

use crate::error::{Error, ErrorKind};

/// What to do about a failed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Transient: back off and retry.
    Retry,
    /// Throttled (503/429): back off, retry, and send less at once.
    Throttle,
    /// The body was corrupted in transit: re-read it from disk and retry.
    Checksum,
    /// Retrying cannot help.
    Fatal,
}

/// Why no answer arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// Connection refused or reset, timeout, DNS: may go away by itself.
    Network,
    /// The server's TLS certificate was refused (unknown issuer, wrong name, expired): the
    /// same certificate comes back on every retry, so this is fatal.
    Certificate,
    /// The request could not be built (e.g. a header value that cannot be sent): the
    /// same request fails the same way every time, so this is fatal.
    Request,
    /// `--auth login` produced no token (not signed in, expired sign-in): fatal.
    SignIn,
}

/// Starts the message of a 403 answered to a request with an Entra ID token, so the advice
/// is about the identity's role and sign-in rather than a SAS or key.
pub(crate) const SIGNED_IN_MARK: &str = "\u{1}signed-in:";

/// A failed request.
#[derive(Debug, Clone)]
pub enum Failure {
    /// The service answered with an error status.
    Status {
        /// HTTP status.
        status: u16,
        /// `x-ms-error-code` or the XML `<Code>`.
        code: String,
        /// The XML `<Message>` (first line), scrubbed.
        message: String,
    },
    /// No usable answer: connection refused/reset, timeout, TLS ...
    Transport {
        /// What happened, scrubbed.
        message: String,
        /// Whether a retry can help.
        kind: TransportKind,
    },
}

/// 400 error codes that say the request itself is malformed (a header, a query parameter,
/// the x-ms-version): the same request fails the same way every time.
const INVALID_REQUEST_CODES: &[&str] = &[
    "InvalidHeaderValue",
    "InvalidQueryParameterValue",
    "InvalidInput",
    "InvalidUri",
    "InvalidXmlDocument",
    "MissingRequiredHeader",
    "MissingRequiredQueryParameter",
    "UnsupportedHeader",
    "UnsupportedQueryParameter",
    "InvalidApiVersion",
];

impl Failure {
    /// One short line for progress and logs (`HTTP 503 ServerBusy`, "connection refused").
    #[must_use]
    pub fn summary(&self) -> String {
        match self {
            Failure::Status { status, code, .. } => format!("HTTP {status} {code}"),
            Failure::Transport { message, .. } => message.clone(),
        }
    }

    /// A transport failure that retrying may cure.
    pub fn network(message: impl Into<String>) -> Failure {
        Failure::Transport {
            message: message.into(),
            kind: TransportKind::Network,
        }
    }

    /// How to react (docs/azure-page-blob.md §1.4).
    pub fn class(&self) -> Class {
        match self {
            Failure::Transport {
                kind: TransportKind::Certificate | TransportKind::Request | TransportKind::SignIn,
                ..
            } => Class::Fatal,
            Failure::Transport { .. } => Class::Retry,
            Failure::Status { status, code, .. } => match *status {
                503 | 429 => Class::Throttle,
                408 | 500 | 502 | 504 => Class::Retry,
                400 if code == "Md5Mismatch" || code == "Crc64Mismatch" => Class::Checksum,
                _ => Class::Fatal,
            },
        }
    }

    /// A user-facing error: what happened during `op` on `dest` (already redacted), and what to fix.
    pub fn into_error(self, op: &str, dest: &str) -> Error {
        match self {
            Failure::Transport {
                message,
                kind: TransportKind::Certificate,
            } => Error::new(
                ErrorKind::Remote,
                "upload.tls",
                format!(
                    "{op} {dest}: the server's TLS certificate was refused ({message}); \
                     check the host name in DEST; if a proxy or firewall inspects TLS, or the endpoint \
                     uses a private CA, give that CA's certificate with --ca-cert FILE (PEM) or install it \
                     in the system's trust store (a certificate this machine does not trust is never accepted)"
                ),
            ),
            Failure::Transport {
                message,
                kind: TransportKind::Request,
            } => Error::new(
                ErrorKind::InvalidInput,
                "upload.invalid_request",
                format!("{op} {dest}: the request could not be built ({message}); check --api-version and DEST for characters that cannot be sent"),
            ),
            Failure::Transport {
                message,
                kind: TransportKind::SignIn,
            } => Error::new(ErrorKind::InvalidInput, "upload.login", format!("{op} {dest}: {message}")),
            Failure::Transport { message, .. } => Error::new(
                ErrorKind::Remote,
                "upload.transport",
                format!("{op} {dest}: no answer from the service ({message}); check the network, the host name and any proxy"),
            ),
            Failure::Status { status: status @ (401 | 403), code, message } if message.starts_with(SIGNED_IN_MARK) => {
                signed_in_denied(op, dest, status, &code, &message[SIGNED_IN_MARK.len()..])
            }
            Failure::Status { status, code, message } => {
                let what = if message.is_empty() { code.clone() } else { format!("{code} ({})", message.trim_end_matches('.')) };
                let (ecode, hint) = status_hint(status, &code, op);
                Error::new(ErrorKind::Remote, ecode, format!("{op} {dest}: HTTP {status} {what}; {hint}"))
            }
        }
    }
}

/// A 403 (or 401) to a request made with an Entra ID token: the identity lacks a data role
/// (`AuthorizationPermissionMismatch`, `AuthorizationFailure`), or the token itself was
/// refused (`AuthenticationFailed`, `InvalidAuthenticationInfo`: expired, another tenant or
/// audience).
fn signed_in_denied(op: &str, dest: &str, status: u16, code: &str, detail: &str) -> Error {
    let detail = detail.trim().trim_end_matches('.');
    let shown = if detail.is_empty() {
        code.to_string()
    } else {
        format!("{code} ({detail})")
    };
    if status == 401 || matches!(code, "AuthenticationFailed" | "InvalidAuthenticationInfo") {
        return Error::new(
            ErrorKind::Remote,
            "upload.auth",
            format!(
                "{op} {dest}: HTTP {status} {shown}; the service refused the Entra ID token: it may have expired or be for \
                 another tenant or cloud; sign in again (`az login`, with `az cloud set` for China or US Gov) and check \
                 this machine's clock"
            ),
        );
    }
    Error::new(
        ErrorKind::Remote,
        "upload.permission",
        format!(
            "{op} {dest}: HTTP 403 {shown}; the signed-in identity lacks a data role on this account: assign \
             'Storage Blob Data Contributor' (upload/copy) or 'Storage Blob Data Reader' (verify/check) on the \
             storage account or container (`az role assignment create --role \"Storage Blob Data Contributor\" \
             --assignee <you> --scope <account id>`; roles take a few minutes to apply). Owner or Contributor on the \
             account is not enough: they manage it, they do not grant data access"
        ),
    )
}

/// The error code and the advice for an error status during `op` (a 404 means "create the
/// container" while creating the blob, and "upload it first" while reading one back).
fn status_hint(status: u16, code: &str, op: &str) -> (&'static str, &'static str) {
    let creating = op.starts_with("creating");
    match (status, code) {
        (_, "CannotVerifyCopySource") => (
            "copy.source_sas",
            "the destination service could not read the source: it reads SRC by its URL alone, without this \
             machine's account key or sign-in token; give SRC a SAS with read permission (r), or use --via client",
        ),
        (403, "AuthorizationPermissionMismatch") => (
            "upload.permission",
            "the SAS lacks write (w) permission for this blob: generate one with write permission \
             (e.g. `az storage blob generate-sas --permissions cw`), or for a managed disk `az disk grant-access --access-level Write`",
        ),
        (403, _) => (
            "upload.auth",
            "the service rejected the credentials: a SAS may be expired, issued for another blob or copied incompletely \
             (managed disk: run `az disk grant-access` again); an account key may be wrong (check AZURE_STORAGE_KEY or the connection string); \
             also check this machine's clock",
        ),
        (404, "ContainerNotFound") if creating => (
            "upload.not_found",
            "the container does not exist: add `--create-container` to create it (needs a Shared Key, or a SAS allowed \
             to create containers), or check the container name in DEST",
        ),
        (404, _) if creating => ("upload.not_found", "the container does not exist: add `--create-container`, or check the URL"),
        (404, _) => (
            "upload.not_found",
            "nothing is stored there: if this is where an image should have been uploaded, upload it first \
             (`vhdforge upload SOURCE DEST`); otherwise check the container and blob names in DEST",
        ),
        (409, "BlobAlreadyExists") => (
            "upload.exists",
            "the destination blob already exists: pass --overwrite to replace it, or --resume to continue an interrupted upload",
        ),
        (409, "InvalidBlobType") => ("upload.conflict", "the destination exists but is not a page blob: delete it or choose another name"),
        (409, _) => ("upload.conflict", "the destination is busy or in a conflicting state (lease, snapshot, disk state)"),
        (412, _) => ("upload.precondition", "a precondition failed (the blob changed meanwhile, or a lease/sequence condition)"),
        (413 | 416, _) => (
            "upload.range",
            "the service refused the page range: the destination is smaller than the image (for a managed disk, the disk was created with the wrong --upload-size-bytes)",
        ),
        (300..=399, _) => (
            "upload.redirect",
            "the service answered with a redirect, which vhdforge never follows (it could carry the SAS or signed requests elsewhere, or to plain http): \
             use the blob's final URL (check the account name and endpoint)",
        ),
        (200, _) => ("upload.protocol", "the service's answer could not be understood (is DEST a Blob service endpoint?)"),
        (400, c) if INVALID_REQUEST_CODES.contains(&c) => (
            "upload.invalid_request",
            "the service refused the request as malformed, so retrying cannot help: most often an --api-version \
             the service does not support (the default is 2021-08-06; an emulator may need upgrading)",
        ),
        _ => ("upload.http", "the service refused the request"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(status: u16, code: &str) -> Failure {
        Failure::Status {
            status,
            code: code.into(),
            message: String::new(),
        }
    }

    #[test]
    fn a_refused_sign_in_says_role_or_token() {
        let signed = |status: u16, code: &str, detail: &str| Failure::Status {
            status,
            code: code.into(),
            message: format!("{SIGNED_IN_MARK}{detail}"),
        };
        let e = signed(
            403,
            "AuthorizationPermissionMismatch",
            "This request is not authorized",
        )
        .into_error("writing", "https://a.blob.core.windows.net/c/b");
        assert_eq!(e.code(), "upload.permission");
        assert!(
            e.message().contains("Storage Blob Data Contributor")
                && e.message().contains("AuthorizationPermissionMismatch")
        );
        assert!(!e.message().contains('\u{1}'));
        for (status, code) in [
            (403, "AuthenticationFailed"),
            (401, "InvalidAuthenticationInfo"),
        ] {
            let e = signed(
                status,
                code,
                "Lifetime validation failed. The token is expired.",
            )
            .into_error("writing", "d");
            assert_eq!(e.code(), "upload.auth");
            assert!(
                e.message().contains("The token is expired") && e.message().contains("az login"),
                "{e}"
            );
        }
        // Without the mark (a SAS or key), the SAS advice as before.
        let e = st(403, "AuthorizationPermissionMismatch").into_error("writing", "d");
        assert!(e.message().contains("generate-sas"));
        assert_eq!(
            signed(403, "AuthenticationFailed", "").class(),
            Class::Fatal
        );
    }

    #[test]
    fn failure_classes() {
        let cases = [
            // Throttling cuts concurrency.
            (st(503, "ServerBusy"), Class::Throttle),
            (st(429, ""), Class::Throttle),
            // Transient server and transport failures retry.
            (st(500, "OperationTimedOut"), Class::Retry),
            (st(502, ""), Class::Retry),
            (st(504, ""), Class::Retry),
            (st(408, ""), Class::Retry),
            (Failure::network("reset"), Class::Retry),
            // A refused certificate comes back on every retry.
            (
                Failure::Transport {
                    message: "invalid peer certificate: UnknownIssuer".into(),
                    kind: TransportKind::Certificate,
                },
                Class::Fatal,
            ),
            // Corrupted bodies are re-read.
            (st(400, "Crc64Mismatch"), Class::Checksum),
            (st(400, "Md5Mismatch"), Class::Checksum),
            // Everything a retry cannot fix is fatal.
            (st(400, "InvalidHeaderValue"), Class::Fatal),
            (st(400, "InvalidQueryParameterValue"), Class::Fatal),
            (st(403, "AuthorizationFailure"), Class::Fatal),
            (st(404, "BlobNotFound"), Class::Fatal),
            (st(409, "BlobAlreadyExists"), Class::Fatal),
            (st(412, ""), Class::Fatal),
            (st(413, ""), Class::Fatal),
            (st(416, ""), Class::Fatal),
        ];
        for (f, want) in cases {
            assert_eq!(f.class(), want, "{f:?}");
        }
    }

    #[test]
    fn fatal_messages_say_what_to_fix() {
        let cases = [
            (
                st(403, "AuthorizationPermissionMismatch"),
                "upload.permission",
                "lacks write (w) permission",
            ),
            (
                st(403, "AuthorizationFailure"),
                "upload.auth",
                "grant-access",
            ),
            (st(409, "BlobAlreadyExists"), "upload.exists", "--overwrite"),
            // Creating a blob in a missing container: the flag that fixes it.
            (
                st(404, "ContainerNotFound"),
                "upload.not_found",
                "add `--create-container`",
            ),
            (
                st(416, "InvalidPageRange"),
                "upload.range",
                "--upload-size-bytes",
            ),
            (
                st(400, "InvalidHeaderValue"),
                "upload.invalid_request",
                "--api-version",
            ),
            (
                st(400, "InvalidQueryParameterValue"),
                "upload.invalid_request",
                "malformed",
            ),
            (
                Failure::Transport {
                    message: "invalid peer certificate: UnknownIssuer".into(),
                    kind: TransportKind::Certificate,
                },
                "upload.tls",
                "certificate was refused",
            ),
        ];
        for (f, code, text) in cases {
            let e = f.into_error("creating", "https://x/c/b?sig=REDACTED");
            assert_eq!(e.code(), code);
            assert!(e.message().contains(text), "{}", e.message());
        }
    }

    #[test]
    fn a_missing_blob_read_back_says_upload_it_first() {
        for code in ["BlobNotFound", "ContainerNotFound", ""] {
            let e = st(404, code).into_error("reading the properties of", "https://x/c/b");
            assert_eq!(e.code(), "upload.not_found");
            assert!(e.message().contains("upload it first"), "{}", e.message());
            assert!(
                !e.message().contains("--create-container"),
                "{}",
                e.message()
            );
        }
    }
}
