//! The HTTP client every blob request goes through (docs/azure-page-blob.md §1.5): which
//! roots are trusted, which proxy is used, no redirects.
//!
//! Trust: the roots compiled in (webpki-roots, so a machine with an empty or stale store
//! still reaches Azure) plus the operating system's store (so a corporate TLS-inspection
//! root that IT installed works; on Linux `SSL_CERT_FILE`/`SSL_CERT_DIR` override where it
//! is read from), plus `--ca-cert FILE`. Proxies: `HTTPS_PROXY`/`ALL_PROXY` and `NO_PROXY`
//! from the environment (reqwest reads them), never for loopback hosts.

use super::auth::CredentialEnv;
use super::hosts::is_loopback_host;
use crate::error::{Error, ErrorKind, Result};
use std::time::Duration;

/// Largest `--ca-cert` file read: a bundle of every public root is about 250 KiB.
const MAX_CA_FILE: u64 = 4 << 20;

fn ca_error(msg: String) -> Error {
    Error::new(ErrorKind::InvalidInput, "upload.ca_cert", msg)
}

/// The certificates of the PEM file at `path`, with errors that say what is wrong with it.
fn read_ca_file(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>> {
    use crate::fsutil::{read_named_file, NamedFileError};
    let shown = path.display();
    let pem = read_named_file(path, MAX_CA_FILE).map_err(|e| match e {
        NamedFileError::Open(e) => ca_error(format!("--ca-cert {shown}: cannot open it ({e})")),
        NamedFileError::Read(e) => ca_error(format!("--ca-cert {shown}: cannot read it ({e})")),
        NamedFileError::NotAFile(_) => ca_error(format!(
            "--ca-cert {shown} is not a regular file; give the PEM file of the CA certificates"
        )),
        NamedFileError::TooLarge => ca_error(format!(
            "--ca-cert {shown} is larger than 4 MiB; expected a PEM file of CA certificates"
        )),
    })?;
    if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
        return Err(ca_error(format!(
            "--ca-cert {shown} holds no PEM certificate (-----BEGIN CERTIFICATE-----); give the CA \
             certificate in PEM form (convert a DER .cer with `openssl x509 -inform der -in X.cer -out X.pem`)"
        )));
    }
    reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
        ca_error(format!(
            "--ca-cert {shown}: a certificate in it cannot be parsed ({})",
            e.without_url()
        ))
    })
}

/// The HTTP client for `host`: trusted roots as above, no redirects, no proxy for loopback
/// hosts, idle connections dropped before Azurite drops them.
///
/// `https` is false for a client that only ever talks plain http (allowed to loopback hosts
/// only, and no request follows a redirect): it loads no built-in or system roots, which
/// costs several milliseconds of parsing per process and would never be used. Such a client
/// trusts no server certificate at all, so it can fail an https request but never accept one
/// it should not.
pub(crate) fn client(
    host: &str,
    https: bool,
    connections: usize,
    env: &CredentialEnv,
) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .tls_built_in_webpki_certs(https)
        .tls_built_in_native_certs(https);
    if let Some(path) = &env.ca_cert {
        for cert in read_ca_file(path)? {
            builder = builder.add_root_certificate(cert);
        }
    }
    if is_loopback_host(host) {
        // A proxy from the environment must not intercept an emulator or a local mock.
        builder = builder.no_proxy();
    }
    builder
        .connect_timeout(Duration::from_secs(20))
        .pool_max_idle_per_host(connections.max(1))
        // Azurite closes idle connections after 5 s; do not keep them longer.
        .pool_idle_timeout(Duration::from_secs(4))
        .http1_only()
        // Never follow a redirect: it could send the SAS or a signed request to another
        // host, or downgrade https to http. A 3xx is a fatal error instead.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| {
            Error::new(
                ErrorKind::Io,
                "upload.transport",
                format!("cannot set up the HTTP client: {}", e.without_url()),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_ca_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let env = |p: &std::path::Path| CredentialEnv {
            ca_cert: Some(p.to_path_buf()),
            ..CredentialEnv::default()
        };
        let missing = dir.path().join("missing.pem");
        let e = client("h", true, 1, &env(&missing)).unwrap_err();
        assert_eq!(e.code(), "upload.ca_cert");
        assert!(e.message().contains("cannot open"), "{e}");
        let der = dir.path().join("x.cer");
        std::fs::write(&der, [0x30, 0x82, 0x01, 0x00]).unwrap();
        let e = client("h", true, 1, &env(&der)).unwrap_err();
        assert!(e.message().contains("no PEM certificate"), "{e}");
        let broken = dir.path().join("b.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\nnot base64 !!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert_eq!(
            client("h", true, 1, &env(&broken)).unwrap_err().code(),
            "upload.ca_cert"
        );
        // A FIFO (or any non-file) is refused at once instead of blocking the open.
        #[cfg(unix)]
        {
            let fifo = dir.path().join("fifo.pem");
            let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
            // SAFETY: a valid NUL-terminated path.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
            let e = client("h", true, 1, &env(&fifo)).unwrap_err();
            assert!(e.message().contains("not a regular file"), "{e}");
        }
        // No --ca-cert: the built-in and OS roots are enough to build a client.
        assert!(client("h", true, 1, &CredentialEnv::default()).is_ok());
        // A plain-http client loads no roots and still builds, and a bad --ca-cert is
        // still reported for it.
        assert!(client("127.0.0.1", false, 1, &CredentialEnv::default()).is_ok());
        assert_eq!(
            client("127.0.0.1", false, 1, &env(&der))
                .unwrap_err()
                .code(),
            "upload.ca_cert"
        );
    }
}
