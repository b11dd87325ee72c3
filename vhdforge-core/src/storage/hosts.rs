//! Which hosts get what (docs/azure-page-blob.md §1.5): plain http only to loopback, proxies
//! bypassed for loopback, managed-disk endpoints recognised, and an account key used only
//! for that account's own endpoints.
//!
//! A Shared Key request carries `Authorization: SharedKey account:signature`, which any
//! server receiving it can replay for about 15 minutes; so a key signs requests only to a
//! host that is provably the account's: `ACCOUNT.blob.<known cloud suffix>` (or the
//! connection string's `EndpointSuffix`), the connection string's `BlobEndpoint`, or a
//! loopback emulator whose path starts with the account name.

/// Blob endpoint suffixes of the public Azure clouds.
pub const KNOWN_ENDPOINT_SUFFIXES: &[&str] = &[
    "core.windows.net",
    "core.chinacloudapi.cn",
    "core.usgovcloudapi.net",
    "core.cloudapi.de",
];

/// True for hosts where plain HTTP is acceptable (the traffic never leaves the machine).
pub fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// True for managed-disk upload endpoints of every cloud: `md-*` hosts
/// (`md-impexp-….blob.core.windows.net`, `….chinacloudapi.cn`, `….usgovcloudapi.net`) and
/// the DNS-zone hosts `*.blob.storage.azure.{net,cn,us}`.
pub fn is_managed_disk_host(host: &str) -> bool {
    let h = host.to_ascii_lowercase();
    h.starts_with("md-")
        || super::cloud::ALL_CLOUDS
            .iter()
            .any(|c| h.ends_with(&format!(".blob.{}", c.storage_zone_suffix())))
}

/// Where a Shared Key may be sent, besides the public endpoints of its account.
#[derive(Debug, Clone, Default)]
pub struct KeyScope {
    /// The connection string's `BlobEndpoint` (e.g. an emulator or a private endpoint).
    pub blob_endpoint: Option<String>,
    /// The connection string's `EndpointSuffix` (a sovereign or private cloud).
    pub endpoint_suffix: Option<String>,
}

/// True when a request to `url` may be signed with `account`'s key.
pub fn key_may_sign_for(url: &reqwest::Url, account: &str, scope: &KeyScope) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.to_ascii_lowercase();
    let account = account.to_ascii_lowercase();
    if let Some(ep) = scope
        .blob_endpoint
        .as_deref()
        .and_then(|e| reqwest::Url::parse(e).ok())
    {
        let ep_path = ep.path().trim_end_matches('/');
        let same_origin = ep.scheme() == url.scheme()
            && ep.host_str().map(str::to_ascii_lowercase).as_deref() == Some(host.as_str())
            && ep.port_or_known_default() == url.port_or_known_default();
        let under = url.path() == ep_path
            || url.path().starts_with(&format!("{ep_path}/"))
            || ep_path.is_empty();
        if same_origin && under {
            return true;
        }
    }
    let suffixes = scope
        .endpoint_suffix
        .iter()
        .map(|s| s.trim_matches('.').to_ascii_lowercase())
        .chain(KNOWN_ENDPOINT_SUFFIXES.iter().map(|s| (*s).to_string()));
    for suffix in suffixes {
        if host == format!("{account}.blob.{suffix}")
            || host == format!("{account}-secondary.blob.{suffix}")
        {
            return true;
        }
    }
    // Azure DNS-zone endpoints: ACCOUNT.zNN.blob.storage.azure.{net,cn,us}.
    for cloud in super::cloud::ALL_CLOUDS {
        if let Some(rest) = host
            .strip_prefix(&format!("{account}.z"))
            .and_then(|r| r.strip_suffix(&format!(".blob.{}", cloud.storage_zone_suffix())))
        {
            if rest.len() == 2 && rest.bytes().all(|b| b.is_ascii_digit()) {
                return true;
            }
        }
    }
    // An emulator on this machine, path style: /ACCOUNT/CONTAINER/BLOB.
    is_loopback_host(&host)
        && url
            .path_segments()
            .and_then(|mut s| s.next())
            .is_some_and(|first| first.eq_ignore_ascii_case(&account))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_rules() {
        assert!(
            is_loopback_host("127.0.0.1")
                && is_loopback_host("localhost")
                && is_loopback_host("[::1]")
        );
        assert!(!is_loopback_host("example.com") && !is_loopback_host("10.0.0.1"));
        assert!(is_managed_disk_host("md-impexp-abc.blob.core.windows.net"));
        assert!(is_managed_disk_host("md-x.z1.blob.storage.azure.net"));
        assert!(!is_managed_disk_host("acct.blob.core.windows.net"));
        // Every cloud's managed-disk hosts.
        for host in [
            "md-impexp-x1.blob.core.chinacloudapi.cn",
            "md-impexp-x1.blob.core.usgovcloudapi.net",
            "md-abc.z7.blob.storage.azure.cn",
            "md-abc.z7.blob.storage.azure.us",
            "md-abc.z7.blob.storage.azure.net",
        ] {
            assert!(is_managed_disk_host(host), "{host}");
        }
        assert!(!is_managed_disk_host("acct.blob.core.chinacloudapi.cn"));
        assert!(!is_managed_disk_host("blob.storage.azure.us.evil.com"));
    }

    #[test]
    fn keys_sign_only_for_their_account() {
        let scope = KeyScope {
            blob_endpoint: Some("https://private.example.org:8443/stor".into()),
            endpoint_suffix: Some("core.example.cloud".into()),
        };
        let none = KeyScope::default();
        let cases = [
            // The account's public endpoints, any known cloud.
            ("https://acct.blob.core.windows.net/c/b", &none, true),
            ("https://ACCT.blob.core.chinacloudapi.cn/c/b", &none, true),
            (
                "https://acct-secondary.blob.core.windows.net/c/b",
                &none,
                true,
            ),
            ("https://acct.z12.blob.storage.azure.net/c/b", &none, true),
            ("https://acct.blob.core.usgovcloudapi.net/c/b", &none, true),
            ("https://acct.z01.blob.storage.azure.cn/c/b", &none, true),
            ("https://acct.z01.blob.storage.azure.us/c/b", &none, true),
            ("https://other.blob.core.chinacloudapi.cn/c/b", &none, false),
            (
                "https://other.blob.core.usgovcloudapi.net/c/b",
                &none,
                false,
            ),
            (
                "https://acct.z01.blob.storage.azure.us.evil.com/c/b",
                &none,
                false,
            ),
            ("https://acct.zab.blob.storage.azure.cn/c/b", &none, false),
            // Another account, or a look-alike host: refused.
            ("https://other.blob.core.windows.net/c/b", &none, false),
            (
                "https://acct.blob.core.windows.net.evil.com/c/b",
                &none,
                false,
            ),
            ("https://acct.blob.evil.com/c/b", &none, false),
            ("https://evil.com/acct/c/b", &none, false),
            // The connection string's own suffix and endpoint.
            ("https://acct.blob.core.example.cloud/c/b", &scope, true),
            ("https://private.example.org:8443/stor/c/b", &scope, true),
            ("https://private.example.org:9443/stor/c/b", &scope, false),
            ("http://private.example.org:8443/stor/c/b", &scope, false),
            ("https://private.example.org:8443/other/c/b", &scope, false),
            // A loopback emulator only when the path names the account.
            ("http://127.0.0.1:10000/acct/c/b", &none, true),
            ("http://127.0.0.1:10000/other/c/b", &none, false),
        ];
        for (url, scope, want) in cases {
            let u = reqwest::Url::parse(url).unwrap();
            assert_eq!(key_may_sign_for(&u, "acct", scope), want, "{url}");
        }
    }
}
