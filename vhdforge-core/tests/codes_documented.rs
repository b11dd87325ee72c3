//! Every finding/error code used in the library source is listed in the README, so the
//! documented codes cannot drift from the code.

use std::path::Path;

fn collect(dir: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            collect(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") && !p.ends_with("tests.rs") {
            let text = std::fs::read_to_string(&p).unwrap();
            // Skip unit-test modules: they name fixtures, not codes.
            let text = text.split("#[cfg(test)]").next().unwrap_or("");
            for piece in text.split('"').skip(1).step_by(2) {
                let is_code = [
                    "vhd.",
                    "vhdx.",
                    "azure.",
                    "convert.",
                    "inplace.",
                    "parent.",
                    "raw.",
                    "read.",
                    "marketplace.",
                    "upload.",
                    "verify.",
                    "remote.",
                    "sas.",
                    "copy.",
                    "listing.",
                    // Preflight's own families; the rest of `guest.` joins once the
                    // partition, LVM and file-system codes are documented.
                    "guest.linux.",
                    "guest.disk.",
                    "guest.os.",
                ]
                .iter()
                .any(|p| piece.starts_with(p))
                    && piece.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.'
                    })
                    && !piece.ends_with('.')
                    && !piece.ends_with(".vhd")
                    && !piece.ends_with(".vhdx");
                if is_code {
                    out.push(piece.to_string());
                }
            }
        }
    }
}

#[test]
fn every_code_is_in_the_readme() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("../README.md")).unwrap();
    let mut codes = Vec::new();
    collect(&root.join("src"), &mut codes);
    codes.sort();
    codes.dedup();
    assert!(
        codes.len() > 50,
        "found only {} codes: {codes:?}",
        codes.len()
    );
    let missing: Vec<&String> = codes
        .iter()
        .filter(|c| {
            let (family, leaf) = c.rsplit_once('.').unwrap();
            // `vhdx.metadata.*` style rows document a whole family whose leaves they name.
            let family_row = readme.contains(&format!("`{family}.*`")) && readme.contains(leaf);
            !(readme.contains(&format!("`{c}`")) || family_row)
        })
        .collect();
    assert!(
        missing.is_empty(),
        "codes missing from README.md: {missing:?}"
    );
}
