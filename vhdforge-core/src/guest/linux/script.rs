//! The subset of GRUB 2's script language that distributions' `grub.cfg` files use, parsed into
//! commands (`docs/guest-boot.md §1.2`): words with single/double quotes, backslash escapes and
//! `$var`/`${var}` references kept for later expansion, `#` comments, `;` and newlines as
//! separators, `{ … }` blocks after `menuentry`, `submenu` and `function`, and `if`/`elif`/
//! `else`/`fi`. Loops (`for`, `while`, `until`) are parsed and never run: no distribution's
//! menu depends on them.
//!
//! Bounded: nesting deeper than [`MAX_NESTING`] is refused, so a hostile file cannot exhaust
//! the stack.

use crate::error::{Error, ErrorKind, Result};

/// Deepest nesting of blocks and `if`s accepted (real files nest 3 or 4 deep).
pub const MAX_NESTING: usize = 64;

/// One piece of a word: literal text, or text in which `$` references are expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Single-quoted or backslash-escaped text.
    Literal(String),
    /// Unquoted or double-quoted text, `$name`/`${name}` still in it.
    Expand(String),
}

/// A word of a command.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Word(pub Vec<Piece>);

impl Word {
    /// The word with every reference replaced through `lookup` (unset → empty), as GRUB does.
    pub fn expand(&self, lookup: &dyn Fn(&str) -> Option<String>) -> String {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Piece::Literal(s) => out.push_str(s),
                Piece::Expand(s) => out.push_str(&expand_vars(s, lookup)),
            }
        }
        out
    }

    /// The word's text if it has no quotes and no references (a keyword or brace).
    fn bare(&self) -> Option<&str> {
        match self.0.as_slice() {
            [Piece::Expand(s)] if !s.contains('$') => Some(s),
            _ => None,
        }
    }
}

/// Replace `$name` and `${name}` in `s`.
pub fn expand_vars(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, tail) = if let Some(inner) = after.strip_prefix('{') {
            if let Some(j) = inner.find('}') {
                (&inner[..j], &inner[j + 1..])
            } else {
                // No closing brace: GRUB would reject the word; keep the text as it is.
                out.push_str("${");
                rest = inner;
                continue;
            }
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        if name.is_empty() {
            out.push('$');
        } else {
            out.push_str(&lookup(name).unwrap_or_default());
        }
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// A parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A simple command: its words and the line it starts on (1-based).
    Simple {
        /// The words, command name first.
        words: Vec<Word>,
        /// Line number in its file.
        line: usize,
    },
    /// `if`: (condition, body) pairs for `if` and each `elif`, then the `else` body.
    If {
        /// Conditions and bodies in order.
        branches: Vec<(Vec<Word>, Vec<Command>)>,
        /// The `else` body (empty when there is none).
        otherwise: Vec<Command>,
    },
    /// `menuentry`, `submenu` or `function` with its arguments and `{ … }` body.
    Block {
        /// The words before `{`, command name first.
        words: Vec<Word>,
        /// The body.
        body: Vec<Command>,
        /// Line number of the command.
        line: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(Word, usize),
    /// `;` or a newline.
    Sep,
}

fn syntax(file: &str, line: usize, what: &str) -> Error {
    Error::new(
        ErrorKind::Corrupt,
        "guest.boot.syntax",
        format!("{file} line {line}: {what}; GRUB would refuse this file too — regenerate it in the guest (grub2-mkconfig -o <file> or update-grub)"),
    )
}

/// Append `c` to the word's last piece when it is of the same kind, else start a piece.
fn push_piece(word: &mut Word, literal: bool, c: char) {
    match (word.0.last_mut(), literal) {
        (Some(Piece::Literal(s)), true) | (Some(Piece::Expand(s)), false) => s.push(c),
        _ => word.0.push(if literal {
            Piece::Literal(c.to_string())
        } else {
            Piece::Expand(c.to_string())
        }),
    }
}

type Chars<'a> = std::iter::Peekable<std::str::Chars<'a>>;

/// The rest of a '…' string: everything literal up to the closing quote.
fn single_quoted(chars: &mut Chars<'_>, word: &mut Word, line: &mut usize) {
    for n in chars.by_ref() {
        if n == '\'' {
            break;
        }
        if n == '\n' {
            *line += 1;
        }
        push_piece(word, true, n);
    }
}

/// The rest of a "…" string: `$` references kept for expansion; `\"`, `\\` and `\$`
/// escaped; a backslash-newline continues the line.
fn double_quoted(chars: &mut Chars<'_>, word: &mut Word, line: &mut usize) {
    while let Some(n) = chars.next() {
        match n {
            '"' => break,
            '\\' => match chars.next() {
                Some('\n') => *line += 1,
                Some(e @ ('"' | '\\' | '$')) => push_piece(word, true, e),
                Some(e) => {
                    push_piece(word, false, '\\');
                    push_piece(word, false, e);
                }
                None => {}
            },
            '\n' => {
                *line += 1;
                push_piece(word, false, n);
            }
            _ => push_piece(word, false, n),
        }
    }
}

fn tokenize(text: &str) -> Vec<Token> {
    let mut toks = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1usize;
    let mut word = Word::default();
    let mut word_line = 1usize;
    let mut in_word = false;
    macro_rules! end_word {
        () => {
            if std::mem::take(&mut in_word) {
                toks.push(Token::Word(std::mem::take(&mut word), word_line));
            }
        };
    }
    while let Some(c) = chars.next() {
        match c {
            '\n' => {
                end_word!();
                toks.push(Token::Sep);
                line += 1;
            }
            ';' => {
                end_word!();
                toks.push(Token::Sep);
            }
            ' ' | '\t' | '\r' => end_word!(),
            '#' if !in_word => {
                while chars.peek().is_some_and(|&c| c != '\n') {
                    chars.next();
                }
            }
            '\\' => {
                match chars.next() {
                    // A line continuation.
                    Some('\n') => line += 1,
                    Some(n) => {
                        if !in_word {
                            word_line = line;
                        }
                        in_word = true;
                        push_piece(&mut word, true, n);
                    }
                    None => {}
                }
            }
            '\'' => {
                if !in_word {
                    word_line = line;
                }
                in_word = true;
                // An empty '' still makes a word.
                word.0.push(Piece::Literal(String::new()));
                single_quoted(&mut chars, &mut word, &mut line);
            }
            '"' => {
                if !in_word {
                    word_line = line;
                }
                in_word = true;
                word.0.push(Piece::Expand(String::new()));
                double_quoted(&mut chars, &mut word, &mut line);
            }
            _ => {
                if !in_word {
                    word_line = line;
                }
                in_word = true;
                push_piece(&mut word, false, c);
            }
        }
    }
    end_word!();
    toks.push(Token::Sep);
    toks
}

/// Parse a whole script. `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Vec<Command>> {
    let toks = tokenize(text);
    let mut p = Parser {
        toks: &toks,
        i: 0,
        file,
    };
    let (cmds, end) = p.list(0, &[])?;
    if let Some((kw, line)) = end {
        return Err(syntax(file, line, &format!("unexpected '{kw}'")));
    }
    Ok(cmds)
}

/// Commands parsed, and the stop word that ended them with its line.
type Listed = (Vec<Command>, Option<(String, usize)>);

struct Parser<'a> {
    toks: &'a [Token],
    i: usize,
    file: &'a str,
}

impl Parser<'_> {
    /// Read one command's words up to a separator.
    fn words(&mut self) -> Vec<(Word, usize)> {
        let mut ws = Vec::new();
        while let Some(t) = self.toks.get(self.i) {
            self.i += 1;
            match t {
                Token::Sep => break,
                Token::Word(w, l) => ws.push((w.clone(), *l)),
            }
        }
        ws
    }

    /// Parse commands until one of `stops` (a keyword or `}`) starts a command, or the end.
    /// Returns the commands and the stop word met (with its line), if any.
    fn list(&mut self, depth: usize, stops: &[&str]) -> Result<Listed> {
        if depth > MAX_NESTING {
            let line = self.line();
            return Err(syntax(
                self.file,
                line,
                &format!("blocks nest deeper than {MAX_NESTING}"),
            ));
        }
        let mut cmds = Vec::new();
        loop {
            // Skip empty commands.
            while matches!(self.toks.get(self.i), Some(Token::Sep)) {
                self.i += 1;
            }
            let Some(Token::Word(first, line)) = self.toks.get(self.i) else {
                return Ok((cmds, None));
            };
            let line = *line;
            let kw = first.bare().unwrap_or("").to_string();
            if stops.contains(&kw.as_str()) {
                self.i += 1;
                return Ok((cmds, Some((kw, line))));
            }
            if ["then", "elif", "else", "fi", "done", "}"].contains(&kw.as_str()) {
                return Err(syntax(self.file, line, &format!("unexpected '{kw}'")));
            }
            match kw.as_str() {
                "if" => {
                    self.i += 1;
                    cmds.push(self.if_command(depth, line)?);
                }
                "for" | "while" | "until" => {
                    // Parsed to stay in step, never run.
                    self.i += 1;
                    self.words();
                    let (_, end) = self.list(depth + 1, &["done"])?;
                    if end.is_none() {
                        return Err(syntax(self.file, line, &format!("'{kw}' without 'done'")));
                    }
                    self.words();
                }
                _ => {
                    let ws = self.words();
                    let is_block = ws.last().and_then(|(w, _)| w.bare()) == Some("{");
                    let mut words: Vec<Word> = ws.into_iter().map(|(w, _)| w).collect();
                    if is_block {
                        words.pop();
                        let (body, end) = self.list(depth + 1, &["}"])?;
                        if end.is_none() {
                            return Err(syntax(
                                self.file,
                                line,
                                "a '{' block is never closed with '}'",
                            ));
                        }
                        // Words after `}` on its line (rare) are dropped with it.
                        self.words();
                        cmds.push(Command::Block { words, body, line });
                    } else {
                        cmds.push(Command::Simple { words, line });
                    }
                }
            }
        }
    }

    fn line(&self) -> usize {
        self.toks[..self.i.min(self.toks.len())]
            .iter()
            .rev()
            .find_map(|t| match t {
                Token::Word(_, l) => Some(*l),
                Token::Sep => None,
            })
            .unwrap_or(1)
    }

    fn if_command(&mut self, depth: usize, line: usize) -> Result<Command> {
        let mut branches = Vec::new();
        let mut otherwise = Vec::new();
        let mut cond: Vec<Word> = self.words().into_iter().map(|(w, _)| w).collect();
        loop {
            // `then` may be on the condition's line after `;` or on the next line.
            let (pre, end) = self.list(depth + 1, &["then"])?;
            if end.is_none() || !pre.is_empty() {
                return Err(syntax(self.file, line, "'if' without 'then'"));
            }
            let rest: Vec<Word> = self.words().into_iter().map(|(w, _)| w).collect();
            let (mut body, end) = self.list(depth + 1, &["elif", "else", "fi"])?;
            if !rest.is_empty() {
                body.insert(0, Command::Simple { words: rest, line });
            }
            branches.push((std::mem::take(&mut cond), body));
            match end.as_ref().map(|(k, _)| k.as_str()) {
                Some("elif") => {
                    cond = self.words().into_iter().map(|(w, _)| w).collect();
                }
                Some("else") => {
                    let rest: Vec<Word> = self.words().into_iter().map(|(w, _)| w).collect();
                    let (mut body, end) = self.list(depth + 1, &["fi"])?;
                    if end.is_none() {
                        return Err(syntax(self.file, line, "'if' without 'fi'"));
                    }
                    if !rest.is_empty() {
                        body.insert(0, Command::Simple { words: rest, line });
                    }
                    otherwise = body;
                    self.words();
                    break;
                }
                Some("fi") => {
                    self.words();
                    break;
                }
                _ => return Err(syntax(self.file, line, "'if' without 'fi'")),
            }
        }
        Ok(Command::If {
            branches,
            otherwise,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(w: &Word) -> String {
        w.expand(&|_| None)
    }

    #[test]
    fn quotes_escapes_and_blocks() {
        let cmds = parse(
            "set a='x y' # comment\nmenuentry \"T $v\" --id 'i' {\n linux /k a=\\\"b\\\" \\\n c\n}\n",
            "t",
        )
        .unwrap();
        assert_eq!(cmds.len(), 2);
        let Command::Simple { words, .. } = &cmds[0] else {
            panic!()
        };
        assert_eq!(lit(&words[1]), "a=x y");
        let Command::Block { words, body, line } = &cmds[1] else {
            panic!()
        };
        assert_eq!(*line, 2);
        assert_eq!(words[1].expand(&|n| (n == "v").then(|| "V".into())), "T V");
        let Command::Simple { words, .. } = &body[0] else {
            panic!()
        };
        let w: Vec<String> = words.iter().map(lit).collect();
        assert_eq!(w, ["linux", "/k", "a=\"b\"", "c"]);
    }

    #[test]
    fn if_elif_else_on_one_line_or_many() {
        let cmds = parse(
            "if [ x ] ; then set a=1; elif [ y ]; then\n set a=2\nelse set a=3 ; fi\n",
            "t",
        )
        .unwrap();
        let Command::If {
            branches,
            otherwise,
        } = &cmds[0]
        else {
            panic!()
        };
        assert_eq!(branches.len(), 2);
        assert_eq!(branches[1].1.len(), 1);
        assert_eq!(otherwise.len(), 1);
    }

    #[test]
    fn unbalanced_and_deep_input_is_an_error_not_a_crash() {
        assert!(parse("menuentry x {\n linux /k\n", "t").is_err());
        assert!(parse("if [ a ]; then\n", "t").is_err());
        assert!(parse("fi\n", "t").is_err());
        let deep = "if a; then\n".repeat(200);
        assert!(parse(&deep, "t").is_err());
        let deep = "menuentry x {\n".repeat(200);
        assert!(parse(&deep, "t").is_err());
    }

    #[test]
    fn expansion_forms() {
        let f = |n: &str| match n {
            "a" => Some("A".to_string()),
            _ => None,
        };
        assert_eq!(expand_vars("$a-${a}x $b ${", &f), "A-Ax  ${");
        assert_eq!(expand_vars("cost $", &f), "cost $");
    }
}
