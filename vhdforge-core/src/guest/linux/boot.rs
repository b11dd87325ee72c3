//! The guest's default boot entry — kernel, initrd and effective kernel command line — found
//! the way the boot loader finds it (`docs/guest-boot.md §1`, `docs/formats.md §8`):
//!
//! 1. the active configuration: an ESP `EFI/<vendor>/grub.cfg` (followed through its
//!    `configfile`/`source` stub when it points at `/boot`), else `/boot/grub2/grub.cfg` or
//!    `/boot/grub/grub.cfg`, else legacy GRUB's `menu.lst`/`grub.conf`;
//! 2. the script run as GRUB runs it, for what decides the menu: `set`, `load_env` (grubenv),
//!    `if [ … ]` on variables and file tests, `menuentry`/`submenu`, `blscfg` (BLS entries
//!    from `/boot/loader/entries`, sorted as rhboot's blscfg does), `source`/`configfile`;
//! 3. `default` resolved per menu level (`1>2`, titles, ids); unresolvable → entry 0, as GRUB;
//! 4. the chosen entry's body run with the final variables, so `$kernelopts` (RHEL 8) and
//!    friends expand.
//!
//! `/etc/default/grub` is *not* read: it only feeds `grub-mkconfig`, and a check must report
//! what boots, not what would boot after a regeneration nobody ran.
//!
//! Bounded: each file at most [`MAX_CONFIG_BYTES`], at most [`MAX_INCLUDE_DEPTH`] nested
//! includes, [`MAX_MENU_ITEMS`] menu items and [`MAX_BLS_ENTRIES`] BLS files.

use std::collections::HashMap;

use super::script::{self, Command, Word};
use crate::error::{Error, ErrorKind, Result};
use crate::guest::fs::{is_not_found, FileSystem, FileType};

/// Largest configuration file read (real grub.cfg files are under 64 KiB).
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// Nested `source`/`configfile` accepted (a stub pointing at the real file is depth 1).
pub const MAX_INCLUDE_DEPTH: usize = 8;
/// Menu entries and submenus kept in all.
pub const MAX_MENU_ITEMS: usize = 10_000;
/// BLS entry files read.
pub const MAX_BLS_ENTRIES: usize = 1_000;
/// Configuration text parsed in all (a file sourcing itself twice at every level would
/// otherwise parse 2^depth copies).
const MAX_TOTAL_CONFIG_BYTES: usize = 16 << 20;
/// Commands run in all (including repeats through includes), so a config including itself
/// through several names still ends quickly.
const MAX_COMMANDS: usize = 1_000_000;

/// The BLS entries directory (relative to the guest root; `/boot` may be its own volume,
/// which the [`GuestTree`](crate::guest::GuestTree) mounts there).
const BLS_DIR: &[u8] = b"/boot/loader/entries";

/// Which boot loader configuration the entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loader {
    /// A GRUB 2 `menuentry`.
    Grub2,
    /// A Boot Loader Specification entry, shown by GRUB's `blscfg`.
    Bls,
    /// Legacy GRUB (0.97) `menu.lst`/`grub.conf`.
    LegacyGrub,
}

/// The default boot entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEntry {
    /// Where it was defined.
    pub loader: Loader,
    /// Its title.
    pub title: String,
    /// Its id (`--id`, or a BLS file name without `.conf`).
    pub id: Option<String>,
    /// The kernel as the configuration names it (`/vmlinuz-6.1.0-18-cloud-amd64`).
    pub kernel: Option<String>,
    /// The initrd images as named (several for early-microcode setups).
    pub initrds: Vec<String>,
    /// The kernel command line after variable expansion (without the kernel path).
    pub cmdline: String,
    /// The file and line the command line comes from (`/boot/grub/grub.cfg`, 123).
    pub source: (String, usize),
}

/// What the guest boots by default, and how that was decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    /// The files read, first the one the firmware or boot sector loads.
    pub files: Vec<String>,
    /// The `default` value used (`0`, `1>2`, a title or id), after expansion.
    pub default: String,
    /// True when `default` named no entry and entry 0 was taken, as GRUB does.
    pub default_fell_back: bool,
    /// Menu entries found (top level and submenus).
    pub entries: usize,
    /// The entry booted.
    pub entry: BootEntry,
}

impl BootEntry {
    /// The kernel release, from a kernel named `vmlinuz-<release>` (or `vmlinux-`, `bzImage-`).
    pub fn kernel_release(&self) -> Option<String> {
        let base = self.kernel.as_deref()?.rsplit('/').next()?;
        ["vmlinuz-", "vmlinux-", "bzImage-", "kernel-"]
            .iter()
            .find_map(|p| base.strip_prefix(p))
            .filter(|r| !r.is_empty())
            .map(str::to_string)
    }
}

/// A path as a boot configuration writes it, as a path in the guest tree: a leading
/// `(device)` is dropped, and a path that does not exist at the root is tried under `/boot`
/// (a separate `/boot` partition is GRUB's root there) and `/boot/efi`.
pub fn guest_path(fs: &dyn FileSystem, p: &str) -> Option<Vec<u8>> {
    let mut p = p.trim();
    if p.starts_with('(') {
        p = p.find(')').map_or("", |i| &p[i + 1..]);
    }
    if p.is_empty() {
        return None;
    }
    let p = if p.starts_with('/') {
        p.to_string()
    } else {
        format!("/{p}")
    };
    for prefix in ["", "/boot", "/boot/efi"] {
        let cand = format!("{prefix}{p}");
        if fs.stat(cand.as_bytes()).is_ok() {
            return Some(cand.into_bytes());
        }
    }
    None
}

/// Read a whole small file, `None` when it does not exist.
pub fn read_small(fs: &dyn FileSystem, path: &[u8], cap: u64) -> Result<Option<Vec<u8>>> {
    let st = match fs.stat(path) {
        Ok(st) => st,
        Err(e) if is_not_found(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    if st.file_type != FileType::Regular {
        return Ok(None);
    }
    if st.size > cap {
        return Err(Error::new(
            ErrorKind::Unsupported,
            "guest.boot.too_large",
            format!(
                "'{}' is {} bytes, more than the {cap} bytes vhdforge reads from a boot configuration file; it is not a real one",
                String::from_utf8_lossy(path),
                st.size
            ),
        ));
    }
    let mut r = fs.open(path)?;
    let mut out = vec![0u8; usize::try_from(st.size).unwrap_or(0)];
    let mut n = 0;
    while n < out.len() {
        let k = r.read(&mut out[n..])?;
        if k == 0 {
            break;
        }
        n += k;
    }
    out.truncate(n);
    Ok(Some(out))
}

/// Parse a GRUB environment block: `name=value` lines (`\\` and `\n` escaped), `#` lines
/// and padding ignored.
pub fn parse_grubenv(text: &str) -> HashMap<String, String> {
    let mut vars = HashMap::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            if valid_name(k) {
                let mut val = String::new();
                let mut chars = v.chars();
                while let Some(c) = chars.next() {
                    if c == '\\' {
                        match chars.next() {
                            Some('n') => val.push('\n'),
                            Some(o) => val.push(o),
                            None => {}
                        }
                    } else {
                        val.push(c);
                    }
                }
                vars.insert(k.to_string(), val);
            }
        }
    }
    vars
}

fn valid_name(k: &str) -> bool {
    !k.is_empty()
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !k.starts_with(|c: char| c.is_ascii_digit())
}

fn not_found() -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        "guest.boot.not_found",
        "no boot loader configuration found: looked for EFI/*/grub.cfg on the ESP (/boot/efi), /boot/grub2/grub.cfg, /boot/grub/grub.cfg, /boot/grub/menu.lst and /boot/grub/grub.conf. Generate one in the guest (grub2-mkconfig -o /boot/grub2/grub.cfg, or update-grub)",
    )
}

/// The default boot entry of the guest `fs` (a [`GuestTree`](crate::guest::GuestTree) with
/// `/boot` and `/boot/efi` mounted).
pub fn default_entry(fs: &dyn FileSystem) -> Result<BootConfig> {
    // The ESP's config is what UEFI firmware runs; on hybrid images it is a stub that leads
    // to the same /boot file, so preferring it is right for Gen2 and harmless for Gen1.
    let mut candidates: Vec<(String, &'static str)> = Vec::new();
    let mut vendors: Vec<Vec<u8>> = Vec::new();
    for efi in [&b"/boot/efi/EFI"[..], b"/boot/efi/efi"] {
        if fs
            .list(efi, &mut |e| {
                if e.file_type == FileType::Directory && vendors.len() < 64 {
                    let mut p = efi.to_vec();
                    p.push(b'/');
                    p.extend_from_slice(&e.name);
                    vendors.push(p);
                }
                true
            })
            .is_ok()
        {
            break;
        }
    }
    vendors.sort();
    for v in &vendors {
        // FAT is case-insensitive, the reader is not: find grub.cfg in any case.
        let mut found = None;
        let _ = fs.list(v, &mut |e| {
            if e.name.eq_ignore_ascii_case(b"grub.cfg") {
                let mut p = v.clone();
                p.push(b'/');
                p.extend_from_slice(&e.name);
                found = Some(p);
                return false;
            }
            true
        });
        if let Some(p) = found {
            candidates.push((String::from_utf8_lossy(&p).into_owned(), "efi"));
        }
    }
    candidates.push(("/boot/grub2/grub.cfg".into(), "pc"));
    candidates.push(("/boot/grub/grub.cfg".into(), "pc"));
    for (path, platform) in &candidates {
        if let Some(text) = read_small(fs, path.as_bytes(), MAX_CONFIG_BYTES)? {
            let mut run = Run::new(fs, platform);
            run.files.push(path.clone());
            run.source(path, &String::from_utf8_lossy(&text), 0)?;
            return run.finish();
        }
    }
    for path in ["/boot/grub/menu.lst", "/boot/grub/grub.conf"] {
        if let Some(text) = read_small(fs, path.as_bytes(), MAX_CONFIG_BYTES)? {
            return legacy(fs, path, &String::from_utf8_lossy(&text));
        }
    }
    Err(not_found())
}

/// A menu item.
#[derive(Debug, Clone)]
enum Item {
    Entry {
        title: String,
        id: Option<String>,
        body: Vec<Command>,
        file: String,
    },
    Bls(BlsEntry),
    Submenu {
        title: String,
        id: Option<String>,
        items: Vec<Item>,
    },
}

impl Item {
    fn matches(&self, key: &str) -> bool {
        let (title, id) = match self {
            Item::Entry { title, id, .. } | Item::Submenu { title, id, .. } => {
                (title.as_str(), id.as_deref())
            }
            Item::Bls(b) => (b.title.as_str(), Some(b.id.as_str())),
        };
        title == key || id == Some(key)
    }
}

/// The state of one script run.
struct Run<'a> {
    fs: &'a dyn FileSystem,
    vars: HashMap<String, String>,
    /// The menu being built: a stack of open submenus, the top level first.
    menu: Vec<Vec<Item>>,
    items: usize,
    commands: usize,
    parsed_bytes: usize,
    files: Vec<String>,
    /// Set by `configfile`: the current script stops (GRUB starts a new menu).
    replaced: bool,
    /// grubenv as found beside the configuration, for `$kernelopts` in BLS `options` when
    /// the script never loads it (as blscfg does itself).
    grubenv: HashMap<String, String>,
}

impl<'a> Run<'a> {
    fn new(fs: &'a dyn FileSystem, platform: &str) -> Run<'a> {
        let mut vars = HashMap::new();
        // What GRUB itself defines before running grub.cfg.
        for f in [
            "feature_menuentry_id",
            "feature_default_font_path",
            "feature_all_video_module",
            "feature_platform_search_hint",
            "feature_timeout_style",
            "feature_chainloader_bpb",
            "feature_ntldr",
            "feature_200_final",
        ] {
            vars.insert(f.to_string(), "y".to_string());
        }
        vars.insert("grub_platform".into(), platform.into());
        vars.insert(
            "grub_cpu".into(),
            if platform == "efi" { "x86_64" } else { "i386" }.into(),
        );
        Run {
            fs,
            vars,
            menu: vec![Vec::new()],
            items: 0,
            commands: 0,
            parsed_bytes: 0,
            files: Vec::new(),
            replaced: false,
            grubenv: HashMap::new(),
        }
    }

    fn lookup(&self) -> impl Fn(&str) -> Option<String> + '_ {
        |n| self.vars.get(n).cloned()
    }

    fn expand(&self, w: &Word) -> String {
        w.expand(&self.lookup())
    }

    /// Run the script `text` read from `file`.
    fn source(&mut self, file: &str, text: &str, depth: usize) -> Result<()> {
        if depth > MAX_INCLUDE_DEPTH {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "guest.boot.include_depth",
                format!("{file}: configuration files include each other more than {MAX_INCLUDE_DEPTH} deep (a loop?)"),
            ));
        }
        // `$prefix` is where GRUB found its config; `load_env` looks for grubenv there.
        if depth == 0 || !self.vars.contains_key("prefix") {
            let dir = file.rsplit_once('/').map_or("/", |(d, _)| d);
            self.vars.insert("prefix".into(), dir.to_string());
            self.vars.insert("config_directory".into(), dir.to_string());
            if let Some(env) = read_small(self.fs, format!("{dir}/grubenv").as_bytes(), 64 << 10)? {
                self.grubenv = parse_grubenv(&String::from_utf8_lossy(&env));
            }
        }
        self.parsed_bytes += text.len();
        if self.parsed_bytes > MAX_TOTAL_CONFIG_BYTES {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "guest.boot.too_large",
                format!("{file}: more than {} MiB of configuration parsed through includes; not a real boot configuration", MAX_TOTAL_CONFIG_BYTES >> 20),
            ));
        }
        let cmds = script::parse(text, file)?;
        self.run(&cmds, file, depth)
    }

    fn run(&mut self, cmds: &[Command], file: &str, depth: usize) -> Result<()> {
        for c in cmds {
            if self.replaced {
                return Ok(());
            }
            self.commands += 1;
            if self.commands > MAX_COMMANDS {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    "guest.boot.too_large",
                    format!("{file}: more than {MAX_COMMANDS} commands run; not a real boot configuration"),
                ));
            }
            match c {
                Command::If {
                    branches,
                    otherwise,
                } => {
                    let mut taken = false;
                    for (cond, body) in branches {
                        if self.test(cond) {
                            self.run(body, file, depth)?;
                            taken = true;
                            break;
                        }
                    }
                    if !taken {
                        self.run(otherwise, file, depth)?;
                    }
                }
                Command::Block { words, body, .. } => self.block(words, body, file, depth)?,
                Command::Simple { words, .. } => self.simple(words, depth)?,
            }
        }
        Ok(())
    }

    fn block(&mut self, words: &[Word], body: &[Command], file: &str, depth: usize) -> Result<()> {
        let args: Vec<String> = words.iter().map(|w| self.expand(w)).collect();
        let Some(kind) = args.first() else {
            return Ok(());
        };
        if kind != "menuentry" && kind != "submenu" {
            return Ok(()); // `function` bodies run only when called; none matter here.
        }
        let title = args.get(1).cloned().unwrap_or_default();
        let mut id = None;
        let mut i = 2;
        while i < args.len() {
            match args[i].as_str() {
                "--id" => {
                    id = args.get(i + 1).cloned();
                    i += 1;
                }
                "--class" | "--users" | "--hotkey" | "--source" => i += 1,
                _ => {}
            }
            i += 1;
        }
        if kind == "submenu" {
            self.menu.push(Vec::new());
            self.run(body, file, depth)?;
            let items = self.menu.pop().unwrap_or_default();
            self.push(Item::Submenu { title, id, items })
        } else {
            self.push(Item::Entry {
                title,
                id,
                body: body.to_vec(),
                file: file.to_string(),
            })
        }
    }

    fn push(&mut self, item: Item) -> Result<()> {
        self.items += 1;
        if self.items > MAX_MENU_ITEMS {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "guest.boot.too_large",
                format!("the boot menu has more than {MAX_MENU_ITEMS} entries; not a real boot configuration"),
            ));
        }
        if let Some(level) = self.menu.last_mut() {
            level.push(item);
        }
        Ok(())
    }

    fn simple(&mut self, words: &[Word], depth: usize) -> Result<()> {
        let args: Vec<String> = words.iter().map(|w| self.expand(w)).collect();
        let Some(cmd) = args.first() else {
            return Ok(());
        };
        match cmd.as_str() {
            "set" => {
                for a in &args[1..] {
                    if let Some((k, v)) = a.split_once('=') {
                        if valid_name(k) {
                            self.vars.insert(k.to_string(), v.to_string());
                        }
                    }
                }
            }
            "unset" => {
                for a in &args[1..] {
                    self.vars.remove(a);
                }
            }
            "load_env" => {
                let mut path = None;
                let mut names = Vec::new();
                let mut i = 1;
                while i < args.len() {
                    match args[i].as_str() {
                        "-f" | "--file" => {
                            path = args.get(i + 1).cloned();
                            i += 1;
                        }
                        s if s.starts_with('-') => {}
                        s => names.push(s.to_string()),
                    }
                    i += 1;
                }
                let path = path.unwrap_or_else(|| {
                    format!("{}/grubenv", self.vars.get("prefix").map_or("", |p| p))
                });
                if let Some(p) = guest_path(self.fs, &path) {
                    if let Some(text) = read_small(self.fs, &p, 64 << 10)? {
                        let env = parse_grubenv(&String::from_utf8_lossy(&text));
                        self.files.push(String::from_utf8_lossy(&p).into_owned());
                        for (k, v) in env {
                            if names.is_empty() || names.contains(&k) {
                                self.vars.insert(k, v);
                            }
                        }
                    }
                }
            }
            "source" | "configfile" => {
                let Some(target) = args.get(1) else {
                    return Ok(());
                };
                // An include that is not there is an error in GRUB that it prints and goes
                // on from; do the same.
                let Some(p) = guest_path(self.fs, target) else {
                    return Ok(());
                };
                let Some(text) = read_small(self.fs, &p, MAX_CONFIG_BYTES)? else {
                    return Ok(());
                };
                let shown = String::from_utf8_lossy(&p).into_owned();
                self.files.push(shown.clone());
                if cmd == "configfile" {
                    // A new menu replaces the current one; variables carry over.
                    self.menu = vec![Vec::new()];
                    self.items = 0;
                    self.vars.remove("prefix");
                    self.source(&shown, &String::from_utf8_lossy(&text), depth + 1)?;
                    self.replaced = true;
                } else {
                    self.source(&shown, &String::from_utf8_lossy(&text), depth + 1)?;
                }
            }
            "blscfg" => {
                for e in bls_entries(self.fs)? {
                    self.push(Item::Bls(e))?;
                }
            }
            "search" | "search.fs_uuid" | "search.fs_label" | "search.file" => {
                // Which device holds a file does not matter here (the tree has every volume
                // mounted where the guest mounts it); the variable set is only used as a
                // `($dev)` prefix, which paths drop.
                for a in &args[1..] {
                    if let Some(v) = a.strip_prefix("--set=") {
                        self.vars.insert(v.to_string(), String::new());
                    }
                }
            }
            _ => {
                // `name=value` is an assignment too.
                if args.len() == 1 {
                    if let Some((k, v)) = cmd.split_once('=') {
                        if valid_name(k) {
                            self.vars.insert(k.to_string(), v.to_string());
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Evaluate an `if` condition: `[ … ]`/`test …` on strings and file tests, `true`,
    /// `false`. Anything else (`loadfont`, `keystatus`, …) is taken as failed, as it would
    /// mostly be offline: those branches set up fonts and terminals, not the menu.
    fn test(&self, cond: &[Word]) -> bool {
        let args: Vec<String> = cond.iter().map(|w| self.expand(w)).collect();
        let (neg, args) = match args.first().map(String::as_str) {
            Some("!") => (true, &args[1..]),
            _ => (false, &args[..]),
        };
        let r = match args.first().map(String::as_str) {
            Some("true") => true,
            Some("[") => {
                let end = if args.last().map(String::as_str) == Some("]") {
                    args.len() - 1
                } else {
                    args.len()
                };
                self.test_expr(&args[1..end])
            }
            Some("test") => self.test_expr(&args[1..]),
            _ => false,
        };
        r != neg
    }

    fn test_expr(&self, a: &[String]) -> bool {
        match a {
            [s] => !s.is_empty(),
            [op, s] if op == "-n" => !s.is_empty(),
            [op, s] if op == "-z" => s.is_empty(),
            [op, p] if matches!(op.as_str(), "-e" | "-f" | "-s" | "-d") => {
                guest_path(self.fs, p).is_some()
            }
            [x, op, y] if op == "=" || op == "==" => x == y,
            [x, op, y] if op == "!=" => x != y,
            [n, s @ ..] if n == "!" => !self.test_expr(s),
            _ => false,
        }
    }

    /// Resolve `default` and run the chosen entry.
    fn finish(mut self) -> Result<BootConfig> {
        let top = std::mem::take(&mut self.menu)
            .into_iter()
            .next()
            .unwrap_or_default();
        let default = self.vars.get("default").cloned().unwrap_or_default();
        let entries = count(&top);
        let (item, fell_back) = match select(&top, &default) {
            Some(i) => (i, false),
            None => (
                first_entry(&top).ok_or_else(|| no_entries(&self.files))?,
                true,
            ),
        };
        let entry = match item {
            Item::Bls(b) => self.bls_boot_entry(b),
            Item::Entry {
                title,
                id,
                body,
                file,
            } => self.entry_body(title, id.clone(), body, file),
            Item::Submenu { .. } => unreachable_submenu(),
        };
        Ok(BootConfig {
            files: self.files,
            default,
            default_fell_back: fell_back,
            entries,
            entry,
        })
    }

    /// Run an entry's body with the final variables and collect `linux*`/`initrd*`.
    fn entry_body(
        &self,
        title: &str,
        id: Option<String>,
        body: &[Command],
        file: &str,
    ) -> BootEntry {
        let mut entry = BootEntry {
            loader: Loader::Grub2,
            title: title.to_string(),
            id,
            kernel: None,
            initrds: Vec::new(),
            cmdline: String::new(),
            source: (file.to_string(), 0),
        };
        let mut vars = self.vars.clone();
        collect_body(body, &mut vars, &mut entry, 0);
        entry
    }

    fn bls_boot_entry(&self, b: &BlsEntry) -> BootEntry {
        // blscfg expands `$var` in options from the environment: script variables first,
        // then grubenv (RHEL 8's `$kernelopts` lives there).
        let look = |n: &str| self.vars.get(n).or_else(|| self.grubenv.get(n)).cloned();
        let cmdline = b
            .options
            .iter()
            .map(|o| script::expand_vars(o, &look))
            .collect::<Vec<_>>()
            .join(" ");
        BootEntry {
            loader: Loader::Bls,
            title: b.title.clone(),
            id: Some(b.id.clone()),
            kernel: b.linux.clone(),
            initrds: b.initrd.clone(),
            cmdline: normalise(&cmdline),
            source: (b.file.clone(), b.options_line),
        }
    }
}

fn unreachable_submenu() -> BootEntry {
    // `select` and `first_entry` return only entries; kept total rather than panicking.
    BootEntry {
        loader: Loader::Grub2,
        title: String::new(),
        id: None,
        kernel: None,
        initrds: Vec::new(),
        cmdline: String::new(),
        source: (String::new(), 0),
    }
}

fn no_entries(files: &[String]) -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        "guest.boot.no_entry",
        format!(
            "{} defines no boot entry (no menuentry, no BLS entry in /boot/loader/entries); the guest cannot boot a kernel. Regenerate it in the guest (grub2-mkconfig -o <file>, update-grub; on RHEL 8+ check /boot/loader/entries)",
            files.join(" → ")
        ),
    )
}

fn normalise(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn collect_body(
    cmds: &[Command],
    vars: &mut HashMap<String, String>,
    e: &mut BootEntry,
    depth: usize,
) {
    if depth > script::MAX_NESTING {
        return;
    }
    for c in cmds {
        match c {
            Command::Simple { words, line } => {
                let look = |n: &str| vars.get(n).cloned();
                let args: Vec<String> = words.iter().map(|w| w.expand(&look)).collect();
                let Some(cmd) = args.first() else { continue };
                match cmd.as_str() {
                    "linux" | "linuxefi" | "linux16" | "kernel" => {
                        e.kernel = args.get(1).cloned();
                        e.cmdline = normalise(&args.get(2..).unwrap_or_default().join(" "));
                        e.source.1 = *line;
                    }
                    "initrd" | "initrdefi" | "initrd16" => {
                        e.initrds = args[1..].to_vec();
                    }
                    "set" => {
                        for a in &args[1..] {
                            if let Some((k, v)) = a.split_once('=') {
                                vars.insert(k.to_string(), v.to_string());
                            }
                        }
                    }
                    _ => {}
                }
            }
            // Conditions inside entries guard `insmod`/`search` (RHEL 7's
            // `if [ x$feature_platform_search_hint = xy ]`), not the kernel; a kernel line
            // inside one is rare, and the last one met wins.
            Command::If {
                branches,
                otherwise,
            } => {
                for (_, b) in branches {
                    collect_body(b, vars, e, depth + 1);
                }
                collect_body(otherwise, vars, e, depth + 1);
            }
            Command::Block { .. } => {}
        }
    }
}

fn count(items: &[Item]) -> usize {
    items
        .iter()
        .map(|i| match i {
            Item::Submenu { items, .. } => count(items),
            _ => 1,
        })
        .sum()
}

/// Resolve a GRUB `default`: `>`-separated levels, each an index, a title or an id.
fn select<'i>(items: &'i [Item], default: &str) -> Option<&'i Item> {
    let mut level = items;
    let mut parts = default.split('>').peekable();
    while let Some(part) = parts.next() {
        let part = part.trim();
        let item = match part.parse::<usize>() {
            Ok(n) => level.get(n),
            Err(_) => level.iter().find(|i| i.matches(part)),
        }?;
        match item {
            Item::Submenu { items, .. } => {
                if parts.peek().is_none() {
                    // A submenu as the default boots its first entry.
                    return first_entry(items);
                }
                level = items;
            }
            other => return parts.peek().is_none().then_some(other),
        }
    }
    None
}

fn first_entry(items: &[Item]) -> Option<&Item> {
    match items.first()? {
        Item::Submenu { items, .. } => first_entry(items),
        other => Some(other),
    }
}

/// One BLS entry file (`docs/guest-boot.md §1.3`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlsEntry {
    /// The file name without `.conf`: GRUB's menu id for it.
    pub id: String,
    /// The file's path.
    pub file: String,
    /// `title` (the id when missing).
    pub title: String,
    /// `version`.
    pub version: Option<String>,
    /// `linux`.
    pub linux: Option<String>,
    /// `initrd` lines, in order.
    pub initrd: Vec<String>,
    /// `options` lines, unexpanded.
    pub options: Vec<String>,
    /// Line of the first `options`.
    pub options_line: usize,
}

/// Parse one BLS entry.
pub fn parse_bls(id: &str, file: &str, text: &str) -> BlsEntry {
    let mut e = BlsEntry {
        id: id.to_string(),
        file: file.to_string(),
        title: id.to_string(),
        version: None,
        linux: None,
        initrd: Vec::new(),
        options: Vec::new(),
        options_line: 0,
    };
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let (k, v) = line
            .split_once(|c: char| c.is_ascii_whitespace())
            .map_or((line, ""), |(k, v)| (k, v.trim()));
        match k {
            "title" => v.clone_into(&mut e.title),
            "version" => e.version = Some(v.to_string()),
            "linux" => e.linux = Some(v.to_string()),
            "initrd" => e.initrd.extend(v.split_whitespace().map(str::to_string)),
            "options" => {
                if e.options.is_empty() {
                    e.options_line = n + 1;
                }
                e.options.push(v.to_string());
            }
            _ => {}
        }
    }
    e
}

/// The BLS entries in `/boot/loader/entries`, in blscfg's menu order: newest version
/// first by rpm's version comparison, ties broken by the id, also descending (rhboot grub2
/// `blscfg.c`, `bls_cmp`, as shipped by Fedora and RHEL 8+; see `docs/guest-boot.md §1.3`).
pub fn bls_entries(fs: &dyn FileSystem) -> Result<Vec<BlsEntry>> {
    let mut names = Vec::new();
    let listed = fs.list(BLS_DIR, &mut |e| {
        if e.name.ends_with(b".conf") && names.len() < MAX_BLS_ENTRIES {
            names.push(e.name);
        }
        true
    });
    if let Err(e) = listed {
        if is_not_found(&e) {
            return Ok(Vec::new());
        }
        return Err(e);
    }
    let mut out = Vec::new();
    for n in names {
        let mut path = BLS_DIR.to_vec();
        path.push(b'/');
        path.extend_from_slice(&n);
        let Some(text) = read_small(fs, &path, 64 << 10)? else {
            continue;
        };
        let name = String::from_utf8_lossy(&n);
        let id = name.strip_suffix(".conf").unwrap_or(&name);
        out.push(parse_bls(
            id,
            &String::from_utf8_lossy(&path),
            &String::from_utf8_lossy(&text),
        ));
    }
    out.sort_by(|a, b| {
        let va = a.version.as_deref().unwrap_or(&a.id);
        let vb = b.version.as_deref().unwrap_or(&b.id);
        rpm_vercmp(vb, va).then_with(|| b.id.cmp(&a.id))
    });
    Ok(out)
}

/// rpm's version comparison (`rpmvercmp`): split into runs of digits and of letters
/// (other characters separate); digits beat letters; numbers compare numerically; `~`
/// sorts before anything, even the end; otherwise the longer string wins.
pub fn rpm_vercmp(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        let skip = |s: &[u8]| -> usize {
            s.iter()
                .take_while(|c| !c.is_ascii_alphanumeric() && **c != b'~')
                .count()
        };
        a = &a[skip(a)..];
        b = &b[skip(b)..];
        match (a.first() == Some(&b'~'), b.first() == Some(&b'~')) {
            (true, true) => {
                a = &a[1..];
                b = &b[1..];
                continue;
            }
            (true, false) => return Ordering::Less,
            (false, true) => return Ordering::Greater,
            _ => {}
        }
        if a.is_empty() || b.is_empty() {
            // Whichever still has characters left is newer.
            return (!a.is_empty()).cmp(&!b.is_empty());
        }
        let numeric = a[0].is_ascii_digit();
        let run = |s: &[u8]| -> usize {
            s.iter()
                .take_while(|c| {
                    if numeric {
                        c.is_ascii_digit()
                    } else {
                        c.is_ascii_alphabetic()
                    }
                })
                .count()
        };
        let (la, lb) = (run(a), run(b));
        if lb == 0 {
            // Different kinds: a number is newer than letters.
            return if numeric {
                Ordering::Greater
            } else {
                Ordering::Less
            };
        }
        let (ra, rb) = (&a[..la], &b[..lb]);
        let ord = if numeric {
            let ta = &ra[ra.iter().take_while(|&&c| c == b'0').count()..];
            let tb = &rb[rb.iter().take_while(|&&c| c == b'0').count()..];
            ta.len().cmp(&tb.len()).then_with(|| ta.cmp(tb))
        } else {
            ra.cmp(rb)
        };
        if ord != Ordering::Equal {
            return ord;
        }
        a = &a[la..];
        b = &b[lb..];
    }
}

/// Legacy GRUB: `default N` (or `saved`, from `/boot/grub/default`), `title` blocks with
/// `kernel PATH ARGS` and `initrd PATH`.
fn legacy(fs: &dyn FileSystem, path: &str, text: &str) -> Result<BootConfig> {
    let mut default = "0".to_string();
    let mut entries: Vec<BootEntry> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (k, v) = line
            .split_once(|c: char| c.is_ascii_whitespace() || c == '=')
            .map_or((line, ""), |(k, v)| (k, v.trim()));
        match k {
            "default" => v.clone_into(&mut default),
            "title" => {
                if entries.len() >= MAX_MENU_ITEMS {
                    break;
                }
                entries.push(BootEntry {
                    loader: Loader::LegacyGrub,
                    title: v.to_string(),
                    id: None,
                    kernel: None,
                    initrds: Vec::new(),
                    cmdline: String::new(),
                    source: (path.to_string(), n + 1),
                });
            }
            "kernel" => {
                if let Some(e) = entries.last_mut() {
                    let mut it = v.split_whitespace();
                    e.kernel = it.next().map(str::to_string);
                    e.cmdline = it.collect::<Vec<_>>().join(" ");
                    e.source.1 = n + 1;
                }
            }
            "initrd" => {
                if let Some(e) = entries.last_mut() {
                    e.initrds = v.split_whitespace().take(1).map(str::to_string).collect();
                }
            }
            _ => {}
        }
    }
    let mut files = vec![path.to_string()];
    if default == "saved" {
        // `savedefault` writes the entry number as the file's first line.
        if let Some(t) = read_small(fs, b"/boot/grub/default", 64 << 10)? {
            files.push("/boot/grub/default".into());
            default = String::from_utf8_lossy(&t)
                .lines()
                .next()
                .unwrap_or("0")
                .trim()
                .to_string();
        }
    }
    let count = entries.len();
    let idx = default.parse::<usize>().ok().filter(|&i| i < count);
    let fell_back = idx.is_none();
    let entry = entries
        .into_iter()
        .nth(idx.unwrap_or(0))
        .ok_or_else(|| no_entries(&files))?;
    Ok(BootConfig {
        files,
        default,
        default_fell_back: fell_back,
        entries: count,
        entry,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering::{Equal, Greater, Less};

    #[test]
    fn rpm_version_order() {
        // (a, b, a compared with b), as rpmvercmp answers.
        for (a, b, want) in [
            ("5.14.0-162.6.1.el9_1", "5.14.0-70.13.1.el9_0", Greater), // numbers, not text
            ("1.0", "1.0", Equal),
            ("1.0a", "1.0", Greater), // something left over is newer
            ("1.0~rc1", "1.0", Less), // tilde sorts before the end
            ("1.0~rc1", "1.0~rc2", Less),
            ("2.a", "2.1", Less),   // digits beat letters
            ("1.01", "1.1", Equal), // leading zeros ignored
            ("0-rescue-abc", "5.14.0-70", Less),
        ] {
            assert_eq!(rpm_vercmp(a, b), want, "{a} vs {b}");
            assert_eq!(rpm_vercmp(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    fn entry(title: &str) -> Item {
        Item::Entry {
            title: title.into(),
            id: Some(format!("id-{title}")),
            body: Vec::new(),
            file: String::new(),
        }
    }

    fn title(i: Option<&Item>) -> Option<&str> {
        match i? {
            Item::Entry { title, .. } => Some(title),
            _ => None,
        }
    }

    #[test]
    fn default_paths_titles_ids_and_submenus() {
        let menu = vec![
            entry("A"),
            Item::Submenu {
                title: "Advanced".into(),
                id: Some("adv".into()),
                items: vec![entry("B"), entry("C")],
            },
        ];
        // (default, entry booted); None = unresolvable, GRUB falls back to entry 0.
        for (d, want) in [
            ("0", Some("A")),
            ("1>1", Some("C")),
            ("Advanced>C", Some("C")),
            ("adv>id-B", Some("B")),
            ("1", Some("B")), // a submenu boots its first entry
            ("id-A", Some("A")),
            ("2", None),
            ("0>1", None),
            ("", None),
            ("Advanced>Z", None),
        ] {
            assert_eq!(title(select(&menu, d)), want, "{d:?}");
        }
    }

    #[test]
    fn grubenv_escapes_and_padding() {
        let env =
            parse_grubenv("# GRUB Environment Block\nsaved_entry=a\\\\b\nk=x\\ny\n1bad=z\n####");
        assert_eq!(env["saved_entry"], "a\\b");
        assert_eq!(env["k"], "x\ny");
        assert!(!env.contains_key("1bad"));
    }

    #[test]
    fn self_including_config_ends_with_an_error() {
        // `source` of itself twice per level: bounded by depth and total bytes parsed.
        let text = "source /boot/grub/grub.cfg\nsource /boot/grub/grub.cfg\n";
        let run_err = |e: Error| e.code().to_string();
        let fs = OneFile(text.as_bytes().to_vec());
        let e = default_entry(&fs).unwrap_err();
        assert!(["guest.boot.include_depth", "guest.boot.too_large"].contains(&run_err(e).as_str()));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(400))]
        /// Any text made of GRUB's syntax characters and keywords: a result or an error,
        /// never a panic (unbalanced quotes, braces, `if`s, `>` paths, `$` forms).
        #[test]
        fn any_grub_cfg_gives_a_result_or_an_error(
            parts in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just("menuentry 'a' {\n".to_string()),
                    proptest::strategy::Just("submenu b --id s {\n".to_string()),
                    proptest::strategy::Just("}\n".to_string()),
                    proptest::strategy::Just("if [ \"${x}\" ] ; then\n".to_string()),
                    proptest::strategy::Just("else\n".to_string()),
                    proptest::strategy::Just("fi\n".to_string()),
                    proptest::strategy::Just("set default=1>0\n".to_string()),
                    proptest::strategy::Just("set default=\"s>a\"\n".to_string()),
                    proptest::strategy::Just("linux /vmlinuz-1 $x ${y} console=ttyS0\n".to_string()),
                    proptest::strategy::Just("source /boot/grub/grub.cfg\n".to_string()),
                    proptest::strategy::Just("blscfg\n".to_string()),
                    "[ -~\\n'\"${};#]{0,12}",
                ],
                0..40,
            )
        ) {
            let fs = OneFile(parts.concat().into_bytes());
            let _ = default_entry(&fs);
        }
    }

    /// A file system holding `/boot/grub/grub.cfg` only.
    struct OneFile(Vec<u8>);
    impl FileSystem for OneFile {
        fn kind(&self) -> crate::guest::fs::FsKind {
            crate::guest::fs::FsKind::Ext
        }
        fn stat_resolved(&self, path: &[u8]) -> Result<crate::guest::fs::Stat> {
            let file_type = match path {
                b"/" | b"/boot" | b"/boot/grub" => FileType::Directory,
                b"/boot/grub/grub.cfg" => FileType::Regular,
                _ => return Err(crate::guest::fs::not_found(path)),
            };
            Ok(crate::guest::fs::Stat {
                file_type,
                mode: 0o644,
                uid: 0,
                gid: 0,
                size: self.0.len() as u64,
                mtime: crate::guest::fs::Timestamp {
                    seconds: 0,
                    nanoseconds: 0,
                },
                link_target: None,
            })
        }
        fn list_resolved(
            &self,
            path: &[u8],
            _: &mut dyn FnMut(crate::guest::fs::DirEntry) -> bool,
        ) -> Result<()> {
            Err(crate::guest::fs::not_found(path))
        }
        fn open_resolved(&self, _: &[u8]) -> Result<Box<dyn crate::guest::fs::FileReader + '_>> {
            Ok(Box::new(crate::guest::fs::MemFile(self.0.clone(), 0)))
        }
    }
}
