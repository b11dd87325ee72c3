//! The upload engine: destination preparation, the bounded read → checksum → send
//! pipeline, retries with backoff and AIMD concurrency, resume, footer last.

use super::client::{md5_header, with_retries, BlobClient, Class, Failure, Integrity};
use super::journal::{self, Journal, SourceIdentity};
use super::plan::{self, is_covered, normalize, subtract, DataPlan, PAGE};
use super::{PlanSummary, Progress, UploadOptions, UploadSource, UploadSummary};
use crate::convert::AzurePlan;
use crate::error::{Error, ErrorKind, Result};
use crate::format::vhd::footer::FOOTER_SIZE;
use crate::image::DiskImage;
use bytes::Bytes;
use md5::Digest;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Zero source for whole-stream MD5 over gaps.
static ZEROS: [u8; 64 << 10] = [0u8; 64 << 10];

/// Additive-increase / multiplicative-decrease limit on requests in flight.
#[derive(Debug)]
struct Aimd {
    max: f64,
    state: Mutex<(f64, Instant)>,
}

impl Aimd {
    fn new(max: usize) -> Self {
        Aimd {
            max: max.max(1) as f64,
            state: Mutex::new((max.max(1) as f64, Instant::now() - Duration::from_secs(10))),
        }
    }
    fn limit(&self) -> usize {
        self.state.lock().map_or(1, |s| s.0 as usize).max(1)
    }
    /// Throttled: cut to 70 %, at most once per half second (one burst of 503s is one signal).
    fn throttled(&self) {
        if let Ok(mut s) = self.state.lock() {
            if s.1.elapsed() >= Duration::from_millis(500) {
                s.0 = (s.0 * 0.7).max(1.0);
                s.1 = Instant::now();
            }
        }
    }
    /// Success: grow by about one request per round trip of the whole window.
    fn success(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.0 = (s.0 + 1.0 / s.0).min(self.max);
        }
    }
}

/// Shared state of the senders.
struct Ctx {
    client: BlobClient,
    image: Arc<dyn DiskImage>,
    azure: AzurePlan,
    opts: UploadOptions,
    progress: Arc<dyn Progress>,
    aimd: Aimd,
    retries: AtomicU64,
    sent_bytes: AtomicU64,
    requests: AtomicU64,
}

impl Ctx {
    fn integrity(&self) -> Integrity {
        if self.opts.md5_per_request {
            Integrity::Md5
        } else {
            Integrity::Crc64
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        super::client::backoff(&self.opts.retry, attempt)
    }

    fn timeout_for(&self, len: u64) -> Duration {
        self.opts.request_timeout
            + self
                .opts
                .timeout_per_mib
                .mul_f64(len as f64 / (1 << 20) as f64)
    }

    /// Read stream bytes `range` (disk area or footer).
    fn read(&self, range: &Range<u64>) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; (range.end - range.start) as usize];
        if range.start >= self.azure.disk_size {
            buf.copy_from_slice(&self.azure.footer_bytes());
        } else {
            self.azure
                .read_disk(self.image.as_ref(), &mut buf, range.start)?;
        }
        Ok(buf)
    }
}

fn integrity_value(kind: Integrity, data: &[u8]) -> (Integrity, String) {
    match kind {
        Integrity::Crc64 => (kind, super::client::crc64_header(data)),
        Integrity::Md5 => (kind, md5_header(data)),
    }
}

/// Send one Put Page, retrying what can be retried.
async fn send_one(
    ctx: Arc<Ctx>,
    range: Range<u64>,
    mut body: Bytes,
    mut integ: (Integrity, String),
) -> Result<Range<u64>> {
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let res = ctx
            .client
            .put_page(
                range.start,
                body.clone(),
                Some(integ.clone()),
                ctx.timeout_for(range.end - range.start),
            )
            .await;
        let failure = match res {
            Ok(()) => {
                ctx.aimd.success();
                return Ok(range);
            }
            Err(f) => f,
        };
        let class = failure.class();
        if class == Class::Fatal || attempt >= ctx.opts.retry.max_attempts {
            let op = if class == Class::Fatal {
                "Put Page to".to_string()
            } else {
                format!("Put Page to (gave up after {attempt} attempts)")
            };
            let e = failure.into_error(&op, ctx.client.display());
            return Err(if class == Class::Checksum {
                Error::new(
                    e.kind(),
                    "upload.checksum",
                    format!("{}; the data keeps arriving corrupted", e.message()),
                )
            } else {
                e
            });
        }
        ctx.retries.fetch_add(1, Ordering::Relaxed);
        ctx.progress.retried(&describe(&failure));
        match class {
            Class::Throttle => ctx.aimd.throttled(),
            Class::Checksum => {
                // The body may have been corrupted in our memory: read it again from disk.
                let c = ctx.clone();
                let r = range.clone();
                let data = tokio::task::spawn_blocking(move || c.read(&r))
                    .await
                    .map_err(|e| {
                        Error::new(
                            ErrorKind::Io,
                            "upload.internal",
                            format!("reader task failed: {e}"),
                        )
                    })??;
                integ = integrity_value(integ.0, &data);
                body = Bytes::from(data);
            }
            _ => {}
        }
        tokio::time::sleep(ctx.backoff(attempt)).await;
    }
}

fn describe(f: &Failure) -> String {
    match f {
        Failure::Status { status, code, .. } => format!("HTTP {status} {code}"),
        Failure::Transport { message, .. } => message.clone(),
    }
}

/// One buffer handed from the reader to the senders.
struct Chunk {
    range: Range<u64>,
    body: Bytes,
    integ: (Integrity, String),
}

/// The reader: fills buffers in plan order, feeding the whole-stream MD5 (zeros for gaps)
/// when asked. `todo[i]` says whether `requests[i]` must be sent.
fn reader(
    ctx: &Ctx,
    requests: &[Range<u64>],
    todo: &[bool],
    whole_md5: bool,
    tx: &tokio::sync::mpsc::Sender<Chunk>,
) -> Result<Option<String>> {
    let mut md5 = whole_md5.then(md5::Md5::new);
    let mut pos = 0u64;
    let feed_zeros = |md5: &mut md5::Md5, mut n: u64| {
        while n > 0 {
            let k = n.min(ZEROS.len() as u64);
            md5.update(&ZEROS[..k as usize]);
            n -= k;
        }
    };
    for (r, &send) in requests.iter().zip(todo) {
        if ctx.opts.cancel.load(Ordering::Relaxed) {
            return Ok(None);
        }
        if !send && md5.is_none() {
            continue;
        }
        let data = ctx.read(r)?;
        if let Some(m) = md5.as_mut() {
            feed_zeros(m, r.start - pos);
            m.update(&data);
            pos = r.end;
        }
        if send {
            let integ = integrity_value(ctx.integrity(), &data);
            if tx
                .blocking_send(Chunk {
                    range: r.clone(),
                    body: Bytes::from(data),
                    integ,
                })
                .is_err()
            {
                // The senders stopped (error or cancel): nothing more to do.
                return Ok(None);
            }
        }
    }
    Ok(md5.map(|mut m| {
        feed_zeros(&mut m, ctx.azure.disk_size - pos);
        m.update(ctx.azure.footer_bytes());
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(m.finalize())
    }))
}

struct JournalState {
    path: PathBuf,
    journal: Journal,
    /// Requests whose Put Page returned success (this run's and the journal's earlier ones).
    done: Vec<Range<u64>>,
    last_write: Instant,
    /// Rewrite the journal at most this often (each rewrite is fsynced).
    interval: Duration,
}

impl JournalState {
    fn record(&mut self, r: Range<u64>) {
        self.done.push(r);
    }
    fn due(&self) -> bool {
        self.last_write.elapsed() >= self.interval
    }
    fn flush(&mut self) -> Result<()> {
        self.done = normalize(std::mem::take(&mut self.done));
        self.journal.done = self.done.iter().map(|r| (r.start, r.end)).collect();
        self.last_write = Instant::now();
        journal::store(&self.path, &self.journal)
    }
}

/// Upload `source` to the blob at `dest` (a URL, possibly with a SAS).
pub async fn upload(
    source: &Path,
    dest: &str,
    opts: UploadOptions,
    progress: Arc<dyn Progress>,
) -> Result<UploadSummary> {
    let mut journal_at = None;
    upload_inner(source, dest, opts, progress, &mut journal_at)
        .await
        .map_err(|e| with_resume_hint(e, journal_at.as_deref()))
}

/// Say whether `--resume` can help after `e`: only when a journal exists (`journal`), which
/// is not the case when the upload failed before its first journal write (e.g. the blob
/// could never be created), where --resume would be refused.
fn with_resume_hint(e: Error, journal: Option<&Path>) -> Error {
    let transient = matches!(e.code(), "upload.transport" | "upload.checksum")
        || e.kind() == ErrorKind::Interrupted;
    let hint = match journal {
        Some(p) if transient || e.kind() == ErrorKind::Remote => format!(
            "the journal {} keeps what was sent: fix the cause, then run the same command with --resume to send only what is missing",
            p.display()
        ),
        None if transient => {
            "nothing was sent and no journal was written: run the same command again (without --resume)".to_string()
        }
        _ => return e,
    };
    let mut out = Error::new(e.kind(), e.code(), format!("{}; {hint}", e.message()));
    if let Some(o) = e.offset() {
        out = out.at(o);
    }
    if let Some(p) = e.path() {
        out = out.in_file(p);
    }
    out
}

/// `--resume` refused because a file of the source changed (`what`).
fn source_changed(what: &str) -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        "upload.resume",
        format!(
            "--resume refused: the source changed since the interrupted upload ({what}); \
             upload again from the start with --overwrite"
        ),
    )
}

/// Which planned requests this run sends. Without resume, all of them. On resume, all but
/// those the journal records as completed by this upload (`journal_done`) whose first and
/// last pages the destination still lists (`present`; a service may not list pages it
/// stored as zeros, and a blob recreated meanwhile lists none). Destination pages alone
/// never count: they may hold an earlier upload's or another source's data.
fn requests_to_send(
    requests: &[Range<u64>],
    resume: bool,
    journal_done: &[Range<u64>],
    present: &[Range<u64>],
) -> Vec<bool> {
    requests
        .iter()
        .map(|r| {
            let done = resume
                && is_covered(r.start, r.end, journal_done)
                && is_covered(r.start, r.start + PAGE, present)
                && is_covered(r.end - PAGE, r.end, present);
            !done
        })
        .collect()
}

/// The upload proper; sets `journal_at` once a journal exists on disk for this upload.
async fn upload_inner(
    source: &Path,
    dest: &str,
    opts: UploadOptions,
    progress: Arc<dyn Progress>,
    journal_at: &mut Option<PathBuf>,
) -> Result<UploadSummary> {
    let started = Instant::now();
    let concurrency = opts.concurrency.clamp(1, 256);
    let client = BlobClient::new(dest, &opts.credentials, &opts.api_version, concurrency)?;
    let shown = client.display().to_string();
    let managed = opts.managed_disk || super::client::is_managed_disk_host(client.host());
    if managed && opts.content_md5 {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "upload.managed_disk",
            "--content-md5 is not possible on a managed-disk upload SAS (no property writes are allowed there); use `vhdforge verify --full` instead",
        ));
    }

    // The journal: identity checks and the footer identity of a converted source. It lives
    // next to the source unless that folder is read-only (or the source is a device), then
    // in the per-user state directory; --resume looks in both.
    let identity = SourceIdentity::of(source)?;
    let fallback = journal::state_dir_location();
    let (jpath, old) = if opts.resume {
        let places = journal::candidates(
            source,
            client.base(),
            opts.state_dir.as_deref(),
            fallback.as_deref(),
        );
        match journal::find_existing(&places) {
            Some(p) => {
                let j = journal::load(&p)?;
                *journal_at = Some(p.clone());
                (p, j)
            }
            None => {
                let shown: Vec<String> = places.iter().map(|p| p.display().to_string()).collect();
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    "upload.resume",
                    format!("--resume: no journal for this source and destination (looked for {}), so nothing proves what was sent; upload again without --resume (with --overwrite if the blob exists)", shown.join(" and ")),
                ));
            }
        }
    } else {
        let p = journal::choose_path(
            source,
            client.base(),
            opts.state_dir.as_deref(),
            journal::default_state_dir,
        )?;
        (p, None)
    };
    let mut policy = opts.policy.clone();
    if let Some(j) = &old {
        if let Some(what) = j.source.change(&identity) {
            return Err(source_changed(&what));
        }
        policy.unique_id = journal::parse_unique_id(&j.footer_unique_id);
        policy.time_stamp = Some(j.footer_time_stamp);
    }
    let src = UploadSource::open(source, &opts.open, &policy)?;
    // A differencing source is only as unchanged as its parents.
    let parents = journal::parent_identities(src.image.as_ref())?;
    if let Some(j) = &old {
        if j.parents.len() != parents.len() {
            return Err(source_changed(&format!(
                "the chain had {} parent(s), now {}",
                j.parents.len(),
                parents.len()
            )));
        }
        if let Some(what) = j
            .parents
            .iter()
            .zip(&parents)
            .find_map(|(a, b)| a.change(b))
        {
            return Err(source_changed(&format!("parent {what}")));
        }
    }
    let azure = src.azure.clone();
    let output_size = azure.output_size();
    let data_plan: DataPlan = {
        let image = src.image.clone();
        let az = azure.clone();
        let bridge = opts.bridge_bytes;
        let cancel = opts.cancel.clone();
        tokio::task::spawn_blocking(move || {
            plan::plan_requests_multi(image.as_ref(), &az, &[bridge], &cancel)
                .map(|mut v| v.remove(0))
        })
        .await
        .map_err(|e| {
            Error::new(
                ErrorKind::Io,
                "upload.internal",
                format!("planner failed: {e}"),
            )
        })??
    };
    if !managed && output_size > crate::azure::MAX_PAGE_BLOB {
        return Err(Error::new(
            ErrorKind::Unsupported,
            "upload.too_large",
            format!(
                "this image uploads as {output_size} bytes, more than the 8 TiB a page blob holds; \
                 upload it straight to a managed disk (az disk create --upload-type Upload --upload-size-bytes {output_size})"
            ),
        ));
    }
    let footer = azure.footer_bytes();
    let plan_hash = data_plan.hash(&footer);
    if let Some(j) = &old {
        if j.plan_hash != plan_hash {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "upload.resume",
                "--resume refused: the source's content or footer differs from the interrupted upload's (plan hash changed); upload again with --overwrite",
            ));
        }
    }

    // Prepare the destination and learn what is already there.
    let mut present: Vec<Range<u64>> = Vec::new();
    let size_check = |size: u64| -> Result<()> {
        if size == output_size {
            return Ok(());
        }
        let hint = if managed {
            format!("create the disk with --upload-size-bytes {output_size} (this image's disk area {} bytes + 512-byte footer)", azure.disk_size)
        } else {
            "upload to a new blob, or pass --overwrite to recreate it at the right size".to_string()
        };
        Err(Error::new(
            ErrorKind::InvalidInput,
            "upload.size_mismatch",
            format!(
                "{shown} is {size} bytes but this image needs exactly {output_size} bytes; {hint}"
            ),
        ))
    };
    let pre_retries = AtomicU64::new(0);
    let on_retry = |f: &Failure| {
        pre_retries.fetch_add(1, Ordering::Relaxed);
        progress.retried(&describe(f));
    };
    let policy = &opts.retry;
    if managed || opts.resume {
        let props = with_retries(policy, &on_retry, || client.head())
            .await
            .map_err(|f| f.into_error("reading the properties of", &shown))?;
        if !props.blob_type.is_empty() && !props.blob_type.eq_ignore_ascii_case("PageBlob") {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "upload.conflict",
                format!("{shown} is a {} blob, not a page blob", props.blob_type),
            ));
        }
        size_check(props.size)?;
        present = normalize(
            with_retries(policy, &on_retry, || client.page_ranges())
                .await
                .map_err(|f| f.into_error("listing the page ranges of", &shown))?,
        );
    } else {
        if opts.create_container {
            let container = client.container();
            with_retries(policy, &on_retry, || container.create_container())
                .await
                .map_err(|f| f.into_error("creating the container", container.display()))?;
        }
        // A retried create whose first attempt did arrive finds the blob existing: accept
        // it when it has this upload's size and no pages yet.
        let mut tried = false;
        let created = with_retries(policy, &on_retry, || {
            let again = std::mem::replace(&mut tried, true);
            let client = &client;
            async move {
                match client.create_page_blob(output_size, opts.overwrite).await {
                    Err(Failure::Status {
                        status: 409, code, ..
                    }) if again && code == "BlobAlreadyExists" => {
                        let props = client.head().await?;
                        let pages = client.page_ranges().await?;
                        if props.size == output_size && pages.is_empty() {
                            Ok(())
                        } else {
                            Err(Failure::Status {
                                status: 409,
                                code,
                                message: String::new(),
                            })
                        }
                    }
                    other => other,
                }
            }
        })
        .await;
        created.map_err(|f| f.into_error("creating", &shown))?;
    }

    // What is already done (resume): only what the journal proves this upload sent.
    let journal_done = old.as_ref().map(Journal::done_ranges).unwrap_or_default();
    let todo = requests_to_send(&data_plan.requests, opts.resume, &journal_done, &present);

    // A destination that already holds data where the source is zero (a reused managed
    // disk, or a resumed blob whose earlier data differs) gets those pages cleared, so the
    // result is exactly the source. The footer page is rewritten anyway.
    let stale = subtract(&present, &data_plan.requests);
    let stale = subtract(&stale, std::slice::from_ref(&(azure.disk_size..u64::MAX)));
    for r in &stale {
        with_retries(policy, &on_retry, || client.clear_pages(r.clone()))
            .await
            .map_err(|f| f.into_error("clearing stale pages of", &shown))?;
    }
    if !stale.is_empty() {
        progress.note(&format!(
            "cleared {} stale range(s) at the destination where the source is zero",
            stale.len()
        ));
    }

    let send_bytes: u64 = data_plan
        .requests
        .iter()
        .zip(&todo)
        .filter(|(_, &t)| t)
        .map(|(r, _)| r.end - r.start)
        .sum();
    let send_requests = todo.iter().filter(|&&t| t).count() as u64;
    let summary_plan = PlanSummary {
        bytes_total: output_size,
        bytes_to_send: send_bytes + FOOTER_SIZE as u64,
        bytes_skipped: azure.disk_size - data_plan.bytes,
        bytes_already_present: data_plan.bytes - send_bytes,
        requests: send_requests + 1,
    };
    progress.planned(&summary_plan);

    let mut jstate = JournalState {
        path: jpath.clone(),
        journal: journal::new(
            client.base(),
            identity,
            parents,
            azure.footer.unique_id,
            azure.footer.time_stamp.get(),
            plan_hash,
        ),
        done: data_plan
            .requests
            .iter()
            .zip(&todo)
            .filter(|(_, &t)| !t)
            .map(|(r, _)| r.clone())
            .collect(),
        last_write: Instant::now(),
        interval: opts.journal_interval,
    };
    jstate.flush()?;
    *journal_at = Some(jpath.clone());
    // A journal of an earlier run for the same source and destination elsewhere (the other
    // candidate place) would only confuse a later --resume.
    for other in journal::candidates(
        source,
        client.base(),
        opts.state_dir.as_deref(),
        fallback.as_deref(),
    ) {
        if other != jpath {
            let _ = std::fs::remove_file(&other);
        }
    }

    let ctx = Arc::new(Ctx {
        client: client.clone(),
        image: src.image.clone(),
        azure: azure.clone(),
        opts: UploadOptions {
            concurrency,
            ..opts.clone()
        },
        progress: progress.clone(),
        aimd: Aimd::new(concurrency),
        retries: AtomicU64::new(0),
        sent_bytes: AtomicU64::new(0),
        requests: AtomicU64::new(0),
    });

    // The pipeline: at most `concurrency` buffers queued plus `concurrency` in flight,
    // each ≤ 4 MiB, so memory is bounded whatever the disk size.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Chunk>(concurrency);
    let reader_task = {
        let ctx = ctx.clone();
        let requests = data_plan.requests.clone();
        let todo = todo.clone();
        let whole = opts.content_md5;
        tokio::task::spawn_blocking(move || reader(&ctx, &requests, &todo, whole, &tx))
    };
    let mut set: JoinSet<Result<Range<u64>>> = JoinSet::new();
    let mut open = true;
    let outcome: Result<()> = loop {
        if ctx.opts.cancel.load(Ordering::Relaxed) {
            break Err(cancelled());
        }
        if !open && set.is_empty() {
            break Ok(());
        }
        let full = set.len() >= ctx.aimd.limit();
        tokio::select! {
            chunk = rx.recv(), if open && !full => match chunk {
                Some(c) => {
                    let ctx2 = ctx.clone();
                    set.spawn(send_one(ctx2, c.range, c.body, c.integ));
                }
                None => open = false,
            },
            Some(res) = set.join_next(), if !set.is_empty() => {
                match res {
                    Ok(Ok(r)) => {
                        let len = r.end - r.start;
                        ctx.sent_bytes.fetch_add(len, Ordering::Relaxed);
                        ctx.requests.fetch_add(1, Ordering::Relaxed);
                        // Journal first, then report: with a zero interval a reported
                        // request is durably recorded.
                        jstate.record(r);
                        if jstate.due() {
                            if let Err(e) = jstate.flush() { break Err(e); }
                        }
                        progress.sent(len);
                    }
                    Ok(Err(e)) => break Err(e),
                    Err(e) => break Err(Error::new(ErrorKind::Io, "upload.internal", format!("send task failed: {e}"))),
                }
            },
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    };
    if let Err(e) = outcome {
        set.abort_all();
        drop(rx);
        // Keep what completed for --resume; a failure to write it must not hide the cause.
        let _ = jstate.flush();
        let _ = reader_task.await;
        return Err(e);
    }
    drop(rx);
    let md5 = match reader_task.await {
        Ok(Ok(m)) => m,
        // A read failure (source vanished, I/O error): keep what was sent for --resume.
        Ok(Err(e)) => {
            let _ = jstate.flush();
            return Err(e);
        }
        Err(e) => {
            let _ = jstate.flush();
            return Err(Error::new(
                ErrorKind::Io,
                "upload.internal",
                format!("reader task failed: {e}"),
            ));
        }
    };
    if ctx.opts.cancel.load(Ordering::Relaxed) {
        let _ = jstate.flush();
        return Err(cancelled());
    }
    jstate.flush()?;

    // Every data page is in: only now the footer, which makes the blob a valid VHD.
    let footer_range = azure.disk_size..output_size;
    let integ = integrity_value(ctx.integrity(), &footer);
    send_one(
        ctx.clone(),
        footer_range,
        Bytes::copy_from_slice(&footer),
        integ,
    )
    .await?;
    ctx.sent_bytes
        .fetch_add(FOOTER_SIZE as u64, Ordering::Relaxed);
    ctx.requests.fetch_add(1, Ordering::Relaxed);
    progress.sent(FOOTER_SIZE as u64);

    if let Some(m) = &md5 {
        with_retries(policy, &on_retry, || client.set_content_md5(m))
            .await
            .map_err(|f| f.into_error("setting Content-MD5 of", &shown))?;
    }
    // Done: the journal has served its purpose.
    let _ = std::fs::remove_file(&jpath);
    Ok(UploadSummary {
        bytes_total: output_size,
        bytes_sent: ctx.sent_bytes.load(Ordering::Relaxed),
        bytes_skipped: summary_plan.bytes_skipped,
        bytes_already_present: summary_plan.bytes_already_present,
        requests: ctx.requests.load(Ordering::Relaxed),
        retries: ctx.retries.load(Ordering::Relaxed) + pre_retries.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
        destination: shown,
        content_md5: md5,
        managed_disk: managed,
    })
}

/// Interrupted on request; [`with_resume_hint`] says whether --resume can continue.
fn cancelled() -> Error {
    Error::new(
        ErrorKind::Interrupted,
        "upload.cancelled",
        "upload interrupted",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_sends_all_but_what_the_journal_proves() {
        const K: u64 = 1024;
        let requests = [0..4 * K, 8 * K..12 * K, 16 * K..20 * K];
        let all = 0..1 << 20;
        /// Name, resume, journal-completed ranges, listed ranges, expected to-send flags.
        type Case = (
            &'static str,
            bool,
            Vec<Range<u64>>,
            Vec<Range<u64>>,
            [bool; 3],
        );
        #[rustfmt::skip]
        #[allow(clippy::single_range_in_vec_init)]
        let cases: [Case; 6] = [
            // A fresh upload sends everything, whatever the journal or the destination say.
            ("fresh", false, vec![all.clone()], vec![all.clone()], [true; 3]),
            // The regression: a reused disk lists every page, the journal nothing → all sent.
            ("pages from elsewhere", true, vec![], vec![all.clone()], [true; 3]),
            // Journal-completed and still listed: skipped.
            ("journal and present", true, vec![0..4 * K, 16 * K..20 * K], vec![all.clone()], [false, true, false]),
            // Journal-completed but the blob lists nothing (recreated meanwhile): sent again.
            ("journal, blob empty", true, vec![all.clone()], vec![], [true; 3]),
            // Only first and last pages listed (zeros inside not listed): skipped.
            ("ends listed", true, vec![8 * K..12 * K], vec![8 * K..8 * K + 512, 12 * K - 512..12 * K], [true, false, true]),
            // The journal covers only part of a request: the whole request is sent.
            ("partial journal", true, vec![0..2 * K], vec![all], [true; 3]),
        ];
        for (name, resume, journal_done, present, want) in cases {
            assert_eq!(
                requests_to_send(&requests, resume, &journal_done, &present),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn resume_hint_only_when_a_journal_exists() {
        let j = Path::new("/tmp/x.json");
        let transport = || Error::new(ErrorKind::Remote, "upload.transport", "no answer");
        let cases: [(&str, Error, Option<&Path>, Option<&str>); 5] = [
            // Creation never succeeded: no journal, so --resume would be refused.
            (
                "transport, no journal",
                transport(),
                None,
                Some("without --resume"),
            ),
            // Data was being sent: the journal exists, --resume continues.
            (
                "transport, journal",
                transport(),
                Some(j),
                Some("with --resume"),
            ),
            // Interrupted before the first journal write.
            (
                "cancel, no journal",
                cancelled(),
                None,
                Some("without --resume"),
            ),
            // A fatal answer before anything was sent gets no resume talk.
            (
                "auth, no journal",
                Error::new(ErrorKind::Remote, "upload.auth", "403"),
                None,
                None,
            ),
            // A local refusal is not about resuming.
            ("resume refused", source_changed("x"), Some(j), None),
        ];
        for (name, e, journal, want) in cases {
            let code = e.code();
            let before = e.to_string();
            let out = with_resume_hint(e, journal);
            assert_eq!(out.code(), code, "{name}");
            let text = out.to_string();
            match want {
                Some(w) => assert!(text.contains(w), "{name}: {text}"),
                None => assert_eq!(text, before, "{name}"),
            }
            if journal.is_none() {
                assert!(!text.contains("with --resume"), "{name}: {text}");
            }
        }
    }

    #[test]
    fn aimd_cuts_on_throttle_and_recovers() {
        let a = Aimd::new(8);
        assert_eq!(a.limit(), 8);
        // One burst of 503s is one signal: cut to 70 % once.
        a.throttled();
        a.throttled();
        assert_eq!(a.limit(), 5);
        // Never below one request in flight.
        for _ in 0..20 {
            a.state.lock().unwrap().1 = Instant::now() - Duration::from_secs(1);
            a.throttled();
        }
        assert_eq!(a.limit(), 1);
        // Successes grow it back gradually, up to the configured maximum and no further.
        for _ in 0..3 {
            a.success();
        }
        assert!((2..=3).contains(&a.limit()), "{}", a.limit());
        for _ in 0..1000 {
            a.success();
        }
        assert_eq!(a.limit(), 8);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = super::super::RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        for (attempt, lo, hi) in [(1, 50, 100), (2, 100, 200), (3, 200, 400), (10, 500, 1000)] {
            let d = super::super::client::backoff(&p, attempt).as_millis();
            assert!((lo..=hi).contains(&d), "attempt {attempt}: {d} ms");
        }
    }
}
