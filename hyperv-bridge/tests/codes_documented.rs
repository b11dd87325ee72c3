//! Every `hyperv.*` code the bridge (and its CLI module) can print is in the README's code
//! table, as vhdforge-core's own `codes_documented` test does for the library's codes.

use std::path::Path;

fn codes_in(text: &str, out: &mut Vec<String>) {
    // Unit-test modules name fixtures, not codes.
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    for piece in text.split('"').skip(1).step_by(2) {
        if piece.starts_with("hyperv.")
            && piece.len() > "hyperv.".len()
            && piece
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '_' || c == '.')
        {
            out.push(piece.to_string());
        }
    }
}

fn collect(dir: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            collect(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") && !p.ends_with("tests.rs") {
            codes_in(&std::fs::read_to_string(&p).unwrap(), out);
        }
    }
}

#[test]
fn every_hyperv_code_is_in_the_readme() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("../README.md")).unwrap();
    let mut codes = Vec::new();
    collect(&root.join("src"), &mut codes);
    codes_in(
        &std::fs::read_to_string(root.join("../vhdforge-cli/src/hyperv_cmd.rs")).unwrap(),
        &mut codes,
    );
    codes.sort();
    codes.dedup();
    // The planner's 13 codes, the host's 7, prep's 2 and the CLI's inventory code at least.
    assert!(
        codes.len() >= 20,
        "found only {} codes: {codes:?}",
        codes.len()
    );
    let missing: Vec<&String> = codes
        .iter()
        .filter(|c| !readme.contains(&format!("`{c}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "codes missing from README.md: {missing:?}"
    );
}
