//! Which characters of a guest's text (file names, labels, link targets, lines of its
//! files) must not reach a person's terminal as they are. A guest is untrusted: a control
//! character can move the cursor or rewrite the lines above, and a bidirectional control or
//! an invisible character can make a listing lie about a name — `evil\u{202E}txt.exe` shows
//! as `evilexe.txt`, `passwd\u{200B}` looks like `passwd`. Every text output that shows
//! guest text (`ls`, `volumes`, preflight evidence, error messages) escapes what
//! [`must_escape`] says, each in its own visible form; JSON output keeps the text exact (a
//! program reads it, and JSON escapes control characters itself).

/// True for a character shown escaped: control characters (Unicode `Cc`), the
/// bidirectional controls (U+061C, U+200E, U+200F, U+202A–U+202E, U+2066–U+2069), the other
/// format characters (`Cf`: zero-width space, joiners, word joiner, invisible operators,
/// byte-order mark, soft hyphen, interlinear annotation, tag characters …), the line and
/// paragraph separators, and the Hangul fillers that render as nothing.
pub fn must_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            // Format characters (Cf), bidirectional controls among them.
            '\u{00AD}'
                | '\u{0600}'..='\u{0605}'
                | '\u{061C}'
                | '\u{06DD}'
                | '\u{070F}'
                | '\u{0890}'..='\u{0891}'
                | '\u{08E2}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{110BD}'
                | '\u{110CD}'
                | '\u{13430}'..='\u{1343F}'
                | '\u{1BCA0}'..='\u{1BCA3}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0001}'
                | '\u{E0020}'..='\u{E007F}'
                // Line and paragraph separators (Zl, Zp): a line break a terminal may honour.
                | '\u{2028}'
                | '\u{2029}'
                // Letters that render as nothing (Hangul fillers), and the combining
                // grapheme joiner.
                | '\u{034F}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{3164}'
                | '\u{FFA0}'
        )
}

#[cfg(test)]
mod tests {
    use super::must_escape;

    #[test]
    fn what_is_escaped_and_what_is_not() {
        // (character, escaped?) — one per family, and letters that must stay as they are.
        let cases = [
            ('\u{1B}', true),    // ESC: terminal escape sequences
            ('\u{7F}', true),    // DEL
            ('\u{9B}', true),    // C1 CSI
            ('\u{202E}', true),  // RIGHT-TO-LEFT OVERRIDE
            ('\u{202A}', true),  // LEFT-TO-RIGHT EMBEDDING
            ('\u{2066}', true),  // LEFT-TO-RIGHT ISOLATE
            ('\u{2069}', true),  // POP DIRECTIONAL ISOLATE
            ('\u{200E}', true),  // LEFT-TO-RIGHT MARK
            ('\u{200F}', true),  // RIGHT-TO-LEFT MARK
            ('\u{061C}', true),  // ARABIC LETTER MARK
            ('\u{200B}', true),  // ZERO WIDTH SPACE
            ('\u{200D}', true),  // ZERO WIDTH JOINER
            ('\u{2060}', true),  // WORD JOINER
            ('\u{FEFF}', true),  // BYTE ORDER MARK / ZWNBSP
            ('\u{00AD}', true),  // SOFT HYPHEN
            ('\u{2028}', true),  // LINE SEPARATOR
            ('\u{E0041}', true), // TAG LATIN CAPITAL LETTER A
            ('\u{3164}', true),  // HANGUL FILLER
            ('a', false),
            (' ', false),
            ('é', false),
            ('א', false), // Hebrew letters are text, not controls
            ('ع', false),
            ('中', false),
            ('😀', false),
            ('\u{00A0}', false), // NO-BREAK SPACE: visible as a space
        ];
        for (c, want) in cases {
            assert_eq!(must_escape(c), want, "U+{:04X}", c as u32);
        }
    }
}
