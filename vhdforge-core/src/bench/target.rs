//! Where the bench writes, and how it leaves that place as it found it.
//!
//! - A **container**: each step writes a new page blob `vhdforge-bench-*.vhd`, created as
//!   `upload` creates its blobs (a random sequence number every Put Page is conditional on);
//!   afterwards every one of them is deleted.
//! - A **managed disk** (its upload SAS, docs/azure-page-blob.md §2): the user's own disk,
//!   which exists already at a fixed size and may be neither created nor deleted. The bench
//!   writes it only when it is empty (it would otherwise destroy data), every step writes the
//!   same pages, and afterwards those pages are cleared (Clear Pages) and the disk is listed
//!   again to prove it holds nothing of the bench's.
//!
//! `--keep` keeps the blobs, or leaves the pages on the disk; the report lists them.

use super::plan::SyntheticDisk;
use super::BenchOptions;
use crate::error::{Error, ErrorKind, Result};
use crate::progress::Cancel;
use crate::storage::retry::with_retries;
use crate::storage::{BlobClient, Failure, RetryPolicy};
use std::ops::Range;
use std::sync::{Arc, Mutex};

/// What DEST is.
#[derive(Debug)]
pub(super) enum Target {
    /// A container client; each step gets a new blob in it.
    Container(BlobClient),
    /// The managed disk's client; every step writes the disk itself.
    ManagedDisk(BlobClient),
}

/// The blob one step writes: its client and the sequence number its writes are
/// conditional on (a blob the bench created), as upload's writes are.
pub(super) struct StepBlob {
    pub client: BlobClient,
    pub seq: Option<u64>,
}

fn quiet(_: &Failure) {}

impl Target {
    /// DEST as a container URL or a managed-disk SAS (by its host, or `managed_disk`).
    pub(super) fn resolve(dest: &str, opts: &BenchOptions, conns: usize) -> Result<Target> {
        let mut url = reqwest::Url::parse(dest).map_err(|e| {
            Error::new(
                ErrorKind::InvalidInput,
                "upload.url",
                format!(
                    "{} is not a URL ({e}); expected a container URL \
                     https://ACCOUNT.blob.core.windows.net/CONTAINER[?SAS] or a managed disk's upload SAS",
                    crate::storage::redact(dest)
                ),
            )
        })?;
        let managed = opts.managed_disk
            || url
                .host_str()
                .is_some_and(crate::storage::hosts::is_managed_disk_host);
        if managed {
            let c = BlobClient::new(url.as_str(), &opts.credentials, &opts.api_version, conns)?;
            return Ok(Target::ManagedDisk(c));
        }
        // A placeholder blob name makes it a blob URL the shared client accepts; only its
        // container is used.
        url.path_segments_mut()
            .map_err(|()| super::bad("DEST cannot be a base URL".into()))?
            .pop_if_empty()
            .push("vhdforge-bench-placeholder");
        let c = BlobClient::new(url.as_str(), &opts.credentials, &opts.api_version, conns)?;
        Ok(Target::Container(c.container()))
    }

    /// The destination as shown (secrets redacted).
    pub(super) fn display(&self) -> &str {
        match self {
            Target::Container(c) | Target::ManagedDisk(c) => c.display(),
        }
    }

    pub(super) fn is_managed_disk(&self) -> bool {
        matches!(self, Target::ManagedDisk(_))
    }

    /// Before anything is written: the disk area to generate. A container takes `size`
    /// (default 8 GiB) rounded up to a whole MiB, as Azure wants, and is created when
    /// missing; a managed disk dictates its own, must equal `size` when given, and must be
    /// empty.
    pub(super) async fn prepare(
        &self,
        size: Option<u64>,
        retry: &RetryPolicy,
        cancel: &Cancel,
    ) -> Result<u64> {
        match self {
            Target::Container(c) => {
                const MIB: u64 = 1 << 20;
                let disk = size.unwrap_or(8 << 30).div_ceil(MIB).max(1) * MIB;
                if disk + 512 > crate::azure::MAX_PAGE_BLOB {
                    return Err(super::bad(format!(
                        "--size {disk} is over the 8 TiB a page blob can hold"
                    )));
                }
                // A container that does not exist yet is created (an existing one is fine);
                // a SAS that may not create containers fails here harmlessly, and the blob
                // creation that follows then says what is wrong.
                let _ = c.create_container().await;
                Ok(disk)
            }
            Target::ManagedDisk(c) => prepare_disk(c, size, retry, cancel).await,
        }
    }

    /// The blob step `name` writes: a new page blob in the container, or the disk.
    pub(super) async fn step_blob(
        &self,
        name: &str,
        disk: &SyntheticDisk,
        retry: &RetryPolicy,
        cancel: &Cancel,
    ) -> Result<StepBlob> {
        match self {
            Target::ManagedDisk(c) => Ok(StepBlob {
                client: c.clone(),
                // A managed disk's sequence number is not ours (as in upload).
                seq: None,
            }),
            Target::Container(c) => {
                let blob = c.child(name);
                // Never 0 (what other tools leave) and below 2^53 (Azurite keeps it as a
                // double), as upload's.
                let seq = rand::random::<u64>() % ((1 << 53) - 1) + 1;
                with_retries(retry, cancel, &quiet, || {
                    blob.create_page_blob_sequenced(disk.output_size(), false, seq)
                })
                .await
                .map_err(|f| f.into_error("creating the bench blob", blob.display()))?;
                Ok(StepBlob {
                    client: blob,
                    seq: Some(seq),
                })
            }
        }
    }

    /// Remove what the bench wrote: delete `blobs` (the names the steps used), or clear the
    /// disk's bench pages and check it is empty again. Runs whether the sweep succeeded, failed
    /// or was interrupted; not cancellable (a second Ctrl-C quits at once).
    pub(super) async fn clean_up(&self, blobs: &[String], disk: &SyntheticDisk) -> Result<()> {
        let retry = RetryPolicy::default();
        let never = Cancel::never();
        match self {
            Target::Container(c) => {
                let mut first = None;
                for name in blobs {
                    let b = c.child(name);
                    if let Err(f) = with_retries(&retry, &never, &quiet, || b.delete()).await {
                        first.get_or_insert_with(|| {
                            f.into_error("deleting", b.display()).context(
                                "bench.cleanup",
                                format!(
                                    "the bench blob {} could not be deleted: delete it by hand",
                                    b.display()
                                ),
                            )
                        });
                    }
                }
                first.map_or(Ok(()), Err)
            }
            Target::ManagedDisk(c) => clear_disk(c, disk, &retry).await,
        }
    }
}

/// A managed disk's size against `--size`, and proof that it is empty.
async fn prepare_disk(
    c: &BlobClient,
    size: Option<u64>,
    retry: &RetryPolicy,
    cancel: &Cancel,
) -> Result<u64> {
    let shown = c.display();
    let props = with_retries(retry, cancel, &quiet, || c.head())
        .await
        .map_err(|f| f.into_error("reading the properties of", shown))?;
    if !props.blob_type.is_empty() && !props.blob_type.eq_ignore_ascii_case("PageBlob") {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "bench.size_mismatch",
            format!(
                "{shown} is a {} blob, not a managed disk (a page blob)",
                props.blob_type
            ),
        ));
    }
    if props.size <= 512 || props.size % 512 != 0 {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "bench.size_mismatch",
            format!(
                "{shown} is {} bytes, not a whole number of 512-byte pages holding a disk \
                 area and a footer: it cannot be a disk created for upload",
                props.size
            ),
        ));
    }
    let disk = props.size - 512;
    if let Some(s) = size.filter(|&s| s != disk) {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "bench.size_mismatch",
            format!(
                "{shown} is a managed disk of {} bytes (a disk area of {disk} bytes and the \
                 512-byte footer), but --size asks for {s}: bench writes only the disk it is \
                 given, at its size; give --size {disk} or leave --size out",
                props.size
            ),
        ));
    }
    let present = with_retries(retry, cancel, &quiet, || c.page_ranges())
        .await
        .map_err(|f| f.into_error("listing the page ranges of", shown))?;
    if !present.is_empty() {
        let bytes: u64 = present.iter().map(|r| r.end - r.start).sum();
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "bench.not_empty",
            format!(
                "{shown} already holds {bytes} bytes of data in {} range(s): bench writes and \
                 then clears pages, which would destroy them; nothing was written. Bench an \
                 empty disk (a new one created with --upload-size-bytes {}), or a container",
                present.len(),
                props.size
            ),
        ));
    }
    Ok(disk)
}

/// The ranges the bench writes on the disk (its data requests and the footer), merged.
fn written_runs(disk: SyntheticDisk) -> impl Iterator<Item = Range<u64>> + Send {
    let mut k = 0u64;
    let n = disk.data_requests();
    let mut footer = Some(disk.footer());
    let mut pending: Option<Range<u64>> = None;
    std::iter::from_fn(move || {
        let mut run = pending.take();
        loop {
            let next = if k < n {
                k += 1;
                Some(disk.data_request(k - 1))
            } else {
                footer.take()
            };
            match (next, run.as_mut()) {
                (Some(r), Some(cur)) if r.start == cur.end => cur.end = r.end,
                (Some(r), Some(_)) => {
                    pending = Some(r);
                    return run;
                }
                (Some(r), None) => run = Some(r),
                (None, _) => return run,
            }
        }
    })
}

/// Clear every page the bench may have written (the disk was empty before: nothing else is
/// touched), a few at a time, then list the disk to prove it is empty again.
async fn clear_disk(c: &BlobClient, disk: &SyntheticDisk, retry: &RetryPolicy) -> Result<()> {
    const IN_FLIGHT: usize = 8;
    let shown = c.display();
    let runs = Arc::new(Mutex::new(written_runs(disk.clone())));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..IN_FLIGHT {
        let (c, runs, retry) = (c.clone(), runs.clone(), retry.clone());
        set.spawn(async move {
            loop {
                let next = runs
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .next();
                let Some(r) = next else { return Ok(()) };
                with_retries(&retry, &Cancel::never(), &quiet, || {
                    c.clear_pages(r.clone())
                })
                .await?;
            }
        });
    }
    let cleanup = |e: Error| {
        e.context(
            "bench.cleanup",
            format!(
                "the bench's pages on {shown} could not all be cleared, so the disk holds bench \
                 data: clear it with Clear Pages before uploading to it"
            ),
        )
    };
    let mut failed = None;
    while let Some(r) = set.join_next().await {
        let f = match r {
            Ok(Ok(())) => continue,
            Ok(Err(f)) => f,
            Err(e) => Failure::network(format!("a clearing task failed: {e}")),
        };
        failed.get_or_insert(f);
    }
    if let Some(f) = failed {
        return Err(cleanup(f.into_error("clearing pages of", shown)));
    }
    let left = with_retries(retry, &Cancel::never(), &quiet, || c.page_ranges())
        .await
        .map_err(|f| cleanup(f.into_error("listing the page ranges of", shown)))?;
    if let Some(foreign) = outside_runs(&left, disk) {
        // Not bench's pages: someone else wrote to the disk while bench ran. Clearing them
        // (the usual advice) would destroy that writer's data, so the advice differs.
        return Err(Error::new(
            ErrorKind::Remote,
            "bench.cleanup",
            format!(
                "{shown} lists {} range(s) after bench cleared its pages, and bytes {}..{} are \
                 outside every page bench wrote: another writer put data on this disk while \
                 bench ran (bench needs the disk to itself). Do not clear the disk until you \
                 know whose data that is",
                left.len(),
                foreign.start,
                foreign.end
            ),
        ));
    }
    if let Some(r) = left.first() {
        return Err(cleanup(Error::new(
            ErrorKind::Remote,
            "bench.cleanup",
            format!(
                "{shown} still lists {} range(s) after Clear Pages, the first {}..{}",
                left.len(),
                r.start,
                r.end
            ),
        )));
    }
    Ok(())
}

/// The first part of `left` (sorted, disjoint ranges, as a page listing gives them) that no
/// page bench wrote covers, if any.
fn outside_runs(left: &[Range<u64>], disk: &SyntheticDisk) -> Option<Range<u64>> {
    let mut runs = written_runs(disk.clone());
    let mut cur = runs.next();
    for l in left {
        let mut pos = l.start;
        while pos < l.end {
            while cur.as_ref().is_some_and(|r| r.end <= pos) {
                cur = runs.next();
            }
            match &cur {
                Some(r) if r.start <= pos => pos = r.end.min(l.end),
                Some(r) => return Some(pos..r.start.min(l.end)),
                None => return Some(pos..l.end),
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn pages_outside_what_bench_wrote_are_found() {
        // Bench wrote 12..16 MiB and 28..32 MiB + the footer.
        let d = SyntheticDisk::new(32 * MIB, 4 * MIB, 0.25);
        assert_eq!(outside_runs(&[], &d), None);
        assert_eq!(
            outside_runs(&[13 * MIB..14 * MIB, 30 * MIB..31 * MIB], &d),
            None
        );
        assert_eq!(
            outside_runs(std::slice::from_ref(&(12 * MIB..17 * MIB)), &d),
            Some(16 * MIB..17 * MIB),
            "spills past a bench run"
        );
        assert_eq!(
            outside_runs(std::slice::from_ref(&(0..512)), &d),
            Some(0..512),
            "before any run"
        );
        assert_eq!(
            outside_runs(&[13 * MIB..14 * MIB, 20 * MIB..21 * MIB], &d),
            Some(20 * MIB..21 * MIB),
            "between runs"
        );
        assert_eq!(
            outside_runs(std::slice::from_ref(&(32 * MIB + 512..32 * MIB + 1024)), &d),
            Some(32 * MIB + 512..32 * MIB + 1024),
            "after the last run"
        );
    }

    #[test]
    fn written_runs_merge_neighbours_and_end_with_the_footer() {
        // A quarter of the disk: separate requests, the footer its own run.
        let d = SyntheticDisk::new(16 * MIB, 4 * MIB, 0.25);
        let runs: Vec<_> = written_runs(d.clone()).collect();
        assert_eq!(runs, vec![12 * MIB..16 * MIB + 512]);
        let d = SyntheticDisk::new(32 * MIB, 4 * MIB, 0.25);
        let runs: Vec<_> = written_runs(d.clone()).collect();
        assert_eq!(
            runs,
            vec![12 * MIB..16 * MIB, 28 * MIB..32 * MIB + 512],
            "the last request touches the footer"
        );
        // All data: one run, the whole output.
        let d = SyntheticDisk::new(10 * MIB, 4 * MIB, 1.0);
        assert_eq!(
            written_runs(d.clone()).collect::<Vec<_>>(),
            vec![0..10 * MIB + 512]
        );
        // Half: every other request, then the footer apart.
        let d = SyntheticDisk::new(8 * MIB, MIB, 0.5);
        let runs: Vec<_> = written_runs(d.clone()).collect();
        assert_eq!(runs.len(), 4);
        assert_eq!(runs[3], 7 * MIB..8 * MIB + 512);
    }
}
