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

/// A statement of a function body.
#[derive(Clone, Debug, PartialEq)]
pub enum BodyStmt {
    /// `let x = expr`
    Let(Ident, Expr),
    /// `for VAR in START..END { let ... }`: unrolled when compiling; the body shares the
    /// function's scope, so `let y = y + ...` accumulates.
    For {
        /// The loop variable.
        var: Ident,
        /// The first value (a compile-time integer).
        start: Expr,
        /// One past the last value.
        end: Expr,
        /// The statements repeated.
        body: Vec<BodyStmt>,
    },
}

/// Statements (`let`, `for`) followed by a result expression.
#[derive(Clone, Debug, PartialEq)]
pub struct Body {
    /// Local bindings and loops, in order.
    pub lets: Vec<BodyStmt>,
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

/// `int` in an input declaration: the tensor holds integers (safetensors I64 or I32), read
/// exactly into the run's floating-point type; optionally `in START..END` bounds every value.
#[derive(Clone, Debug, PartialEq)]
pub struct IntInputAst {
    /// The `int` keyword.
    pub span: Span,
    /// `in START..END`: the inclusive start (an integer) and the exclusive end (a dimension).
    pub range: Option<(i64, DimAst)>,
}

/// A statement of the `main` block.
#[derive(Clone, Debug, PartialEq)]
pub enum MainStmt {
    /// `input A, B: [dims]` or `input ids: int[dims] in 0..V`. Names may interpolate
    /// compile-time values: `model.layers.{i}.mlp.up_proj.weight`.
    Input(Vec<Ident>, ShapeAst, Option<IntInputAst>),
    /// `let x = expr`
    Let(Ident, Expr),
    /// `output NAME = expr`
    Output(Ident, Expr),
    /// `intermediate NAME = expr`: an output written only on request (for debugging).
    Intermediate(Ident, Expr),
    /// `dim NAME = expr`: a dimension computed from others (`*`, `/` exact).
    Dim(Ident, Expr),
    /// `for VAR in START..END { statements }`: unrolled when the program is compiled, with
    /// `VAR` bound to each integer in turn. The body shares the enclosing scope.
    For {
        /// The loop variable.
        var: Ident,
        /// The first value (a compile-time integer).
        start: Expr,
        /// One past the last value (a compile-time integer).
        end: Expr,
        /// The statements repeated.
        body: Vec<MainStmt>,
    },
    /// `if COND { ... } else if COND { ... } else { ... }` on compile-time values: only the
    /// chosen branch is compiled. Branches share the enclosing scope.
    If {
        /// Conditions with their statements, in order.
        branches: Vec<(Expr, Vec<MainStmt>)>,
        /// The `else` statements.
        otherwise: Vec<MainStmt>,
    },
}

/// `main { ... }`
#[derive(Clone, Debug, PartialEq)]
pub struct MainDecl {
    /// Statements in order.
    pub stmts: Vec<MainStmt>,
    /// The `main` keyword.
    pub span: Span,
}

/// The default of a config: an integer (usable as a dimension), a real, a boolean or a string.
#[derive(Clone, Debug, PartialEq)]
pub enum ConfigLit {
    /// An integer.
    Int(usize),
    /// A real number.
    Float(f64),
    /// `true` or `false`.
    Bool(bool),
    /// A double-quoted string.
    Str(String),
}

/// `config NAME = VALUE`, or for a string config `config NAME = "a" | "b" | ...` (the first
/// is the default; only the listed strings may be set).
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigDecl {
    /// Its name.
    pub name: Ident,
    /// Its default.
    pub value: ConfigLit,
    /// For a string config: every allowed value (the default first); empty allows any.
    pub choices: Vec<String>,
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
    /// An update rule written as code.
    Rule(Box<RuleDecl>),
    /// `import "path.ttt"`: the configs, functions and inner models of another file.
    Import(String, Span),
}

/// One statement of a `rule`.
#[derive(Clone, Debug, PartialEq)]
pub enum RuleStmt {
    /// `carry NAME = 0`: a carry of the state's shape, starting at zero.
    Carry(Ident, Expr),
    /// `NAME = expr`: the new value of `state` or of a carry.
    Assign(Ident, Expr),
    /// `read expr`: what a token's output reads.
    Read(Expr, Span),
    /// `end NAME = expr`: what the mini-batch hands on, run once after its last token (the
    /// `Span` is the `end` keyword's).
    End(Ident, Expr, Span),
}

/// A coefficient of a `rule`: `NAME`, or `NAME as LOCAL` (bound by `NAME` in `update`, called
/// `LOCAL` in the rule's body, so that a carry may take the argument's name).
#[derive(Clone, Debug, PartialEq)]
pub struct RuleParam {
    /// The argument's name in `update NAME(...)`.
    pub name: Ident,
    /// The name in the body, if not `name`.
    pub local: Option<Ident>,
}

impl RuleParam {
    /// The name the rule's body uses.
    pub fn body_name(&self) -> &Ident {
        self.local.as_ref().unwrap_or(&self.name)
    }
}

/// `rule NAME(coefficients) { statements }`: an update rule written as code.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleDecl {
    /// The rule's name (used in `update NAME(...)`).
    pub name: Ident,
    /// Its per-token coefficients, the arguments of `update NAME(...)` besides `size`.
    pub params: Vec<RuleParam>,
    /// The statements, in order.
    pub stmts: Vec<RuleStmt>,
    /// The whole declaration.
    pub span: Span,
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
    /// `==` (compile-time values only, as are the comparisons and logic below)
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `&&`
    And,
    /// `||`
    Or,
}

impl BinOp {
    /// Whether the operator compares or combines compile-time values (never tensors).
    pub fn is_compile_time(self) -> bool {
        matches!(
            self,
            BinOp::Eq
                | BinOp::Ne
                | BinOp::Lt
                | BinOp::Le
                | BinOp::Gt
                | BinOp::Ge
                | BinOp::And
                | BinOp::Or
        )
    }

    /// The operator as written.
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::MatMul => "@",
            BinOp::Pow => "^",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::And => "&&",
            BinOp::Or => "||",
        }
    }
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
    /// A string literal (compile-time only: compared with string configs).
    Str(String),
    /// `true` or `false` (compile-time only).
    Bool(bool),
    /// `!e` (compile-time only).
    Not(Box<Expr>),
    /// `if COND { body } else { body }`: the branch chosen by a compile-time condition.
    If(Box<Expr>, Box<Body>, Box<Body>),
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
