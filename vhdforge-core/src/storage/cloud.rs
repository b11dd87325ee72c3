//! The Azure clouds (docs/azure-page-blob.md §1.5): which DNS suffix a storage account's blob
//! endpoint has when only the account name is known, and which hosts are managed-disk
//! upload endpoints in each cloud.
//!
//! The names are the ones `az cloud list` prints, so `AZURE_CLOUD` / `--cloud` take the same
//! value a user already has in `az cloud show`.

use crate::error::{Error, ErrorKind, Result};
use std::fmt;

/// One of the Azure clouds vhdforge knows the endpoints of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cloud {
    /// Global Azure (`core.windows.net`).
    #[default]
    AzureCloud,
    /// Azure operated by 21Vianet in China (`core.chinacloudapi.cn`).
    AzureChinaCloud,
    /// Azure Government, US (`core.usgovcloudapi.net`).
    AzureUsGovernment,
}

/// Every cloud, for tables and lookups.
pub const ALL_CLOUDS: [Cloud; 3] = [
    Cloud::AzureCloud,
    Cloud::AzureChinaCloud,
    Cloud::AzureUsGovernment,
];

impl Cloud {
    /// The name `az cloud list` uses.
    pub fn name(self) -> &'static str {
        match self {
            Cloud::AzureCloud => "AzureCloud",
            Cloud::AzureChinaCloud => "AzureChinaCloud",
            Cloud::AzureUsGovernment => "AzureUSGovernment",
        }
    }

    /// The storage endpoint suffix: blobs live at `ACCOUNT.blob.<suffix>`.
    pub fn storage_suffix(self) -> &'static str {
        match self {
            Cloud::AzureCloud => "core.windows.net",
            Cloud::AzureChinaCloud => "core.chinacloudapi.cn",
            Cloud::AzureUsGovernment => "core.usgovcloudapi.net",
        }
    }

    /// The suffix of the newer DNS-zone endpoints (`ACCOUNT.zNN.blob.<suffix>`, and the
    /// `md-…` managed-disk hosts under it).
    pub fn storage_zone_suffix(self) -> &'static str {
        match self {
            Cloud::AzureCloud => "storage.azure.net",
            Cloud::AzureChinaCloud => "storage.azure.cn",
            Cloud::AzureUsGovernment => "storage.azure.us",
        }
    }

    /// `https://ACCOUNT.blob.<suffix>`.
    pub fn blob_endpoint(self, account: &str) -> String {
        format!("https://{account}.blob.{}", self.storage_suffix())
    }

    /// Parse an `az` cloud name, case-insensitively (`AzureUSGovernment`, `azurechinacloud`).
    pub fn parse(name: &str) -> Result<Cloud> {
        let n = name.trim();
        ALL_CLOUDS
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(n))
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidInput,
                    "upload.cloud",
                    format!(
                        "unknown Azure cloud {:?} (from --cloud or AZURE_CLOUD); expected one of AzureCloud, \
                         AzureChinaCloud, AzureUSGovernment (the names `az cloud list` prints)",
                        super::redact::redact_text(n)
                    ),
                )
            })
    }

    /// The cloud `host` belongs to, if it is under one of its storage suffixes.
    pub fn of_host(host: &str) -> Option<Cloud> {
        let h = host.to_ascii_lowercase();
        ALL_CLOUDS.into_iter().find(|c| {
            h.ends_with(&format!(".{}", c.storage_suffix()))
                || h.ends_with(&format!(".{}", c.storage_zone_suffix()))
        })
    }
}

impl fmt::Display for Cloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Cloud {
    type Err = Error;
    fn from_str(s: &str) -> Result<Cloud> {
        Cloud::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_suffixes() {
        let cases = [
            (
                "AzureCloud",
                Cloud::AzureCloud,
                "https://a.blob.core.windows.net",
            ),
            (
                " azurechinacloud ",
                Cloud::AzureChinaCloud,
                "https://a.blob.core.chinacloudapi.cn",
            ),
            (
                "AZUREUSGOVERNMENT",
                Cloud::AzureUsGovernment,
                "https://a.blob.core.usgovcloudapi.net",
            ),
        ];
        for (name, cloud, endpoint) in cases {
            assert_eq!(Cloud::parse(name).unwrap(), cloud, "{name}");
            assert_eq!(cloud.blob_endpoint("a"), endpoint);
            assert_eq!(Cloud::parse(cloud.name()).unwrap(), cloud);
            assert_eq!(Cloud::of_host(&endpoint[8..]), Some(cloud));
        }
        let e = Cloud::parse("AzureGermanCloud").unwrap_err();
        assert_eq!(e.code(), "upload.cloud");
        assert!(e.message().contains("AzureUSGovernment"));
        assert_eq!(Cloud::of_host("a.blob.core.windows.net.evil.com"), None);
        assert_eq!(
            Cloud::of_host("md-x.z3.blob.storage.azure.us"),
            Some(Cloud::AzureUsGovernment)
        );
        assert_eq!(Cloud::default(), Cloud::AzureCloud);
    }
}
