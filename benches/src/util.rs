//! Helpers shared by the benchmarks: input builders, child timing with peak RSS, medians.

use anyhow::{bail, Context, Result};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// `count` regions of `len` bytes spread evenly (with a seed-dependent jitter) over `size`.
pub fn scattered(size: u64, count: u64, len: u64, seed: u64) -> Vec<(u64, u64)> {
    let stride = size / count;
    (0..count)
        .map(|i| {
            let jitter = (i.wrapping_mul(2_654_435_761).wrapping_add(seed * 97)
                % (stride.saturating_sub(len).max(1) / 4096).max(1))
                * 4096;
            (i * stride + jitter, len)
        })
        .collect()
}

/// A sparse raw file with pseudo-random data in `regions`, unless it already exists.
pub fn ensure_sparse_raw(path: &Path, size: u64, regions: &[(u64, u64)]) -> Result<()> {
    if path.exists() && std::fs::metadata(path)?.len() == size {
        return Ok(());
    }
    let tmp = path.with_extension("building");
    let mut f = std::fs::File::create(&tmp)?;
    f.set_len(size)?;
    for (i, &(off, len)) in regions.iter().enumerate() {
        f.seek(SeekFrom::Start(off))?;
        f.write_all(&fixtures::raw::pattern(i as u64 * 7919 + 1, len as usize))?;
    }
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// `qemu-img convert -f raw <args> raw out`, unless `out` exists.
pub fn ensure_qemu(raw: &Path, out: &Path, args: &[&str]) -> Result<()> {
    if out.exists() {
        return Ok(());
    }
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw"])
        .args(args)
        .arg(raw)
        .arg(out))
}

/// Run a command, failing on a non-zero exit.
pub fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Run a child to completion; its wall time in seconds and peak RSS in KiB.
pub fn time_child(cmd: &mut Command) -> Result<(f64, u64)> {
    let (t, rss, _, _) = time_child_output(cmd)?;
    Ok((t, rss))
}

/// Run a child to completion capturing stdout; wall seconds, peak RSS (KiB), CPU seconds
/// (user + system), stdout.
pub fn time_child_output(cmd: &mut Command) -> Result<(f64, u64, f64, Vec<u8>)> {
    use std::io::Read;
    let start = Instant::now();
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    let mut out = Vec::new();
    child
        .stdout
        .take()
        .context("stdout")?
        .read_to_end(&mut out)?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pid of our child, valid out-pointers.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    let t = start.elapsed().as_secs_f64();
    if rc < 0 || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!(
            "{cmd:?} failed (status {status}): {}",
            String::from_utf8_lossy(&out)
        );
    }
    let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    Ok((
        t,
        ru.ru_maxrss as u64,
        secs(ru.ru_utime) + secs(ru.ru_stime),
        out,
    ))
}

/// Bytes actually allocated on disk for a file.
pub fn allocated_bytes(path: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(path)?.blocks() * 512)
}

/// Non-zero data of a file counted in `granule`-byte units (holes skipped via SEEK_DATA).
pub fn nonzero_bytes(path: &Path, granule: u64) -> Result<u64> {
    let src = vhdforge_core::io::FileSource::open(path)?;
    use vhdforge_core::io::ReadAt;
    let mut total = 0;
    let mut pos = 0;
    let mut buf = vec![0u8; granule as usize];
    let mut counted_to = 0;
    while let Some(seg) = src.next_data(pos)? {
        // Data segments can share a granule: count each granule once.
        let mut p = (seg.start / granule * granule).max(counted_to);
        while p < seg.end {
            let n = granule.min(src.size() - p) as usize;
            src.read_exact_at(&mut buf[..n], p)?;
            if !vhdforge_core::sparse::is_zero(&buf[..n]) {
                total += n as u64;
            }
            p += granule;
        }
        counted_to = counted_to.max(p);
        pos = seg.end;
    }
    Ok(total)
}

/// Median of samples (sorts them).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// MiB/s for `bytes` in `secs`.
pub fn mibs(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / (1 << 20) as f64 / secs
}

/// A throwaway CA and a server certificate for 127.0.0.1 signed by it (EC P-256, made with
/// the openssl command line), for the sink's HTTPS mode.
pub struct BenchPki {
    /// The CA certificate the clients are told to trust (PEM).
    pub ca: std::path::PathBuf,
    /// The server's certificate (PEM).
    pub server_cert: std::path::PathBuf,
    /// The server's private key (PEM).
    pub server_key: std::path::PathBuf,
}

impl BenchPki {
    /// Make them in `dir` (created if needed; existing files there are replaced).
    pub fn generate(dir: &Path) -> Result<BenchPki> {
        std::fs::create_dir_all(dir)?;
        // Each step is one openssl command line (no argument holds a space).
        let openssl = |line: &str| -> Result<()> {
            let out = Command::new("openssl")
                .args(line.split_whitespace())
                .current_dir(dir)
                .output()
                .context("openssl is needed for the HTTPS benchmark")?;
            if !out.status.success() {
                bail!("openssl {line}: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(())
        };
        let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        openssl(&format!(
            "req -x509 -days 2 {ec} -keyout ca.key -out ca.pem -subj /CN=vhdforge-bench-CA \
             -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign"
        ))?;
        openssl(&format!(
            "req {ec} -keyout server.key -out server.csr -subj /CN=127.0.0.1"
        ))?;
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )?;
        openssl(
            "x509 -req -days 2 -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
             -extfile server.ext -out server.pem",
        )?;
        Ok(BenchPki {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
        })
    }
}
