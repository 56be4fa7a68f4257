//! Tokens of the `.ttt` language. `#` starts a comment; newlines matter only in that a binary
//! operator or a call's `(` at the start of a line does not continue the previous line.

use super::diagnostic::{Diagnostic, Span};

/// A token kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Tok {
    /// A name.
    Ident(String),
    /// An integer literal.
    Int(u64),
    /// A literal with a fraction or exponent.
    Float(f64),
    /// A double-quoted string (no escapes).
    Str(String),
    /// Punctuation or an operator, such as `(` or `->`.
    Punct(&'static str),
    /// End of input.
    Eof,
}

/// A token with its location.
#[derive(Clone, Debug, PartialEq)]
pub struct Token {
    /// What it is.
    pub tok: Tok,
    /// Where it is.
    pub span: Span,
    /// Whether a newline separates it from the previous token.
    pub line_start: bool,
}

/// Punctuation, longest first where one is a prefix of another.
const PUNCT: [&str; 28] = [
    "->", "==", "!=", "<=", ">=", "&&", "||", "..", "(", ")", "[", "]", "{", "}", ",", ":", "=",
    "+", "-", "*", "/", "@", "^", ".", ";", "<", ">", "|",
];

/// `!` on its own (after `!=` was tried).
const NOT: &str = "!";

/// Splits `text` into tokens.
pub fn lex(text: &str) -> Result<Vec<Token>, Diagnostic> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    let mut line_start = true;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'\n' {
            line_start = true;
            i += 1;
            continue;
        }
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'#' {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        let start = i;
        let tok = if c.is_ascii_alphabetic() || c == b'_' {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            Tok::Ident(text[start..i].to_string())
        } else if c.is_ascii_digit() {
            lex_number(text, &mut i)?
        } else if c == b'"' {
            let close = text[i + 1..]
                .find(['"', '\n'])
                .filter(|&j| bytes[i + 1 + j] == b'"')
                .ok_or_else(|| {
                    Diagnostic::new("unterminated string", i..i + 1)
                        .with_label("no closing `\"` on this line")
                })?;
            let value = text[i + 1..i + 1 + close].to_string();
            i += close + 2;
            Tok::Str(value)
        } else if let Some(p) = PUNCT.iter().find(|p| text[i..].starts_with(**p)) {
            i += p.len();
            Tok::Punct(p)
        } else if text[i..].starts_with(NOT) {
            i += 1;
            Tok::Punct(NOT)
        } else {
            let ch = text[i..].chars().next().unwrap_or('?');
            return Err(Diagnostic::new(
                format!("unexpected character {ch:?}"),
                i..i + ch.len_utf8(),
            )
            .with_label("not part of the language"));
        };
        tokens.push(Token {
            tok,
            span: start..i,
            line_start,
        });
        line_start = false;
    }
    tokens.push(Token {
        tok: Tok::Eof,
        span: text.len()..text.len(),
        line_start: true,
    });
    Ok(tokens)
}

fn lex_number(text: &str, i: &mut usize) -> Result<Tok, Diagnostic> {
    let bytes = text.as_bytes();
    let start = *i;
    let digits = |i: &mut usize| {
        while *i < bytes.len() && bytes[*i].is_ascii_digit() {
            *i += 1;
        }
    };
    digits(i);
    let mut is_float = false;
    if *i + 1 < bytes.len() && bytes[*i] == b'.' && bytes[*i + 1].is_ascii_digit() {
        is_float = true;
        *i += 1;
        digits(i);
    }
    if *i < bytes.len() && (bytes[*i] == b'e' || bytes[*i] == b'E') {
        let mut j = *i + 1;
        if j < bytes.len() && (bytes[j] == b'+' || bytes[j] == b'-') {
            j += 1;
        }
        if j < bytes.len() && bytes[j].is_ascii_digit() {
            is_float = true;
            *i = j;
            digits(i);
        }
    }
    let s = &text[start..*i];
    let bad = || Diagnostic::new(format!("invalid number `{s}`"), start..*i);
    if is_float {
        match s.parse::<f64>() {
            // Like a `--set` value, a literal must be a finite number: `1e999` would silently
            // become infinity and every result NaN.
            Ok(x) if !x.is_finite() => Err(Diagnostic::new(
                format!("the number `{s}` is too large for a floating-point value"),
                start..*i,
            )
            .with_label("overflows to infinity")),
            Ok(x) => Ok(Tok::Float(x)),
            Err(_) => Err(bad()),
        }
    } else {
        s.parse().map(Tok::Int).map_err(|_| bad())
    }
}
