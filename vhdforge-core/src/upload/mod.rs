//! Parallel, zero-skipping, resumable page-blob upload (azure-page-blob.md).
