//! Red-team findings on the issue 7 fixes that are one-liners to reproduce: secrets that
//! redaction misses. These fail until the redactor handles the shapes below.

use vhdforge_core::storage::redact_text;

/// A URL with user information written without `//` (`https:user:pass@host`) is still a
/// URL to the WHATWG parser reqwest uses, and people paste it; the password must not show.
#[test]
fn password_in_a_url_without_slashes_is_redacted() {
    for text in [
        "https:user:PASSW0RDX@127.0.0.1:9/c/b",
        "https:/user:PASSW0RDX@127.0.0.1:9/c/b",
        "https:\\\\user:PASSW0RDX@127.0.0.1:9\\c\\b",
    ] {
        let out = redact_text(text);
        assert!(!out.contains("PASSW0RDX"), "{text} -> {out}");
    }
}

/// A server that echoes the request URL percent-encoded twice (`sig%253D…`) must not get
/// the signature into an error message.
#[test]
fn doubly_encoded_sig_is_redacted() {
    let text = "echo %252Facct%252Fc%252Fb%253Fsv%253D1%2526sig%253DAbCdEfGh%25252BIjKlMnOp%25253D";
    let out = redact_text(text);
    assert!(!out.contains("AbCdEfGh"), "{out}");
    assert!(!out.contains("IjKlMnOp"), "{out}");
}
