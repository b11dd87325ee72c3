//! Issue 17: `vhdforge cat` of a 1 GiB file against `cat` of the same file through the
//! kernel (a read-only loop mount of the same ext4 bytes), and `vhdforge ls -R` of a
//! 100 000-entry tree against `ls -R -f` on the mount. Same run, same bytes, page cache warm
//! (one unmeasured run of each first), median of 3. Needs root (the loop mount).

use anyhow::{bail, Context as _, Result};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use fixtures::guest::{build, Content, Format, Kind, Mount, Part, Table};

const BIG_BYTES: u64 = 1 << 30;
const DIRS: usize = 1000;
const FILES_PER_DIR: usize = 100;

/// Wall seconds and peak RSS (KiB) of `cmd` with stdout thrown away (nothing buffered here,
/// so a 1 GiB output costs the benchmark nothing).
fn time_to_null(cmd: &mut Command) -> Result<(f64, i64)> {
    let start = Instant::now();
    let child = cmd
        .stdout(std::fs::File::create("/dev/null")?)
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    let pid = libc::pid_t::try_from(child.id())?;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pid of our child, valid out-pointers.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    let t = start.elapsed().as_secs_f64();
    if rc < 0 || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{cmd:?} failed (status {status})");
    }
    Ok((t, ru.ru_maxrss))
}

fn median3(mut f: impl FnMut() -> Result<(f64, i64)>) -> Result<(f64, i64)> {
    f()?; // warm the page cache
    let mut runs = [f()?, f()?, f()?];
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(runs[1])
}

/// The host tree: `/big` (1 GiB of incompressible bytes) and `/tree` of 1000 directories of
/// 100 empty files each.
fn make_tree(root: &Path) -> Result<()> {
    use std::io::Write as _;
    std::fs::create_dir_all(root)?;
    let mut f = std::io::BufWriter::new(std::fs::File::create(root.join("big"))?);
    let chunk = fixtures::guest::tree::pattern(1 << 20, 17);
    for i in 0..BIG_BYTES >> 20 {
        // Vary each MiB so nothing below could deduplicate it.
        let mut c = chunk.clone();
        c[..8].copy_from_slice(&i.to_le_bytes());
        f.write_all(&c)?;
    }
    f.flush()?;
    for d in 0..DIRS {
        let dir = root.join("tree").join(format!("dir{d:04}"));
        std::fs::create_dir_all(&dir)?;
        for n in 0..FILES_PER_DIR {
            std::fs::File::create(dir.join(format!("file{n:03}")))?;
        }
    }
    Ok(())
}

/// Run the benchmark; inputs are kept in `dir/guest` between runs.
pub fn bench_guest(dir: &Path, vhdforge: &Path) -> Result<()> {
    println!("== guest: vhdforge cat / ls -R vs the kernel's loop mount of the same ext4, page cache warm, median of 3");
    let base = dir.join("guest");
    let disk = base.join("disk.raw");
    let fsimg = base.join("scratch/p1.fs");
    // A build that failed half-way leaves the disk without its scratch image: start over.
    if !disk.exists() || !fsimg.exists() {
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base)?;
        let tree = base.join("tree");
        make_tree(&tree)?;
        build(
            &disk,
            2200,
            Table::Gpt,
            &[Part::new(
                // mkfs.ext4 gives one inode per 16 KiB: 2100 MiB holds the 101 000 entries.
                2100,
                Kind::Linux,
                Content::fs(Format::Ext4, "bench", Some(&tree)),
            )],
            &base.join("scratch"),
        );
        std::fs::remove_dir_all(&tree)?;
    }
    let mnt = base.join("mnt");
    let _m = Mount::new(&fsimg, &mnt, "loop,ro");
    let d = disk.to_str().context("UTF-8 path")?;

    let (ours, our_rss) =
        median3(|| time_to_null(Command::new(vhdforge).args(["cat", d, "/big"])))?;
    let (peer, _) = median3(|| time_to_null(Command::new("cat").arg(mnt.join("big"))))?;
    let mib = |s: f64| (BIG_BYTES as f64 / f64::from(1u32 << 20)) / s;
    println!(
        "cat 1 GiB: vhdforge {:.0} MiB/s ({ours:.3} s, peak RSS {} MiB), kernel {:.0} MiB/s ({peer:.3} s) -> {:.2}x the kernel's throughput (target >= 0.8x)",
        mib(ours),
        our_rss >> 10,
        mib(peer),
        peer / ours
    );

    let entries = DIRS * (FILES_PER_DIR + 1);
    for (label, extra) in [("text", None), ("--json", Some("--json"))] {
        let (ours, rss) = median3(|| {
            let mut c = Command::new(vhdforge);
            c.args(["ls", "-R"]);
            c.args(extra);
            time_to_null(c.args([d, "/tree"]))
        })?;
        let (peer, _) =
            median3(|| time_to_null(Command::new("ls").arg("-R").arg("-f").arg(mnt.join("tree"))))?;
        println!(
            "ls -R {label} of {entries} entries: vhdforge {ours:.3} s (peak RSS {} MiB), kernel `ls -R -f` {peer:.3} s -> {:.2}x the kernel's speed",
            rss >> 10,
            peer / ours
        );
    }
    Ok(())
}
