//! The syntax tree of a `.ttt` file.

use super::diagnostic::Span;

/// A name with its location.
#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    /// The name.
    pub name: String,
    /// Where it is written.
    pub span: Span,
}

/// One dimension in a shape annotation.
#[derive(Clone, Debug, PartialEq)]
pub enum DimAst {
    /// A literal extent.
    Int(usize, Span),
    /// A named dimension.
    Sym(Ident),
}

/// A shape annotation `[d0, d1, ...]`.
#[derive(Clone, Debug, PartialEq)]
pub struct ShapeAst {
    /// The dimensions.
    pub dims: Vec<DimAst>,
    /// Where it is written.
    pub span: Span,
}

/// A function parameter, optionally annotated with a shape.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamAst {
    /// Its name.
    pub name: Ident,
    /// Its shape, checked at every call.
    pub shape: Option<ShapeAst>,
}

/// `let` bindings followed by a result expression.
#[derive(Clone, Debug, PartialEq)]
pub struct Body {
    /// Local bindings, in order.
    pub lets: Vec<(Ident, Expr)>,
    /// The value of the body.
    pub result: Expr,
}

/// A function: `fn name(params) [-> shape] = expr` or `{ let ...; expr }`. `loss` and `out`
/// inside an `inner` block use the same form.
#[derive(Clone, Debug, PartialEq)]
pub struct FnDecl {
    /// Its name.
    pub name: Ident,
    /// Parameters.
    pub params: Vec<ParamAst>,
    /// The declared result shape, checked.
    pub ret: Option<ShapeAst>,
    /// The body.
    pub body: Body,
}

/// A fast-weight state tensor or an outer parameter of an inner model.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorDecl {
    /// Its name.
    pub name: Ident,
    /// Its shape.
    pub shape: ShapeAst,
}

/// `inner NAME { state ...; param ...; fn ...; loss(...) = ...; out(...) = ... }`
#[derive(Clone, Debug, PartialEq)]
pub struct InnerDecl {
    /// Its name.
    pub name: Ident,
    /// Fast-weight state.
    pub states: Vec<TensorDecl>,
    /// Outer parameters.
    pub params: Vec<TensorDecl>,
    /// Helper functions that may use the state and parameters.
    pub fns: Vec<FnDecl>,
    /// The self-supervised loss of one token.
    pub loss: Option<FnDecl>,
    /// The output for one token.
    pub out: Option<FnDecl>,
    /// The whole block.
    pub span: Span,
}

/// A statement of the `main` block.
#[derive(Clone, Debug, PartialEq)]
pub enum MainStmt {
    /// `input A, B: [dims]`
    Input(Vec<Ident>, ShapeAst),
    /// `let x = expr`
    Let(Ident, Expr),
    /// `output NAME = expr`
    Output(Ident, Expr),
    /// `intermediate NAME = expr`: an output written only on request (for debugging).
    Intermediate(Ident, Expr),
    /// `dim NAME = expr`: a dimension computed from others (`*`, `/` exact).
    Dim(Ident, Expr),
}

/// `main { ... }`
#[derive(Clone, Debug, PartialEq)]
pub struct MainDecl {
    /// Statements in order.
    pub stmts: Vec<MainStmt>,
    /// The `main` keyword.
    pub span: Span,
}

/// The default of a config: an integer (usable as a dimension) or a real.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ConfigLit {
    /// An integer.
    Int(usize),
    /// A real number.
    Float(f64),
}

/// `config NAME = VALUE`
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigDecl {
    /// Its name.
    pub name: Ident,
    /// Its default.
    pub value: ConfigLit,
}

/// A top-level item.
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    /// A settable integer.
    Config(ConfigDecl),
    /// A function usable everywhere.
    Fn(FnDecl),
    /// An inner model.
    Inner(Box<InnerDecl>),
    /// The program's entry point.
    Main(MainDecl),
    /// `import "path.ttt"`: the configs, functions and inner models of another file.
    Import(String, Span),
}

/// A parsed file.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct File {
    /// Items in order.
    pub items: Vec<Item>,
}

/// A call argument, positional or `name = value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    /// The name, for a named argument.
    pub name: Option<Ident>,
    /// The value.
    pub value: Expr,
}

/// Binary operators of the surface language.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `@`
    MatMul,
    /// `^`
    Pow,
}

/// `ttt MODEL(bindings) per (dims) update RULE(args)`
#[derive(Clone, Debug, PartialEq)]
pub struct TttExpr {
    /// The inner model.
    pub model: Ident,
    /// Bindings of its states, parameters and token arguments.
    pub args: Vec<Arg>,
    /// Mapped dimensions.
    pub per: Vec<Ident>,
    /// The update rule's name.
    pub rule: Ident,
    /// The update rule's arguments.
    pub rule_args: Vec<Arg>,
}

/// An expression.
#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    /// An integer literal.
    Int(u64),
    /// A real literal.
    Float(f64),
    /// A name.
    Name(String),
    /// `-e`
    Neg(Box<Expr>),
    /// `a op b`
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// `f(args)`
    Call(Ident, Vec<Arg>),
    /// `e.name` (a scan result's field, or `.T` for transpose)
    Field(Box<Expr>, Ident),
    /// A test-time-training scan.
    Ttt(Box<TttExpr>),
    /// A list of dimensions `[B, L, 4]` (the shape argument of `reshape`, the axes of
    /// `permute`).
    List(Vec<DimAst>),
}

/// An expression with its location.
#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    /// What it is.
    pub kind: ExprKind,
    /// Where it is written.
    pub span: Span,
}
