//! A small parser for LVM's text metadata format (docs/guest-partitions.md §4.5):
//! `key = value` assignments, `name { ... }` sections, `#` comments, quoted strings with
//! backslash escapes, integers and `[ ... ]` lists. Bounded: nesting depth is capped and the
//! input is already capped by the caller, so nothing here grows without limit.

/// Deepest section nesting accepted (real metadata uses 4: vg, `logical_volumes`, lv, segment).
pub const MAX_DEPTH: usize = 16;

/// A parsed value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// An integer.
    Int(i64),
    /// A string (escapes resolved).
    Str(String),
    /// A list of integers and strings.
    List(Vec<Value>),
    /// A `{ ... }` section: its entries in order.
    Section(Section),
}

/// Entries of a section, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Section(pub Vec<(String, Value)>);

impl Section {
    /// The first value named `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    /// An integer entry.
    pub fn int(&self, key: &str) -> Option<i64> {
        match self.get(key)? {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
    /// A string entry.
    pub fn str(&self, key: &str) -> Option<&str> {
        match self.get(key)? {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    /// A sub-section.
    pub fn section(&self, key: &str) -> Option<&Section> {
        match self.get(key)? {
            Value::Section(s) => Some(s),
            _ => None,
        }
    }
    /// A list entry.
    pub fn list(&self, key: &str) -> Option<&[Value]> {
        match self.get(key)? {
            Value::List(l) => Some(l),
            _ => None,
        }
    }
    /// The sub-sections, with their names.
    pub fn sections(&self) -> impl Iterator<Item = (&str, &Section)> {
        self.0.iter().filter_map(|(k, v)| match v {
            Value::Section(s) => Some((k.as_str(), s)),
            _ => None,
        })
    }
}

struct Parser<'t> {
    s: &'t [u8],
    pos: usize,
}

impl Parser<'_> {
    #[allow(clippy::naive_bytecount)] // error path only: not worth a dependency
    fn err(&self, what: &str) -> String {
        let line = self.s[..self.pos.min(self.s.len())]
            .iter()
            .filter(|&&c| c == b'\n')
            .count()
            + 1;
        format!("LVM metadata line {line}: {what}")
    }

    fn skip_space(&mut self) {
        while let Some(&c) = self.s.get(self.pos) {
            if c == b'#' {
                while self.s.get(self.pos).is_some_and(|&c| c != b'\n') {
                    self.pos += 1;
                }
            } else if c.is_ascii_whitespace() {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    fn ident(&mut self) -> Option<String> {
        let start = self.pos;
        while self
            .s
            .get(self.pos)
            .is_some_and(|&c| c.is_ascii_alphanumeric() || b"_.+-".contains(&c))
        {
            self.pos += 1;
        }
        (self.pos > start).then(|| String::from_utf8_lossy(&self.s[start..self.pos]).into_owned())
    }

    fn section_body(&mut self, depth: usize, top: bool) -> Result<Section, String> {
        if depth > MAX_DEPTH {
            return Err(self.err(&format!("sections nested deeper than {MAX_DEPTH}")));
        }
        let mut out = Section::default();
        loop {
            self.skip_space();
            match self.s.get(self.pos) {
                None if top => return Ok(out),
                None => return Err(self.err("unexpected end inside a section")),
                Some(b'}') if !top => {
                    self.pos += 1;
                    return Ok(out);
                }
                _ => {}
            }
            let key = self.ident().ok_or_else(|| self.err("expected a name"))?;
            self.skip_space();
            match self.s.get(self.pos) {
                Some(b'{') => {
                    self.pos += 1;
                    let sec = self.section_body(depth + 1, false)?;
                    out.0.push((key, Value::Section(sec)));
                }
                Some(b'=') => {
                    self.pos += 1;
                    self.skip_space();
                    let v = self.value(true)?;
                    out.0.push((key, v));
                }
                _ => return Err(self.err(&format!("expected `=` or `{{` after `{key}`"))),
            }
        }
    }

    fn value(&mut self, list_ok: bool) -> Result<Value, String> {
        match self.s.get(self.pos) {
            Some(b'"') => self.string().map(Value::Str),
            Some(b'[') if list_ok => {
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    self.skip_space();
                    match self.s.get(self.pos) {
                        Some(b']') => {
                            self.pos += 1;
                            return Ok(Value::List(items));
                        }
                        Some(b',') => self.pos += 1,
                        None => return Err(self.err("unterminated list")),
                        _ => items.push(self.value(false)?),
                    }
                }
            }
            Some(c) if c.is_ascii_digit() || *c == b'-' => {
                let start = self.pos;
                self.pos += 1;
                while self.s.get(self.pos).is_some_and(u8::is_ascii_digit) {
                    self.pos += 1;
                }
                std::str::from_utf8(&self.s[start..self.pos])
                    .ok()
                    .and_then(|t| t.parse().ok())
                    .map(Value::Int)
                    .ok_or_else(|| self.err("integer out of range"))
            }
            _ => Err(self.err("expected a string, number or list")),
        }
    }

    fn string(&mut self) -> Result<String, String> {
        self.pos += 1; // opening quote
        let mut out = Vec::new();
        loop {
            match self.s.get(self.pos) {
                None => return Err(self.err("unterminated string")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(String::from_utf8_lossy(&out).into_owned());
                }
                Some(b'\\') => {
                    let c = *self
                        .s
                        .get(self.pos + 1)
                        .ok_or_else(|| self.err("unterminated string"))?;
                    out.push(c);
                    self.pos += 2;
                }
                Some(&c) => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
    }
}

/// Parse a whole metadata text.
pub fn parse(text: &[u8]) -> Result<Section, String> {
    Parser { s: text, pos: 0 }.section_body(0, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sections_lists_strings_and_comments() {
        let t = br#"# comment
vg0 {
    id = "abc"
    seqno = 7
    status = ["READ", "WRITE"]   # trailing comment
    logical_volumes {
        root {
            segment1 {
                stripes = [
                    "pv0", 0
                ]
            }
        }
    }
}
contents = "Text \"Format\""
"#;
        let s = parse(t).unwrap();
        let vg = s.section("vg0").unwrap();
        assert_eq!(vg.int("seqno"), Some(7));
        assert_eq!(vg.str("id"), Some("abc"));
        assert_eq!(vg.list("status").unwrap().len(), 2);
        let seg = vg
            .section("logical_volumes")
            .unwrap()
            .section("root")
            .unwrap()
            .section("segment1")
            .unwrap();
        assert_eq!(
            seg.list("stripes").unwrap(),
            [Value::Str("pv0".into()), Value::Int(0)]
        );
        assert_eq!(s.str("contents"), Some("Text \"Format\""));
    }

    #[test]
    fn malformed_text_is_an_error_not_a_panic() {
        for t in [
            &b"a {"[..],
            b"a = ",
            b"a = [1, ",
            b"a = \"x",
            b"= 1",
            b"a = 99999999999999999999",
            b"a } ",
            b"a = \\",
        ] {
            assert!(parse(t).is_err(), "{}", String::from_utf8_lossy(t));
        }
        let deep = "a {".repeat(MAX_DEPTH + 2);
        assert!(parse(deep.as_bytes()).unwrap_err().contains("deeper"));
    }
}
