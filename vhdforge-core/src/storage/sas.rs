//! Signing shared access signatures with an account key (docs/azure-page-blob.md §1.5):
//! a service SAS for one blob or container, or an account SAS for the Blob service; and,
//! without any key, a user delegation SAS signed with a key the service hands the
//! signed-in identity (§1.6, `--auth login`).
//!
//! A SAS lets someone without the key (a build machine, Partner Center, a colleague) reach
//! exactly one resource, with exactly the permissions named, until it expires. The
//! string-to-sign layouts are those of service version 2020-12-06 and later.

use super::auth::SharedKey;
use crate::error::{Error, ErrorKind, Result};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
// Writing into a String cannot fail, so its `fmt::Result`s are ignored below.
use std::fmt::Write as _;

/// The `sv` vhdforge signs with (the string-to-sign layout depends on it).
pub const SAS_VERSION: &str = "2021-08-06";

/// What a service SAS grants access to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SasResource {
    /// One blob (`sr=b`).
    Blob {
        /// Container name.
        container: String,
        /// Blob name, as in the URL path (not percent-encoded).
        blob: String,
    },
    /// A whole container (`sr=c`).
    Container {
        /// Container name.
        container: String,
    },
}

/// The terms of a SAS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SasTerms {
    /// Permission letters in the service's canonical order, e.g. `r` (read), `cw` (create,
    /// write: enough to upload a page blob), `rl` (read, list).
    pub permissions: String,
    /// Not valid before (`YYYY-MM-DDTHH:MM:SSZ`, UTC); `None` for "now" (avoids clock skew).
    pub start: Option<String>,
    /// Not valid after (`YYYY-MM-DDTHH:MM:SSZ`, UTC).
    pub expiry: String,
    /// Refuse requests over plain http (`spr=https`). Off only for a local emulator.
    pub https_only: bool,
}

/// Permission letters the Blob service knows, in the order it requires them.
const PERMISSION_ORDER: &str = "racwdxyltmeopi";

fn invalid(msg: String) -> Error {
    Error::new(ErrorKind::InvalidInput, "sas.terms", msg)
}

impl SasTerms {
    /// Checks the terms and returns the permissions in the service's canonical order
    /// (it documents that order; `rwc` is sent as `rcw`).
    fn check(&self) -> Result<String> {
        let mut seen = [false; PERMISSION_ORDER.len()];
        for c in self.permissions.chars() {
            let Some(pos) = PERMISSION_ORDER.find(c) else {
                return Err(invalid(format!(
                    "SAS permission {c:?} is not one of {PERMISSION_ORDER:?}"
                )));
            };
            if std::mem::replace(&mut seen[pos], true) {
                return Err(invalid(format!(
                    "SAS permissions {:?} name {c:?} twice",
                    self.permissions
                )));
            }
        }
        if self.permissions.is_empty() {
            return Err(invalid("a SAS needs at least one permission".into()));
        }
        for t in std::iter::once(&self.expiry).chain(self.start.as_ref()) {
            if !is_utc_timestamp(t) {
                return Err(invalid(format!(
                    "SAS time {t:?} is not YYYY-MM-DDTHH:MM:SSZ (UTC)"
                )));
            }
        }
        Ok(PERMISSION_ORDER
            .chars()
            .zip(seen)
            .filter_map(|(c, s)| s.then_some(c))
            .collect())
    }

    fn protocol(&self) -> &'static str {
        if self.https_only {
            "https"
        } else {
            ""
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ`, the one form vhdforge signs (the service accepts others, but a
/// single form keeps the signed and the sent text identical).
fn is_utc_timestamp(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() == 20
        && b.iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b'-',
            10 => c == b'T',
            13 | 16 => c == b':',
            19 => c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

fn enc(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

/// The fields every SAS kind starts with: version, resource, permissions, start, expiry and
/// the protocol.
fn query_head(sr: &str, permissions: &str, start: &str, terms: &SasTerms) -> String {
    let mut q = format!("sv={SAS_VERSION}&sr={sr}&sp={permissions}");
    if !start.is_empty() {
        let _ = write!(q, "&st={}", enc(start));
    }
    let _ = write!(q, "&se={}", enc(&terms.expiry));
    if terms.https_only {
        q.push_str("&spr=https");
    }
    q
}

/// The query string of a service SAS for `resource` in `key`'s account (no leading `?`).
pub fn service_sas(key: &SharedKey, resource: &SasResource, terms: &SasTerms) -> Result<String> {
    let permissions = terms.check()?;
    let (sr, canonical) = match resource {
        SasResource::Blob { container, blob } => {
            ("b", format!("/blob/{}/{container}/{blob}", key.account))
        }
        SasResource::Container { container } => ("c", format!("/blob/{}/{container}", key.account)),
    };
    let start = terms.start.as_deref().unwrap_or("");
    // sp, st, se, resource, si, sip, spr, sv, sr, snapshot time, ses, rscc, rscd, rsce, rscl, rsct.
    let sts = [
        permissions.as_str(),
        start,
        &terms.expiry,
        &canonical,
        "",
        "",
        terms.protocol(),
        SAS_VERSION,
        sr,
        "",
        "",
        "",
        "",
        "",
        "",
        "",
    ]
    .join("\n");
    let mut q = query_head(sr, &permissions, start, terms);
    let _ = write!(q, "&sig={}", enc(&key.sign(&sts)));
    Ok(q)
}

/// The query string of an account SAS for the Blob service, for service, container and
/// object operations (`ss=b&srt=sco`; no leading `?`).
pub fn account_sas(key: &SharedKey, terms: &SasTerms) -> Result<String> {
    let permissions = terms.check()?;
    let start = terms.start.as_deref().unwrap_or("");
    // account, sp, ss, srt, st, se, sip, spr, sv, ses, and a final newline.
    let sts = [
        key.account.as_str(),
        permissions.as_str(),
        "b",
        "sco",
        start,
        &terms.expiry,
        "",
        terms.protocol(),
        SAS_VERSION,
        "",
        "",
    ]
    .join("\n");
    let mut q = format!("sv={SAS_VERSION}&ss=b&srt=sco&sp={permissions}");
    if !start.is_empty() {
        let _ = write!(q, "&st={}", enc(start));
    }
    let _ = write!(q, "&se={}", enc(&terms.expiry));
    if terms.https_only {
        q.push_str("&spr=https");
    }
    let _ = write!(q, "&sig={}", enc(&key.sign(&sts)));
    Ok(q)
}

/// The longest a user delegation key (and so a user delegation SAS) may be valid: the
/// service refuses more than 7 days.
pub const MAX_USER_DELEGATION_DAYS: u32 = 7;

/// A user delegation key (Get User Delegation Key's answer): the identity it belongs to, its
/// validity, and the key itself (`value`, base64), which signs SAS tokens like an account
/// key. Never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct UserDelegationKey {
    /// `skoid`: the signed-in identity's object id.
    pub signed_oid: String,
    /// `sktid`: its tenant.
    pub signed_tid: String,
    /// `skt`.
    pub signed_start: String,
    /// `ske`.
    pub signed_expiry: String,
    /// `sks` (`b`).
    pub signed_service: String,
    /// `skv`.
    pub signed_version: String,
    /// The key, base64.
    pub value: String,
}

impl std::fmt::Debug for UserDelegationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "UserDelegationKey(oid {}, tid {}, {}..{}, key redacted)",
            self.signed_oid, self.signed_tid, self.signed_start, self.signed_expiry
        )
    }
}

/// The query string of a user delegation SAS for `resource` in `account`, signed with
/// `udk` (no leading `?`): the service SAS fields plus `skoid, sktid, skt, ske, sks, skv`,
/// in the string-to-sign layout of versions 2020-12-06 and later.
pub fn user_delegation_sas(
    udk: &UserDelegationKey,
    account: &str,
    resource: &SasResource,
    terms: &SasTerms,
) -> Result<String> {
    let permissions = terms.check()?;
    let signer = SharedKey::new(account, &udk.value).map_err(|_| {
        invalid("the user delegation key the service returned is not base64".into())
    })?;
    let (sr, canonical) = match resource {
        SasResource::Blob { container, blob } => {
            ("b", format!("/blob/{account}/{container}/{blob}"))
        }
        SasResource::Container { container } => ("c", format!("/blob/{account}/{container}")),
    };
    let start = terms.start.as_deref().unwrap_or("");
    // sp, st, se, resource, skoid, sktid, skt, ske, sks, skv, saoid, suoid, scid, sip, spr,
    // sv, sr, snapshot time, ses, rscc, rscd, rsce, rscl, rsct.
    let sts = [
        permissions.as_str(),
        start,
        &terms.expiry,
        &canonical,
        &udk.signed_oid,
        &udk.signed_tid,
        &udk.signed_start,
        &udk.signed_expiry,
        &udk.signed_service,
        &udk.signed_version,
        "",
        "",
        "",
        "",
        terms.protocol(),
        SAS_VERSION,
        sr,
        "",
        "",
        "",
        "",
        "",
        "",
        "",
    ]
    .join("\n");
    let mut q = query_head(sr, &permissions, start, terms);
    let _ = write!(
        q,
        "&skoid={}&sktid={}&skt={}&ske={}&sks={}&skv={}",
        enc(&udk.signed_oid),
        enc(&udk.signed_tid),
        enc(&udk.signed_start),
        enc(&udk.signed_expiry),
        enc(&udk.signed_service),
        enc(&udk.signed_version)
    );
    let _ = write!(q, "&sig={}", enc(&signer.sign(&sts)));
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV_KEY: &str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

    fn terms(p: &str) -> SasTerms {
        SasTerms {
            permissions: p.into(),
            start: None,
            expiry: "2099-01-01T00:00:00Z".into(),
            https_only: false,
        }
    }

    #[test]
    fn service_sas_layout() {
        let key = SharedKey::new("devstoreaccount1", DEV_KEY).unwrap();
        let blob = SasResource::Blob {
            container: "c".into(),
            blob: "b.vhd".into(),
        };
        let q = service_sas(&key, &blob, &terms("cw")).unwrap();
        // The signature is over exactly the fields sent (checked end to end against Azurite
        // by the upload tests); here the shape.
        let sts = "cw\n\n2099-01-01T00:00:00Z\n/blob/devstoreaccount1/c/b.vhd\n\n\n\n2021-08-06\nb\n\n\n\n\n\n\n";
        assert_eq!(
            q,
            format!(
                "sv=2021-08-06&sr=b&sp=cw&se=2099%2D01%2D01T00%3A00%3A00Z&sig={}",
                enc(&key.sign(sts))
            )
        );
    }

    #[test]
    fn user_delegation_sas_layout() {
        let udk = UserDelegationKey {
            signed_oid: "11111111-1111-1111-1111-111111111111".into(),
            signed_tid: "22222222-2222-2222-2222-222222222222".into(),
            signed_start: "2026-01-01T00:00:00Z".into(),
            signed_expiry: "2026-01-08T00:00:00Z".into(),
            signed_service: "b".into(),
            signed_version: "2021-08-06".into(),
            value: DEV_KEY.into(),
        };
        let c = SasResource::Container {
            container: "vhds".into(),
        };
        let t = SasTerms {
            permissions: "lr".into(),
            start: Some("2026-01-01T00:00:00Z".into()),
            expiry: "2026-01-07T00:00:00Z".into(),
            https_only: true,
        };
        let q = user_delegation_sas(&udk, "acct", &c, &t).unwrap();
        // 24 fields (the 2020-12-06 layout), signed with the delegation key's value.
        let sts = "rl\n2026-01-01T00:00:00Z\n2026-01-07T00:00:00Z\n/blob/acct/vhds\n\
                   11111111-1111-1111-1111-111111111111\n22222222-2222-2222-2222-222222222222\n\
                   2026-01-01T00:00:00Z\n2026-01-08T00:00:00Z\nb\n2021-08-06\n\n\n\n\nhttps\n2021-08-06\nc\n\n\n\n\n\n\n";
        assert_eq!(sts.split('\n').count(), 24);
        let sig = enc(&SharedKey::new("acct", DEV_KEY).unwrap().sign(sts));
        assert!(q.starts_with("sv=2021-08-06&sr=c&sp=rl&st="), "{q}");
        assert!(
            q.contains(
                "&spr=https&skoid=11111111%2D1111%2D1111%2D1111%2D111111111111&sktid=22222222%2D"
            ),
            "{q}"
        );
        assert!(q.contains("&sks=b&skv=2021%2D08%2D06&sig="), "{q}");
        assert!(q.ends_with(&format!("&sig={sig}")), "{q}");
        assert!(!format!("{udk:?}").contains(DEV_KEY));
    }

    #[test]
    fn permissions_are_put_in_canonical_order() {
        let key = SharedKey::new("a", DEV_KEY).unwrap();
        assert!(account_sas(&key, &terms("wcr"))
            .unwrap()
            .contains("&sp=rcw&"));
    }

    #[test]
    fn bad_terms_are_refused() {
        let key = SharedKey::new("a", DEV_KEY).unwrap();
        let c = SasResource::Container {
            container: "c".into(),
        };
        for (t, why) in [
            (terms(""), "no permission"),
            (terms("rr"), "repeated"),
            (terms("q"), "unknown letter"),
            (
                SasTerms {
                    expiry: "tomorrow".into(),
                    ..terms("r")
                },
                "expiry not a timestamp",
            ),
        ] {
            let e = service_sas(&key, &c, &t).unwrap_err();
            assert_eq!(e.code(), "sas.terms", "{why}");
            assert!(account_sas(&key, &t).is_err(), "{why}");
        }
    }
}
