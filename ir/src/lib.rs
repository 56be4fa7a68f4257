//! tttc's front end and graph IR.
//!
//! - [`syntax`]: the `.ttt` language: lexer, parser and lowering to IR, with located
//!   diagnostics.
//! - [`Graph`]: a dataflow graph of a small closed set of [`Op`]s on petgraph; every node carries
//!   its element type and (possibly symbolic) shape.
//! - [`TttScan`]: the sequence-level construct, a scan over mini-batches carrying the
//!   fast-weight state.
//! - [`verify`], [`printer`], [`dot`] and serde JSON (via `Serialize`/`Deserialize` on
//!   [`Program`]).

pub mod composite;
pub mod dot;
pub mod graph;
mod json;
pub mod kernel;
pub mod op;
pub mod printer;
pub mod program;
pub mod scan;
pub mod shape;
pub mod syntax;
pub mod verify;

pub use graph::{Graph, GraphError, GraphOutput, Node, NodeId};
pub use op::{BinaryOp, Op, ReduceOp, TypeError, UnaryOp};
pub use program::{
    ConfigParam, ConfigValue, DerivedDim, DimExpr, IntegerInput, Program, Setting, Settings,
};
pub use scan::{OperandAxes, OperandKind, TttScan, MINI_BATCH_DIM};
pub use shape::{DType, Dim, NodeType, Shape, TensorType};
