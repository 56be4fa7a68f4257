//! The `.ttt` language: [`lexer`], [`parser`] to the [`ast`], and [`lower`] to a typed
//! [`crate::Program`], with located [`diagnostic`]s. The grammar is documented in
//! `docs/language.md`.

pub mod ast;
pub mod diagnostic;
pub mod lexer;
pub mod lower;
pub mod parser;

pub use diagnostic::SourceFile;
pub use diagnostic::{CompileError, Diagnostic, Span};
pub use lower::{compile, compile_bytes, read_source, MAX_SOURCE_BYTES};

/// File name of the prelude in diagnostics.
pub const PRELUDE_NAME: &str = "<prelude>";

/// The prelude's source text.
pub const PRELUDE: &str = include_str!("prelude.ttt");
