//! The Azure Blob storage client every remote command shares (upload, verify, and the
//! copy / SAS / bench / remote-check commands to come), split by concern
//! (docs/azure-page-blob.md §1):
//!
//! - [`blob`]: [`BlobClient`], the HTTP operations on one blob (Put Page, Get Page Ranges …);
//! - [`auth`]: which credential a request uses, and Shared Key signing;
//! - [`cloud`], [`connstr`]: the Azure clouds' endpoints, and connection strings;
//! - [`sas`]: signing shared access signatures with an account key (or a user delegation key);
//! - [`token`]: Entra ID sign-in (`--auth login`) through `azure_identity`, tokens kept fresh;
//! - [`hosts`]: plain http only to loopback, managed-disk hosts, and a key only for its
//!   own account's endpoints;
//! - `http`: the HTTP client (trusted roots, `--ca-cert`, proxies, no redirects);
//! - [`failure`]: what a failed request means (retry, throttle, re-read, stop) and the
//!   message that says what to fix;
//! - [`retry`]: backoff with jitter and the retry loop;
//! - [`redact`]: secrets removed, by parsing, from everything that leaves the process;
//! - [`xml`]: the service's error bodies and page lists.

pub mod auth;
pub mod blob;
pub mod cloud;
pub mod connstr;
pub mod failure;
pub mod hosts;
mod http;
pub mod names;
pub mod redact;
pub mod retry;
pub mod sas;
pub mod token;
pub mod xml;

pub use auth::{AuthMode, Credential, CredentialEnv, SharedKey};
pub use blob::{BlobClient, BlobProps, CopyState, Integrity, PageListLimits};
pub use cloud::Cloud;
pub use failure::{Class, Failure, TransportKind};
pub use redact::{redact, redact_text, Redacted};
pub use retry::RetryPolicy;
