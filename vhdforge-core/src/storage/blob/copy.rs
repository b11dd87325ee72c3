//! The server-side copy operations (docs/azure-page-blob.md §1.1): Put Page From URL,
//! Copy Blob with its status, and Abort Copy Blob. A child of `blob` so they share its one
//! request path (signing, logging, redaction, error classification).

use super::{BlobClient, Failure};
use reqwest::Method;
use std::ops::Range;
use std::time::Duration;

/// `x-ms-copy-status` and what goes with it, as Get Blob Properties reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyState {
    /// `pending`, `success`, `aborted`, `failed` (empty when the blob was never copied to).
    pub status: String,
    /// `x-ms-copy-id`.
    pub id: Option<String>,
    /// `x-ms-copy-progress` as (bytes copied, bytes in all).
    pub progress: Option<(u64, u64)>,
    /// `x-ms-copy-status-description` (why a copy failed), secrets scrubbed.
    pub description: Option<String>,
}

impl BlobClient {
    /// Put Page From URL: the destination service reads `source_range` of `source` (a URL it
    /// can reach, carrying its own SAS) into `range` of this blob. Both ranges are 512-byte
    /// aligned, of equal length, at most 4 MiB.
    pub async fn put_page_from_url(
        &self,
        range: Range<u64>,
        source: &str,
        source_range: Range<u64>,
        timeout: Duration,
    ) -> Result<(), Failure> {
        let h = vec![
            ("x-ms-page-write", "update".to_string()),
            (
                "x-ms-range",
                format!("bytes={}-{}", range.start, range.end - 1),
            ),
            ("x-ms-copy-source", source.to_string()),
            (
                "x-ms-source-range",
                format!("bytes={}-{}", source_range.start, source_range.end - 1),
            ),
        ];
        self.send(Method::PUT, &[("comp", "page")], &h, None, timeout)
            .await
            .map(drop)
    }

    /// Copy Blob: start the service's asynchronous copy of `source` into this blob; returns
    /// `x-ms-copy-id`. Without `overwrite`, only if nothing exists here.
    pub async fn start_copy(&self, source: &str, overwrite: bool) -> Result<String, Failure> {
        let mut h = vec![("x-ms-copy-source", source.to_string())];
        if !overwrite {
            h.push(("if-none-match", "*".to_string()));
        }
        let resp = self
            .send(Method::PUT, &[], &h, None, Duration::from_secs(60))
            .await?;
        Ok(resp
            .headers()
            .get("x-ms-copy-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string())
    }

    /// The copy state from Get Blob Properties.
    pub async fn copy_state(&self) -> Result<CopyState, Failure> {
        let resp = self
            .send(Method::HEAD, &[], &[], None, Duration::from_secs(30))
            .await?;
        let h = resp.headers();
        let text = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
        let progress = text("x-ms-copy-progress").and_then(|p| {
            let (a, b) = p.split_once('/')?;
            Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
        });
        Ok(CopyState {
            status: text("x-ms-copy-status").unwrap_or_default(),
            id: text("x-ms-copy-id"),
            progress,
            description: text("x-ms-copy-status-description").map(|d| self.scrub(&d)),
        })
    }

    /// Abort Copy Blob of the copy `id`: the destination is left an empty blob.
    pub async fn abort_copy(&self, id: &str) -> Result<(), Failure> {
        let h = vec![("x-ms-copy-action", "abort".to_string())];
        self.send(
            Method::PUT,
            &[("comp", "copy"), ("copyid", id)],
            &h,
            None,
            Duration::from_secs(60),
        )
        .await
        .map(drop)
    }

    /// The URL of this blob carrying its SAS, for a service that must read it (Put Page
    /// From URL, Copy Blob); `None` when the client signs with a key or a sign-in token (the
    /// URL alone then grants nothing outside its own account).
    pub fn url_with_sas(&self) -> Option<String> {
        match &self.cred {
            super::Credential::Sas(q) => Some(format!("{}?{q}", self.base)),
            super::Credential::SharedKey(_) | super::Credential::Bearer(_) => None,
        }
    }
}
