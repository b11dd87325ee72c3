//! A blob read as a disk image: [`BlobSource`] implements [`ReadAt`] with ranged GETs, so
//! the very parsers and rules `check FILE` uses judge a blob (docs/azure-page-blob.md §1.1).
//!
//! Reads are served in aligned chunks through a small cache (the parsers read a footer, a
//! header, a table: a few small reads, often twice). A chunk no page range touches is zeros
//! and costs no request; `next_data` answers from the page ranges, like `SEEK_DATA` on a
//! sparse file.

use crate::io::ReadAt;
use crate::progress::Cancel;
use crate::storage::retry::{with_retries, RetryPolicy};
use crate::storage::BlobClient;
use std::collections::VecDeque;
use std::io;
use std::ops::Range;
use std::sync::{Arc, Mutex};

/// Size of one cached read. Small: the parsers read structures of a few KiB.
const CHUNK: u64 = 64 << 10;
/// Chunks kept (4 MiB in all): memory stays bounded whatever the blob.
const CACHED_CHUNKS: usize = 64;

/// A blob read through range GETs, from a runtime of its own (the parsers are synchronous).
pub struct BlobSource {
    client: BlobClient,
    rt: Arc<tokio::runtime::Runtime>,
    size: u64,
    /// Written ranges (sorted), or `None` when the blob has no page list (a block blob).
    ranges: Option<Vec<Range<u64>>>,
    cache: Mutex<VecDeque<(u64, Arc<Vec<u8>>)>>,
    policy: RetryPolicy,
}

impl std::fmt::Debug for BlobSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlobSource({})", self.client.display())
    }
}

impl BlobSource {
    /// A source over `client`'s blob of `size` bytes, whose written ranges are `ranges`.
    pub fn new(
        client: BlobClient,
        rt: Arc<tokio::runtime::Runtime>,
        size: u64,
        ranges: Option<Vec<Range<u64>>>,
        policy: RetryPolicy,
    ) -> BlobSource {
        BlobSource {
            client,
            rt,
            size,
            ranges,
            cache: Mutex::new(VecDeque::new()),
            policy,
        }
    }

    /// Whether `r` overlaps a written range (always, when the page list is unknown).
    fn touches_data(&self, r: &Range<u64>) -> bool {
        match &self.ranges {
            None => true,
            Some(ranges) => {
                let i = ranges.partition_point(|x| x.end <= r.start);
                ranges.get(i).is_some_and(|x| x.start < r.end)
            }
        }
    }

    fn chunk(&self, start: u64) -> io::Result<Arc<Vec<u8>>> {
        let cache = |c: &mut VecDeque<(u64, Arc<Vec<u8>>)>| {
            c.iter().find(|(s, _)| *s == start).map(|(_, d)| d.clone())
        };
        if let Some(d) = cache(
            &mut self
                .cache
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        ) {
            return Ok(d);
        }
        let range = start..(start + CHUNK).min(self.size);
        let data = if self.touches_data(&range) {
            let client = &self.client;
            let r = range.clone();
            let got = self.rt.block_on(with_retries(
                &self.policy,
                &Cancel::never(),
                &|_| {},
                || client.get_range(r.clone()),
            ));
            got.map_err(|f| {
                io::Error::other(f.into_error("reading", self.client.display()).to_string())
            })?
            .to_vec()
        } else {
            // Nothing written there: a page blob reads zeros, and no request is needed.
            vec![0u8; usize::try_from(range.end - range.start).unwrap_or(0)]
        };
        let data = Arc::new(data);
        let mut c = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if c.len() >= CACHED_CHUNKS {
            c.pop_front();
        }
        c.push_back((start, data.clone()));
        Ok(data)
    }
}

impl ReadAt for BlobSource {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.size)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "read of {} bytes at {offset} past the end of the {}-byte blob",
                        buf.len(),
                        self.size
                    ),
                )
            })?;
        let mut pos = offset;
        while pos < end {
            let start = pos / CHUNK * CHUNK;
            let data = self.chunk(start)?;
            let from = usize::try_from(pos - start).unwrap_or(0);
            let n =
                usize::try_from((end - pos).min(data.len() as u64 - (pos - start))).unwrap_or(0);
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the blob returned less than its length",
                ));
            }
            let at = usize::try_from(pos - offset).unwrap_or(0);
            buf[at..at + n].copy_from_slice(&data[from..from + n]);
            pos += n as u64;
        }
        Ok(())
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn next_data(&self, offset: u64) -> io::Result<Option<Range<u64>>> {
        match &self.ranges {
            None => Ok((offset < self.size).then_some(offset..self.size)),
            Some(ranges) => {
                let i = ranges.partition_point(|x| x.end <= offset);
                Ok(ranges
                    .get(i)
                    .map(|x| x.start.max(offset)..x.end.min(self.size))
                    .filter(|r| r.start < r.end))
            }
        }
    }

    fn name(&self) -> String {
        self.client.display().to_string()
    }
}
