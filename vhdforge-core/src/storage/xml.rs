//! The little XML the Blob service sends back: error bodies (`<Code>`, `<Message>`) and
//! page lists (docs/azure-page-blob.md §1.1). Untrusted input: no panics, sizes bounded by
//! what the caller read.

use std::ops::Range;

/// The text of the first `<tag>…</tag>` in `xml`.
pub fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let s = xml.find(&open)? + open.len();
    let e = xml[s..].find(&close)? + s;
    Some(xml[s..e].trim().to_string())
}

/// Parse a `PageList` document: `<PageRange><Start>s</Start><End>e</End></PageRange>`
/// (inclusive ends) and the optional `NextMarker`. `ClearRange` elements (diffs) are skipped.
pub fn parse_page_list(
    xml: &str,
) -> std::result::Result<(Vec<Range<u64>>, Option<String>), String> {
    if !xml.contains("<PageList") {
        return Err(format!(
            "expected a <PageList> document, got {:?}",
            xml.chars().take(80).collect::<String>()
        ));
    }
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find("<PageRange>") {
        let after = &rest[i + "<PageRange>".len()..];
        let end = after
            .find("</PageRange>")
            .ok_or("unterminated <PageRange>")?;
        let item = &after[..end];
        let num = |t: &str| -> std::result::Result<u64, String> {
            xml_text(item, t)
                .ok_or_else(|| format!("<PageRange> without <{t}>"))?
                .parse::<u64>()
                .map_err(|e| format!("bad <{t}>: {e}"))
        };
        let (s, e) = (num("Start")?, num("End")?);
        let e1 = e.checked_add(1).ok_or("End overflows")?;
        if e1 <= s {
            return Err(format!("page range {s}-{e} ends before it starts"));
        }
        out.push(s..e1);
        rest = &after[end..];
    }
    let next = xml_text(xml, "NextMarker").filter(|m| !m.is_empty());
    Ok((out, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_list_parsing() {
        let xml = "<?xml version=\"1.0\"?><PageList><PageRange><Start>0</Start><End>511</End></PageRange>\
                   <ClearRange><Start>512</Start><End>1023</End></ClearRange>\
                   <PageRange><Start>1048576</Start><End>2097151</End></PageRange><NextMarker>abc</NextMarker></PageList>";
        let (r, next) = parse_page_list(xml).unwrap();
        assert_eq!(r, vec![0..512, 1_048_576..2_097_152]);
        assert_eq!(next.as_deref(), Some("abc"));
        // Empty list, empty marker.
        assert_eq!(
            parse_page_list("<PageList><NextMarker/></PageList>").unwrap(),
            (vec![], None)
        );
        // Hostile input: errors, no panic.
        for bad in ["", "<PageList><PageRange><Start>5</Start></PageRange></PageList>", "<PageList><PageRange><Start>9</Start><End>3</End></PageRange></PageList>",
                    "<PageList><PageRange><Start>0</Start><End>18446744073709551615</End></PageRange></PageList>", "<PageList><PageRange>"] {
            assert!(parse_page_list(bad).is_err(), "{bad}");
        }
    }
}
