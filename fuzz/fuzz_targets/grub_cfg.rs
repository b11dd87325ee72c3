//! GRUB's script language and the boot-entry resolution on it: the input is split at 0xFF
//! into /boot/grub/grub.cfg, /boot/grub/grubenv, a BLS entry and an ESP stub, held in a
//! memory file system, and the default entry is resolved as the preflight does.
#![no_main]
#[path = "common.rs"]
mod common;
use std::collections::BTreeMap;
use vhdforge_core::guest::linux::{boot, script};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let p = common::pieces(data, 4);
    let cfg = String::from_utf8_lossy(p[0]);
    if let Ok(cmds) = script::parse(&cfg, "/boot/grub/grub.cfg") {
        let _ = format!("{cmds:?}");
    }
    let _ = script::expand_vars(&cfg, &|n| (n.len() < 4).then(|| n.repeat(2)));
    let _ = boot::parse_grubenv(&String::from_utf8_lossy(p[1]));
    let _ = boot::parse_bls(
        "fuzz",
        "/boot/loader/entries/fuzz.conf",
        &String::from_utf8_lossy(p[2]),
    );
    let mut files = BTreeMap::new();
    for (path, d) in [
        ("/boot/grub/grub.cfg", p[0]),
        ("/boot/grub2/grubenv", p[1]),
        ("/boot/loader/entries/a-1.0.conf", p[2]),
        ("/boot/efi/EFI/debian/grub.cfg", p[3]),
        ("/boot/grub2/grub.cfg", p[0]),
    ] {
        if !d.is_empty() {
            files.insert(path.as_bytes().to_vec(), d.to_vec());
        }
    }
    let fs = common::MemFs(files);
    let _ = boot::default_entry(&fs);
});
