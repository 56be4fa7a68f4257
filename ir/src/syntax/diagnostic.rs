//! Located compile errors and their rendering with a caret excerpt.

use std::ops::Range;

/// A byte range in a source file.
pub type Span = Range<usize>;

/// One located problem in a program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// What is wrong.
    pub message: String,
    /// Where.
    pub span: Span,
    /// A short note printed under the caret.
    pub label: String,
    /// Which source file the span refers to (an index into [`CompileError::sources`]; 0 is
    /// the file being compiled).
    pub source: usize,
}

impl Diagnostic {
    /// A diagnostic at `span` in the user's file.
    pub fn new(message: impl Into<String>, span: Span) -> Self {
        let message = message.into();
        Diagnostic {
            label: String::new(),
            message,
            span,
            source: 0,
        }
    }

    /// Places the diagnostic in source file `source`.
    pub fn in_source(mut self, source: usize) -> Self {
        self.source = source;
        self
    }

    /// Adds the note printed under the caret.
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }
}

/// One source file: its name in messages and its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceFile {
    /// The name shown in messages (the path as given).
    pub name: String,
    /// The text.
    pub text: String,
}

/// A program that failed to compile, with its sources for rendering.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{}", self.render(false))]
pub struct CompileError {
    /// Every source file involved: the compiled file first, then the prelude and imports.
    pub sources: Vec<SourceFile>,
    /// The problems.
    pub diagnostics: Vec<Diagnostic>,
}

/// 1-based line and column (in characters) of byte offset `offset` in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

impl CompileError {
    /// Renders every diagnostic as `error: FILE:LINE:COL: MESSAGE` followed by the source line
    /// with carets under the culprit (rustc style). `color` adds ANSI colors for terminals.
    pub fn render(&self, color: bool) -> String {
        let (red, blue, bold, reset) = if color {
            ("\x1b[31m", "\x1b[34m", "\x1b[1m", "\x1b[0m")
        } else {
            ("", "", "", "")
        };
        let mut out = String::new();
        for d in &self.diagnostics {
            let Some(SourceFile { name, text }) =
                self.sources.get(d.source).or(self.sources.first())
            else {
                out.push_str(&format!("error: {}\n", d.message));
                continue;
            };
            let text = text.as_str();
            let start = floor_char_boundary(text, d.span.start.min(text.len()));
            let end = floor_char_boundary(text, d.span.end.clamp(start, text.len()));
            let (line, col) = line_col(text, start);
            out.push_str(&format!(
                "{bold}{red}error{reset}{bold}: {name}:{line}:{col}: {}{reset}\n",
                d.message
            ));
            let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
            let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
            let source_line = &text[line_start..line_end];
            let expand = |s: &str| s.replace('\t', "    ");
            let lead = expand(&text[line_start..start]).chars().count();
            let width = expand(&text[start..end.min(line_end)])
                .chars()
                .count()
                .max(1);
            let gutter = " ".repeat(line.to_string().len());
            let label = if d.label.is_empty() {
                ""
            } else {
                d.label.as_str()
            };
            out.push_str(&format!("{blue}{gutter} |{reset}\n"));
            out.push_str(&format!("{blue}{line} |{reset} {}\n", expand(source_line)));
            out.push_str(&format!(
                "{blue}{gutter} |{reset} {}{red}{}{}{reset}\n",
                " ".repeat(lead),
                "^".repeat(width),
                if label.is_empty() {
                    String::new()
                } else {
                    format!(" {label}")
                }
            ));
        }
        out
    }
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    while i > 0 && !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}
