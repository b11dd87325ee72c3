//! Storage connection strings (`Key=Value;Key=Value`, docs/azure-page-blob.md §1.5), parsed
//! completely: `DefaultEndpointsProtocol`, `AccountName`, `AccountKey`, `EndpointSuffix`,
//! `BlobEndpoint`, `SharedAccessSignature` and `UseDevelopmentStorage`.
//!
//! Key names are case-insensitive and spacing around `;` and `=` is ignored, as the Azure
//! SDKs do; a value is everything after the first `=`, because base64 keys and SAS queries
//! contain `=` themselves. Keys vhdforge does not use (`QueueEndpoint`, …) are ignored.

use super::cloud::Cloud;
use crate::error::{Error, ErrorKind, Result};
use std::fmt;

/// Azurite's documented account and key (public knowledge, not a secret), which
/// `UseDevelopmentStorage=true` means.
const DEV_ACCOUNT: &str = "devstoreaccount1";
const DEV_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// A parsed connection string. Debug output never shows the key or the SAS.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ConnectionString {
    /// `DefaultEndpointsProtocol` (`https` or `http`), lowercased.
    pub protocol: Option<String>,
    /// `AccountName`.
    pub account_name: Option<String>,
    /// `AccountKey` (base64), as given.
    pub account_key: Option<String>,
    /// `EndpointSuffix` (e.g. `core.chinacloudapi.cn`), without surrounding dots.
    pub endpoint_suffix: Option<String>,
    /// `BlobEndpoint`, without a trailing `/`.
    pub blob_endpoint: Option<String>,
    /// `SharedAccessSignature`: a SAS query (`sv=…&sig=…`), without a leading `?`.
    pub sas: Option<String>,
}

impl fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionString")
            .field("protocol", &self.protocol)
            .field("account_name", &self.account_name)
            .field("account_key", &self.account_key.as_ref().map(|_| "<set>"))
            .field("endpoint_suffix", &self.endpoint_suffix)
            .field("blob_endpoint", &self.blob_endpoint)
            .field("sas", &self.sas.as_ref().map(|_| "<set>"))
            .finish()
    }
}

fn bad(msg: String) -> Error {
    Error::new(ErrorKind::InvalidInput, "upload.credentials", msg)
}

impl ConnectionString {
    /// Parse `text`. Errors name the part that is wrong but never echo a value.
    pub fn parse(text: &str) -> Result<ConnectionString> {
        let mut cs = ConnectionString::default();
        let mut dev = false;
        for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((k, v)) = part.split_once('=') else {
                // Show only what precedes a possible value: a stray key fragment is not
                // shown at all, since it could be part of a secret split by a bad `;`.
                return Err(bad(format!(
                    "AZURE_STORAGE_CONNECTION_STRING has a part without '=' ({} characters); \
                     expected Key=Value pairs separated by ';', e.g. \
                     AccountName=…;AccountKey=…;EndpointSuffix=core.windows.net",
                    part.len()
                )));
            };
            let key = k.trim().to_ascii_lowercase();
            let value = v.trim().to_string();
            let slot = match key.as_str() {
                "defaultendpointsprotocol" => &mut cs.protocol,
                "accountname" => &mut cs.account_name,
                "accountkey" => &mut cs.account_key,
                "endpointsuffix" => &mut cs.endpoint_suffix,
                "blobendpoint" => &mut cs.blob_endpoint,
                "sharedaccesssignature" => &mut cs.sas,
                "usedevelopmentstorage" => {
                    dev = value.eq_ignore_ascii_case("true");
                    continue;
                }
                _ => continue,
            };
            if value.is_empty() {
                continue;
            }
            if slot.as_deref().is_some_and(|old| old != value) {
                return Err(bad(format!(
                    "AZURE_STORAGE_CONNECTION_STRING gives {} twice with different values; keep one",
                    k.trim()
                )));
            }
            *slot = Some(value);
        }
        if dev {
            cs.account_name.get_or_insert_with(|| DEV_ACCOUNT.into());
            cs.account_key.get_or_insert_with(|| DEV_KEY.into());
            cs.protocol.get_or_insert_with(|| "http".into());
            cs.blob_endpoint
                .get_or_insert_with(|| format!("http://127.0.0.1:10000/{DEV_ACCOUNT}"));
        }
        if let Some(p) = &mut cs.protocol {
            *p = p.to_ascii_lowercase();
            if p != "https" && p != "http" {
                return Err(bad(format!(
                    "AZURE_STORAGE_CONNECTION_STRING: DefaultEndpointsProtocol is {p:?}; expected https (or http for a local emulator)"
                )));
            }
        }
        if let Some(s) = &mut cs.endpoint_suffix {
            *s = s.trim_matches('.').to_ascii_lowercase();
        }
        if let Some(e) = &mut cs.blob_endpoint {
            *e = e.trim_end_matches('/').to_string();
        }
        if let Some(s) = &mut cs.sas {
            *s = s.trim_start_matches('?').to_string();
        }
        if cs.account_key.is_some() && cs.account_name.is_none() {
            return Err(bad(
                "AZURE_STORAGE_CONNECTION_STRING has an AccountKey but no AccountName; add AccountName=…".into(),
            ));
        }
        if cs.account_key.is_none() && cs.sas.is_none() {
            return Err(bad(
                "AZURE_STORAGE_CONNECTION_STRING has neither AccountKey nor SharedAccessSignature; \
                 copy the whole connection string from the portal (Access keys, or Shared access signature)"
                    .into(),
            ));
        }
        if cs.account_name.is_none() && cs.blob_endpoint.is_none() {
            return Err(bad(
                "AZURE_STORAGE_CONNECTION_STRING has a SharedAccessSignature but neither AccountName nor \
                 BlobEndpoint, so it does not say which account it is for; add BlobEndpoint=https://ACCOUNT.blob.…"
                    .into(),
            ));
        }
        Ok(cs)
    }

    /// The blob service endpoint (no trailing `/`): `BlobEndpoint`, else
    /// `PROTOCOL://ACCOUNT.blob.SUFFIX` with the string's `EndpointSuffix` or `cloud`'s.
    pub fn blob_service(&self, cloud: Cloud) -> Option<String> {
        if let Some(e) = &self.blob_endpoint {
            return Some(e.clone());
        }
        let account = self.account_name.as_deref()?;
        let suffix = self
            .endpoint_suffix
            .as_deref()
            .unwrap_or(cloud.storage_suffix());
        let proto = self.protocol.as_deref().unwrap_or("https");
        Some(format!("{proto}://{account}.blob.{suffix}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "a2V5IHdpdGggcGFkZGluZw==";

    /// (connection string, cloud, account, key, SAS, blob service endpoint).
    type Case<'a> = (
        &'a str,
        Cloud,
        Option<&'a str>,
        Option<&'a str>,
        Option<&'a str>,
        &'a str,
    );

    #[test]
    fn table() {
        // (connection string, cloud, expected account, key?, sas?, blob service)
        let cases: &[Case] = &[
            (
                "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5IHdpdGggcGFkZGluZw==;EndpointSuffix=core.windows.net",
                Cloud::AzureCloud, Some("acct"), Some(KEY), None, "https://acct.blob.core.windows.net",
            ),
            // China, from the suffix, whatever --cloud says.
            (
                "DefaultEndpointsProtocol=https;AccountName=cn1;AccountKey=a2V5IHdpdGggcGFkZGluZw==;EndpointSuffix=core.chinacloudapi.cn",
                Cloud::AzureCloud, Some("cn1"), Some(KEY), None, "https://cn1.blob.core.chinacloudapi.cn",
            ),
            // No suffix: the cloud decides (US Gov).
            (
                "AccountName=gov;AccountKey=a2V5IHdpdGggcGFkZGluZw==",
                Cloud::AzureUsGovernment, Some("gov"), Some(KEY), None, "https://gov.blob.core.usgovcloudapi.net",
            ),
            (
                "AccountName=cn;AccountKey=a2V5IHdpdGggcGFkZGluZw==",
                Cloud::AzureChinaCloud, Some("cn"), Some(KEY), None, "https://cn.blob.core.chinacloudapi.cn",
            ),
            // Odd spacing and casing, empty parts, trailing dot on the suffix, unknown keys.
            (
                " ; accountname = acct ;  ACCOUNTKEY=a2V5IHdpdGggcGFkZGluZw== ;;endpointSUFFIX= .core.usgovcloudapi.net. ; QueueEndpoint=https://q;",
                Cloud::AzureCloud, Some("acct"), Some(KEY), None, "https://acct.blob.core.usgovcloudapi.net",
            ),
            // BlobEndpoint wins; trailing slash dropped.
            (
                "AccountName=devstoreaccount1;AccountKey=a2V5IHdpdGggcGFkZGluZw==;BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1/",
                Cloud::AzureCloud, Some("devstoreaccount1"), Some(KEY), None, "http://127.0.0.1:10000/devstoreaccount1",
            ),
            // A SAS connection string: the SAS keeps its '=' and '&', the leading '?' goes.
            (
                "BlobEndpoint=https://acct.blob.core.windows.net/;SharedAccessSignature=?sv=2021-08-06&ss=b&srt=co&sp=rwc&se=2030-01-01T00%3A00%3A00Z&sig=abc%2Bdef%3D",
                Cloud::AzureCloud, None, None,
                Some("sv=2021-08-06&ss=b&srt=co&sp=rwc&se=2030-01-01T00%3A00%3A00Z&sig=abc%2Bdef%3D"),
                "https://acct.blob.core.windows.net",
            ),
            (
                "AccountName=acct;SharedAccessSignature=sv=1&sig=x%3D;EndpointSuffix=core.chinacloudapi.cn",
                Cloud::AzureCloud, Some("acct"), None, Some("sv=1&sig=x%3D"), "https://acct.blob.core.chinacloudapi.cn",
            ),
            // The emulator shortcut.
            (
                "UseDevelopmentStorage=true",
                Cloud::AzureCloud, Some("devstoreaccount1"), Some(DEV_KEY), None, "http://127.0.0.1:10000/devstoreaccount1",
            ),
            // http protocol respected for the built endpoint (loopback rule applies later).
            (
                "DefaultEndpointsProtocol=HTTP;AccountName=a;AccountKey=a2V5IHdpdGggcGFkZGluZw==",
                Cloud::AzureCloud, Some("a"), Some(KEY), None, "http://a.blob.core.windows.net",
            ),
        ];
        for (text, cloud, account, key, sas, service) in cases {
            let cs = ConnectionString::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(cs.account_name.as_deref(), *account, "{text}");
            assert_eq!(cs.account_key.as_deref(), *key, "{text}");
            assert_eq!(cs.sas.as_deref(), *sas, "{text}");
            assert_eq!(cs.blob_service(*cloud).as_deref(), Some(*service), "{text}");
            let dbg = format!("{cs:?}");
            assert!(!dbg.contains(KEY) && !dbg.contains("sig="), "{dbg}");
        }
    }

    #[test]
    fn errors_are_clear_and_secret_free() {
        let cases = [
            (
                "AccountName=a",
                "neither AccountKey nor SharedAccessSignature",
            ),
            ("AccountKey=c2VjcmV0c2VjcmV0", "no AccountName"),
            (
                "SharedAccessSignature=sv=1&sig=c2VjcmV0",
                "neither AccountName nor BlobEndpoint",
            ),
            ("AccountName=a;c2VjcmV0c2VjcmV0", "without '='"),
            (
                "AccountName=a;AccountKey=c2VjcmV0c2VjcmV0;DefaultEndpointsProtocol=ftp",
                "DefaultEndpointsProtocol",
            ),
            (
                "AccountName=a;AccountName=b;AccountKey=c2VjcmV0c2VjcmV0",
                "twice",
            ),
        ];
        for (text, want) in cases {
            let e = ConnectionString::parse(text).unwrap_err();
            assert_eq!(e.code(), "upload.credentials", "{text}");
            assert!(e.message().contains(want), "{text}: {}", e.message());
            assert!(!e.to_string().contains("c2VjcmV0"), "{text}: {e}");
        }
    }
}
