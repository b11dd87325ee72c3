//! Redaction of secrets in anything vhdforge displays about a destination.
//!
//! A SAS URL is a bearer credential: its `sig` parameter (and, for user-delegation SAS,
//! nothing else secret) must never reach progress lines, logs, errors or JSON. Every place
//! that shows a URL goes through [`Redacted`]; the journal keys on [`without_query`].

use std::fmt;

/// Query parameters whose values are secrets.
const SECRET_PARAMS: &[&str] = &["sig"];

/// The text shown instead of a secret value.
pub const REDACTED: &str = "REDACTED";

/// Displays a URL with the values of secret query parameters replaced by `REDACTED`.
///
/// Works on the raw text, so even a URL that does not parse is shown safely.
#[derive(Clone, Copy)]
pub struct Redacted<'a>(pub &'a str);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(self.0))
    }
}

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", redact(self.0))
    }
}

/// `url` with every secret query value replaced by `REDACTED` (the fragment is dropped).
pub fn redact(url: &str) -> String {
    let url = url.split('#').next().unwrap_or("");
    let Some((base, query)) = url.split_once('?') else {
        return url.to_string();
    };
    let parts: Vec<String> = query
        .split('&')
        .map(|p| {
            let name = p.split('=').next().unwrap_or("");
            if SECRET_PARAMS.iter().any(|s| s.eq_ignore_ascii_case(name)) {
                format!("{name}={REDACTED}")
            } else {
                p.to_string()
            }
        })
        .collect();
    format!("{base}?{}", parts.join("&"))
}

/// `url` without query and fragment: the identity of a destination, free of secrets.
pub fn without_query(url: &str) -> &str {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    &url[..end]
}

/// Remove every occurrence of `secret` (an account key, a signature) from `text`, for
/// messages that come from elsewhere (a server's error body, a transport error).
pub fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| s.len() >= 8) {
        out = out.replace(s, REDACTED);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_table() {
        let cases = [
            // Blob SAS: only sig is hidden, the rest stays useful for diagnosis.
            (
                "https://a.blob.core.windows.net/c/b.vhd?sv=2021-08-06&sr=b&sp=w&sig=abc%2Bdef%3D",
                "https://a.blob.core.windows.net/c/b.vhd?sv=2021-08-06&sr=b&sp=w&sig=REDACTED",
            ),
            // Case-insensitive parameter name, sig first.
            (
                "http://127.0.0.1:1/d/c/b?SIG=xyz&se=2030",
                "http://127.0.0.1:1/d/c/b?SIG=REDACTED&se=2030",
            ),
            // No query: unchanged.
            ("https://a/c/b", "https://a/c/b"),
            // Fragment dropped (it could carry anything).
            ("https://a/c/b?sig=s#frag", "https://a/c/b?sig=REDACTED"),
            // Not a URL at all: still no secret.
            ("garbage?sig=s3cr3t", "garbage?sig=REDACTED"),
        ];
        for (input, want) in cases {
            assert_eq!(Redacted(input).to_string(), want, "{input}");
            assert!(!format!("{:?}", Redacted(input)).contains("s3cr3t"));
        }
    }

    #[test]
    fn without_query_drops_secrets() {
        assert_eq!(without_query("https://a/c/b?sig=x"), "https://a/c/b");
        assert_eq!(without_query("https://a/c/b#x"), "https://a/c/b");
        assert_eq!(without_query("https://a/c/b"), "https://a/c/b");
    }

    #[test]
    fn scrub_removes_long_secrets_only() {
        assert_eq!(
            scrub("key=Eby8vdM02xNO in text", &["Eby8vdM02xNO"]),
            "key=REDACTED in text"
        );
        // Short strings are not treated as secrets (would mangle ordinary text).
        assert_eq!(scrub("a b", &["a"]), "a b");
    }
}
