//! tttc's front end, graph IR and kernel IR.
//!
//! - [`syntax`]: the `.ttt` language: lexer, parser and lowering to IR, with located
//!   diagnostics.
//! - [`Graph`]: a dataflow graph of a small closed set of [`Op`]s on petgraph; every node carries
//!   its element type and (possibly symbolic) shape. [`Program`] is a main graph with its
//!   settable configuration; [`composite`] defines the composite elementwise functions over
//!   primitive ones.
//! - [`TttScan`]: the sequence-level construct, a scan over mini-batches carrying the
//!   fast-weight state.
//! - [`kernel`]: the kernel IR — loops over flat buffers, each loop with a schedule — that the
//!   lowering in `tttc-passes` produces and every native code generator consumes.
//! - [`verify`], [`printer`], [`dot`] and serde JSON (via `Serialize`/`Deserialize` on
//!   [`Program`]); [`float_text`] spells constants the same way in every printer.

#![warn(missing_docs)]

pub mod composite;
pub mod dot;
pub mod float_text;
pub mod graph;
mod json;
pub mod kernel;
pub mod op;
pub mod printer;
pub mod program;
pub mod rule;
pub mod scan;
pub mod shape;
pub mod syntax;
pub mod verify;

pub use graph::{Graph, GraphError, GraphOutput, Node, NodeId};
pub use op::{BinaryOp, Op, ReduceOp, TypeError, UnaryOp};
pub use program::{
    ConfigParam, ConfigValue, DerivedDim, DimExpr, IntegerInput, Program, Setting, Settings,
};
pub use rule::{LinearRule, Poly};
pub use scan::{OperandAxes, OperandKind, TokenEtaForm, TttScan, UpdateRule, MINI_BATCH_DIM};
pub use shape::{DType, Dim, NodeType, Shape, TensorType};
