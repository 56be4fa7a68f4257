//! Recursive-descent parser from tokens to the syntax tree.

use super::ast::*;
use super::diagnostic::{Diagnostic, Span};
use super::lexer::{Tok, Token};

/// How deep expressions and blocks may nest in the syntax tree: parentheses, calls, unary
/// operators, blocks, and each operator of a chain such as `a + b + c` (which builds a tree as
/// deep as it is long) count one level. Deeper text is rejected with a located error instead
/// of overflowing the stack of the recursive parser and of lowering.
pub const MAX_NESTING: usize = 256;

/// Parses a token stream (from [`super::lexer::lex`]) into a file.
pub fn parse(tokens: &[Token]) -> Result<File, Diagnostic> {
    let mut p = Parser {
        tokens,
        pos: 0,
        depth: 0,
        in_rule: false,
    };
    let mut file = File::default();
    while !p.at_eof() {
        file.items.push(p.item()?);
    }
    Ok(file)
}

struct Parser<'a> {
    tokens: &'a [Token],
    pos: usize,
    /// Current nesting depth (see [`MAX_NESTING`]).
    depth: usize,
    /// Inside a `rule`, where `state` names the rule's state.
    in_rule: bool,
}

type PResult<T> = Result<T, Diagnostic>;

/// Precedence levels of binary operators, loosest first.
const LEVEL_OR: usize = 0;
const LEVEL_AND: usize = 1;
const LEVEL_CMP: usize = 2;
const LEVEL_ADD: usize = 3;
const LEVEL_MUL: usize = 4;

fn describe(tok: &Tok) -> String {
    match tok {
        Tok::Ident(s) => format!("`{s}`"),
        Tok::Int(n) => format!("`{n}`"),
        Tok::Float(x) => format!("`{x}`"),
        Tok::Str(x) => format!("\"{x}\""),
        Tok::Punct(p) => format!("`{p}`"),
        Tok::Eof => "end of file".to_string(),
    }
}

impl<'a> Parser<'a> {
    fn peek(&self) -> &'a Token {
        &self.tokens[self.pos.min(self.tokens.len() - 1)]
    }

    fn at_eof(&self) -> bool {
        self.peek().tok == Tok::Eof
    }

    fn bump(&mut self) -> &'a Token {
        let t = self.peek();
        if t.tok != Tok::Eof {
            self.pos += 1;
        }
        t
    }

    fn prev_end(&self) -> usize {
        self.pos
            .checked_sub(1)
            .map_or(0, |i| self.tokens[i].span.end)
    }

    fn error<T>(&self, expected: &str) -> PResult<T> {
        let t = self.peek();
        Err(Diagnostic::new(
            format!("expected {expected}, found {}", describe(&t.tok)),
            t.span.clone(),
        )
        .with_label(format!("expected {expected}")))
    }

    /// Enters one more level of nesting at the current token; an error past [`MAX_NESTING`].
    /// Every `enter` is paired with a [`Parser::leave`] on success (an error ends the parse).
    fn enter(&mut self) -> PResult<()> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(Diagnostic::new(
                format!(
                    "this nests deeper than {MAX_NESTING} levels (parentheses, calls, blocks and \
                     chained operators each count one): split it with `let`"
                ),
                self.peek().span.clone(),
            )
            .with_label("too deep"));
        }
        Ok(())
    }

    /// Leaves `levels` levels of nesting entered with [`Parser::enter`].
    fn leave(&mut self, levels: usize) {
        self.depth -= levels;
    }

    fn is_punct(&self, p: &str) -> bool {
        matches!(self.peek().tok, Tok::Punct(q) if q == p)
    }

    /// Whether the token after the current one is the punctuation `p`.
    fn next_is_punct(&self, p: &str) -> bool {
        let next = &self.tokens[(self.pos + 1).min(self.tokens.len() - 1)];
        matches!(next.tok, Tok::Punct(q) if q == p)
    }

    fn is_keyword(&self, k: &str) -> bool {
        matches!(&self.peek().tok, Tok::Ident(s) if s == k)
    }

    fn eat_punct(&mut self, p: &str) -> bool {
        if self.is_punct(p) {
            self.bump();
            true
        } else {
            false
        }
    }

    fn expect_punct(&mut self, p: &str) -> PResult<Span> {
        if self.is_punct(p) {
            Ok(self.bump().span.clone())
        } else {
            self.error(&format!("`{p}`"))
        }
    }

    fn expect_keyword(&mut self, k: &str) -> PResult<Span> {
        if self.is_keyword(k) {
            Ok(self.bump().span.clone())
        } else {
            self.error(&format!("`{k}`"))
        }
    }

    fn ident(&mut self, what: &str) -> PResult<Ident> {
        match &self.peek().tok {
            Tok::Ident(s) if !is_reserved(s) => {
                let t = self.bump();
                Ok(Ident {
                    name: s.clone(),
                    span: t.span.clone(),
                })
            }
            _ => self.error(what),
        }
    }

    fn item(&mut self) -> PResult<Item> {
        match &self.peek().tok {
            Tok::Ident(k) if k == "config" => {
                self.bump();
                let name = self.ident("a config name")?;
                self.expect_punct("=")?;
                let value = match &self.peek().tok {
                    Tok::Float(x) => {
                        let x = *x;
                        self.bump();
                        ConfigLit::Float(x)
                    }
                    Tok::Str(text) => {
                        let text = text.clone();
                        self.bump();
                        let mut choices = Vec::new();
                        if self.is_punct("|") {
                            choices.push(text.clone());
                            while self.eat_punct("|") {
                                match &self.peek().tok {
                                    Tok::Str(other) => {
                                        choices.push(other.clone());
                                        self.bump();
                                    }
                                    _ => return self.error("a string after `|`"),
                                }
                            }
                        }
                        return Ok(Item::Config(ConfigDecl {
                            name,
                            value: ConfigLit::Str(text),
                            choices,
                        }));
                    }
                    Tok::Ident(b) if b == "true" || b == "false" => {
                        let b = b == "true";
                        self.bump();
                        ConfigLit::Bool(b)
                    }
                    Tok::Int(_) => ConfigLit::Int(self.usize_lit("a number")?),
                    _ => return self.error("a number, `true`, `false` or a string"),
                };
                Ok(Item::Config(ConfigDecl {
                    name,
                    value,
                    choices: Vec::new(),
                }))
            }
            Tok::Ident(k) if k == "fn" => Ok(Item::Fn(self.fn_decl()?)),
            Tok::Ident(k) if k == "inner" => Ok(Item::Inner(Box::new(self.inner()?))),
            Tok::Ident(k) if k == "main" => Ok(Item::Main(self.main()?)),
            Tok::Ident(k) if k == "rule" => Ok(Item::Rule(Box::new(self.rule()?))),
            Tok::Ident(k) if k == "import" => {
                self.bump();
                match &self.peek().tok {
                    Tok::Str(path) => {
                        let span = self.bump().span.clone();
                        Ok(Item::Import(path.clone(), span))
                    }
                    _ => self.error("a file name in double quotes"),
                }
            }
            _ => self.error("`import`, `config`, `fn`, `inner`, `rule` or `main`"),
        }
    }

    fn usize_lit(&mut self, what: &str) -> PResult<usize> {
        match self.peek().tok {
            Tok::Int(n) => {
                let span = self.bump().span.clone();
                usize::try_from(n).map_err(|_| Diagnostic::new(format!("{n} is too large"), span))
            }
            _ => self.error(what),
        }
    }

    fn shape(&mut self) -> PResult<ShapeAst> {
        let start = self.expect_punct("[")?.start;
        let mut dims = Vec::new();
        while !self.is_punct("]") {
            match &self.peek().tok {
                Tok::Int(_) => {
                    let span = self.peek().span.clone();
                    dims.push(DimAst::Int(self.usize_lit("a dimension")?, span));
                }
                Tok::Ident(_) => dims.push(DimAst::Sym(self.ident("a dimension name")?)),
                _ => return self.error("a dimension (a name or an integer)"),
            }
            if !self.eat_punct(",") {
                break;
            }
        }
        let end = self.expect_punct("]")?.end;
        Ok(ShapeAst {
            dims,
            span: start..end,
        })
    }

    fn params(&mut self) -> PResult<Vec<ParamAst>> {
        self.expect_punct("(")?;
        let mut params = Vec::new();
        while !self.is_punct(")") {
            let name = self.ident("a parameter name")?;
            let shape = if self.eat_punct(":") {
                Some(self.shape()?)
            } else {
                None
            };
            params.push(ParamAst { name, shape });
            if !self.eat_punct(",") {
                break;
            }
        }
        self.expect_punct(")")?;
        Ok(params)
    }

    /// `name(params) [-> shape] (= expr | { body })`, with the name already known.
    fn fn_rest(&mut self, name: Ident) -> PResult<FnDecl> {
        let params = self.params()?;
        let ret = if self.eat_punct("->") {
            Some(self.shape()?)
        } else {
            None
        };
        let body = if self.eat_punct("=") {
            Body {
                lets: Vec::new(),
                result: self.expr()?,
            }
        } else if self.is_punct("{") {
            self.body()?
        } else {
            return self.error("`=` or `{` starting the body");
        };
        Ok(FnDecl {
            name,
            params,
            ret,
            body,
        })
    }

    fn fn_decl(&mut self) -> PResult<FnDecl> {
        self.expect_keyword("fn")?;
        let name = self.ident("a function name")?;
        self.fn_rest(name)
    }

    fn body(&mut self) -> PResult<Body> {
        self.expect_punct("{")?;
        let lets = self.body_stmts()?;
        let result = self.expr()?;
        self.eat_punct(";");
        self.expect_punct("}")?;
        Ok(Body { lets, result })
    }

    /// `let` and `for` statements of a function body, up to its result expression (or the `}`
    /// closing a loop).
    fn body_stmts(&mut self) -> PResult<Vec<BodyStmt>> {
        let mut stmts = Vec::new();
        loop {
            if self.is_keyword("let") {
                self.bump();
                let name = self.ident("a name")?;
                self.expect_punct("=")?;
                stmts.push(BodyStmt::Let(name, self.expr()?));
            } else if self.is_keyword("for") {
                self.bump();
                let var = self.ident("a loop variable")?;
                self.expect_keyword("in")?;
                let start = self.binary_level(LEVEL_ADD)?;
                self.expect_punct("..")?;
                let end = self.binary_level(LEVEL_ADD)?;
                self.expect_punct("{")?;
                self.enter()?;
                let body = self.body_stmts()?;
                self.expect_punct("}")?;
                self.leave(1);
                stmts.push(BodyStmt::For {
                    var,
                    start,
                    end,
                    body,
                });
            } else {
                return Ok(stmts);
            }
            self.eat_punct(";");
        }
    }

    /// A name that may contain dots, such as `q_proj.weight`.
    fn dotted(&mut self, what: &str) -> PResult<Ident> {
        // Tensor names are data, so keywords are allowed here (`output output = ...`).
        let mut id = match &self.peek().tok {
            Tok::Ident(s) => {
                let name = s.clone();
                Ident {
                    name,
                    span: self.bump().span.clone(),
                }
            }
            _ => return self.error(what),
        };
        loop {
            // `{NAME}` or a name written right against the previous part: `layer_{i}`.
            let adjacent = self.peek().span.start == id.span.end;
            if adjacent
                && (self.is_punct("{") || matches!(self.peek().tok, Tok::Ident(_) | Tok::Int(_)))
            {
                if let Some((part, end)) = self.name_part()? {
                    id.name.push_str(&part);
                    id.span = id.span.start..end;
                    continue;
                }
            }
            if !self.is_punct(".") {
                break;
            }
            self.bump();
            let (part, end) = match self.name_part()? {
                Some(p) => p,
                None => return self.error("a name, an integer or `{NAME}` after `.`"),
            };
            id.name = format!("{}.{part}", id.name);
            id.span = id.span.start..end;
        }
        Ok(id)
    }

    /// One part of a dotted tensor name after a `.`: a name (keywords allowed), an integer, or
    /// `{NAME}` (interpolated when the program is compiled; kept with its braces). Returns the
    /// text and where it ends, or `None` when the next token is none of those.
    fn name_part(&mut self) -> PResult<Option<(String, usize)>> {
        let part = match &self.peek().tok {
            Tok::Ident(s) => s.clone(),
            Tok::Int(n) => n.to_string(),
            Tok::Punct("{") => {
                self.bump();
                let var = self.ident("a name to interpolate")?;
                let end = self.expect_punct("}")?.end;
                return Ok(Some((format!("{{{}}}", var.name), end)));
            }
            _ => return Ok(None),
        };
        let end = self.bump().span.end;
        Ok(Some((part, end)))
    }

    fn names(&mut self, what: &str) -> PResult<Vec<Ident>> {
        let mut names = vec![self.ident(what)?];
        while self.eat_punct(",") {
            names.push(self.ident(what)?);
        }
        Ok(names)
    }

    fn tensor_decls(&mut self, what: &str) -> PResult<Vec<TensorDecl>> {
        let names = self.names(what)?;
        self.expect_punct(":")?;
        let shape = self.shape()?;
        Ok(names
            .into_iter()
            .map(|name| TensorDecl {
                name,
                shape: shape.clone(),
            })
            .collect())
    }

    fn inner(&mut self) -> PResult<InnerDecl> {
        let start = self.expect_keyword("inner")?.start;
        let name = self.ident("the inner model's name")?;
        self.expect_punct("{")?;
        let mut decl = InnerDecl {
            name,
            states: Vec::new(),
            params: Vec::new(),
            fns: Vec::new(),
            loss: None,
            out: None,
            span: start..start,
        };
        while !self.is_punct("}") {
            let t = self.peek();
            match &t.tok {
                Tok::Ident(k) if k == "state" => {
                    self.bump();
                    decl.states.extend(self.tensor_decls("a state name")?);
                }
                Tok::Ident(k) if k == "param" => {
                    self.bump();
                    decl.params.extend(self.tensor_decls("a parameter name")?);
                }
                Tok::Ident(k) if k == "fn" => decl.fns.push(self.fn_decl()?),
                Tok::Ident(k) if k == "loss" || k == "out" => {
                    let name = Ident {
                        name: k.clone(),
                        span: self.bump().span.clone(),
                    };
                    let slot = if k == "loss" { &decl.loss } else { &decl.out };
                    if slot.is_some() {
                        return Err(Diagnostic::new(
                            format!("`{}` is defined twice in this inner model", name.name),
                            name.span,
                        ));
                    }
                    let f = self.fn_rest(name)?;
                    if k == "loss" {
                        decl.loss = Some(f);
                    } else {
                        decl.out = Some(f);
                    }
                }
                _ => return self.error("`state`, `param`, `fn`, `loss`, `out` or `}`"),
            }
            self.eat_punct(";");
        }
        let end = self.expect_punct("}")?.end;
        decl.span = start..end;
        Ok(decl)
    }

    /// `rule NAME(a, b, ...) { carry S = 0; S = ...; state = ...; read ...; end S = ... }`.
    fn rule(&mut self) -> PResult<RuleDecl> {
        let start = self.expect_keyword("rule")?.start;
        let name = self.ident("the rule's name")?;
        self.expect_punct("(")?;
        let mut params = Vec::new();
        while !self.is_punct(")") {
            let name = self.ident("a coefficient name")?;
            let local = if self.is_keyword("as") {
                self.bump();
                Some(self.ident("the coefficient's name in the rule")?)
            } else {
                None
            };
            params.push(RuleParam { name, local });
            if !self.eat_punct(",") {
                break;
            }
        }
        self.expect_punct(")")?;
        self.expect_punct("{")?;
        self.in_rule = true;
        let stmts = self.rule_stmts();
        self.in_rule = false;
        let stmts = stmts?;
        let end = self.expect_punct("}")?.end;
        Ok(RuleDecl {
            name,
            params,
            stmts,
            span: start..end,
        })
    }

    /// The statements of a `rule`, up to its `}`.
    fn rule_stmts(&mut self) -> PResult<Vec<RuleStmt>> {
        let mut stmts = Vec::new();
        while !self.is_punct("}") {
            let t = self.peek();
            let stmt = match &t.tok {
                Tok::Ident(k) if k == "carry" => {
                    self.bump();
                    let name = self.ident("a carry name")?;
                    self.expect_punct("=")?;
                    RuleStmt::Carry(name, self.expr()?)
                }
                Tok::Ident(k) if k == "read" => {
                    let span = self.bump().span.clone();
                    RuleStmt::Read(self.expr()?, span)
                }
                // `end NAME = ...` (but `end = ...` assigns a carry named `end`).
                Tok::Ident(k) if k == "end" && !self.next_is_punct("=") => {
                    let span = self.bump().span.clone();
                    let target = match &self.peek().tok {
                        Tok::Ident(k) if k == "state" => Ident {
                            name: k.clone(),
                            span: self.bump().span.clone(),
                        },
                        _ => self.ident("`state` or a carry after `end`")?,
                    };
                    self.expect_punct("=")?;
                    RuleStmt::End(target, self.expr()?, span)
                }
                Tok::Ident(k) if k == "state" => {
                    let target = Ident {
                        name: k.clone(),
                        span: self.bump().span.clone(),
                    };
                    self.expect_punct("=")?;
                    RuleStmt::Assign(target, self.expr()?)
                }
                Tok::Ident(_) => {
                    let target = self.ident("`state` or a carry")?;
                    self.expect_punct("=")?;
                    RuleStmt::Assign(target, self.expr()?)
                }
                _ => {
                    return self.error(
                        "`carry`, `state = ...`, `NAME = ...`, `read`, `end NAME = ...` or `}`",
                    )
                }
            };
            stmts.push(stmt);
            self.eat_punct(";");
        }
        Ok(stmts)
    }

    fn main(&mut self) -> PResult<MainDecl> {
        let span = self.expect_keyword("main")?;
        let stmts = self.stmt_block()?;
        Ok(MainDecl { stmts, span })
    }

    /// `{ statement* }` of `main`, a `for` or an `if`.
    fn stmt_block(&mut self) -> PResult<Vec<MainStmt>> {
        self.expect_punct("{")?;
        self.enter()?;
        let mut stmts = Vec::new();
        while !self.is_punct("}") {
            stmts.push(self.main_stmt()?);
            self.eat_punct(";");
        }
        self.expect_punct("}")?;
        self.leave(1);
        Ok(stmts)
    }

    fn main_stmt(&mut self) -> PResult<MainStmt> {
        match &self.peek().tok {
            Tok::Ident(k) if k == "input" => {
                self.bump();
                let mut names = vec![self.dotted("an input name")?];
                while self.eat_punct(",") {
                    names.push(self.dotted("an input name")?);
                }
                self.expect_punct(":")?;
                let int = if self.is_keyword("int") {
                    Some(self.bump().span.clone())
                } else {
                    None
                };
                let shape = self.shape()?;
                let int = match int {
                    None => None,
                    Some(span) => {
                        let range = if self.is_keyword("in") && !self.peek().line_start {
                            self.bump();
                            let start = self.int_bound()?;
                            self.expect_punct("..")?;
                            let end = match &self.peek().tok {
                                Tok::Int(_) => {
                                    let span = self.peek().span.clone();
                                    DimAst::Int(self.usize_lit("an integer")?, span)
                                }
                                _ => DimAst::Sym(self.ident("a dimension name or an integer")?),
                            };
                            Some((start, end))
                        } else {
                            None
                        };
                        Some(IntInputAst { span, range })
                    }
                };
                Ok(MainStmt::Input(names, shape, int))
            }
            Tok::Ident(k) if k == "let" => {
                self.bump();
                let name = self.ident("a name")?;
                self.expect_punct("=")?;
                Ok(MainStmt::Let(name, self.expr()?))
            }
            Tok::Ident(k) if k == "output" || k == "intermediate" => {
                let debug = k == "intermediate";
                self.bump();
                let name = self.dotted("an output name")?;
                self.expect_punct("=")?;
                let value = self.expr()?;
                Ok(if debug {
                    MainStmt::Intermediate(name, value)
                } else {
                    MainStmt::Output(name, value)
                })
            }
            Tok::Ident(k) if k == "dim" => {
                self.bump();
                let name = self.ident("a dimension name")?;
                self.expect_punct("=")?;
                Ok(MainStmt::Dim(name, self.expr()?))
            }
            Tok::Ident(k) if k == "for" => {
                self.bump();
                let var = self.ident("a loop variable")?;
                self.expect_keyword("in")?;
                let start = self.binary_level(LEVEL_ADD)?;
                self.expect_punct("..")?;
                let end = self.binary_level(LEVEL_ADD)?;
                let body = self.stmt_block()?;
                Ok(MainStmt::For {
                    var,
                    start,
                    end,
                    body,
                })
            }
            Tok::Ident(k) if k == "if" => {
                let mut branches = Vec::new();
                let mut otherwise = Vec::new();
                loop {
                    self.expect_keyword("if")?;
                    let cond = self.expr()?;
                    branches.push((cond, self.stmt_block()?));
                    if !self.is_keyword("else") {
                        break;
                    }
                    self.bump();
                    if !self.is_keyword("if") {
                        otherwise = self.stmt_block()?;
                        break;
                    }
                }
                Ok(MainStmt::If {
                    branches,
                    otherwise,
                })
            }
            _ => self.error("`input`, `dim`, `let`, `output`, `intermediate`, `for`, `if` or `}`"),
        }
    }

    /// A possibly negative integer literal.
    fn int_bound(&mut self) -> PResult<i64> {
        let negative = self.eat_punct("-");
        let span = self.peek().span.clone();
        let n = self.usize_lit("an integer")?;
        let n = i64::try_from(n).map_err(|_| Diagnostic::new(format!("{n} is too large"), span))?;
        Ok(if negative { -n } else { n })
    }

    // ---- expressions -------------------------------------------------------------------

    fn expr(&mut self) -> PResult<Expr> {
        self.enter()?;
        let e = self.binary_level(LEVEL_OR)?;
        self.leave(1);
        Ok(e)
    }

    /// Binary operators by precedence level, loosest first: `||`, `&&`, comparisons (not
    /// chained), `+ -`, then `* / @` (whose operands are unary expressions).
    fn binary_level(&mut self, level: usize) -> PResult<Expr> {
        let next = |p: &mut Self| {
            if level == LEVEL_MUL {
                p.unary()
            } else {
                p.binary_level(level + 1)
            }
        };
        let mut lhs = next(self)?;
        // Each operator of a chain deepens the (left-leaning) tree by one.
        let mut chained = 0;
        loop {
            let t = self.peek();
            let op = match (&t.tok, level) {
                (Tok::Punct("||"), LEVEL_OR) => BinOp::Or,
                (Tok::Punct("&&"), LEVEL_AND) => BinOp::And,
                (Tok::Punct("=="), LEVEL_CMP) => BinOp::Eq,
                (Tok::Punct("!="), LEVEL_CMP) => BinOp::Ne,
                (Tok::Punct("<"), LEVEL_CMP) => BinOp::Lt,
                (Tok::Punct("<="), LEVEL_CMP) => BinOp::Le,
                (Tok::Punct(">"), LEVEL_CMP) => BinOp::Gt,
                (Tok::Punct(">="), LEVEL_CMP) => BinOp::Ge,
                (Tok::Punct("+"), LEVEL_ADD) => BinOp::Add,
                (Tok::Punct("-"), LEVEL_ADD) => BinOp::Sub,
                (Tok::Punct("*"), LEVEL_MUL) => BinOp::Mul,
                (Tok::Punct("/"), LEVEL_MUL) => BinOp::Div,
                (Tok::Punct("@"), LEVEL_MUL) => BinOp::MatMul,
                _ => break,
            };
            if t.line_start {
                break;
            }
            if level == LEVEL_CMP
                && matches!(&lhs.kind, ExprKind::Binary(o, ..) if o.is_compile_time())
            {
                return Err(Diagnostic::new(
                    "comparisons do not chain: write `a < b && b < c`",
                    t.span.clone(),
                ));
            }
            self.enter()?;
            chained += 1;
            self.bump();
            let rhs = next(self)?;
            let span = lhs.span.start..rhs.span.end;
            lhs = Expr {
                kind: ExprKind::Binary(op, Box::new(lhs), Box::new(rhs)),
                span,
            };
        }
        self.leave(chained);
        Ok(lhs)
    }

    /// A unary expression; each prefix operator and `^` nests one level.
    fn unary(&mut self) -> PResult<Expr> {
        if self.is_punct("!") {
            let start = self.bump().span.start;
            self.enter()?;
            let inner = self.unary()?;
            self.leave(1);
            let span = start..inner.span.end;
            return Ok(Expr {
                kind: ExprKind::Not(Box::new(inner)),
                span,
            });
        }
        if self.is_punct("-") {
            let start = self.bump().span.start;
            self.enter()?;
            let inner = self.unary()?;
            self.leave(1);
            let span = start..inner.span.end;
            return Ok(Expr {
                kind: ExprKind::Neg(Box::new(inner)),
                span,
            });
        }
        let base = self.postfix()?;
        if self.is_punct("^") && !self.peek().line_start {
            self.bump();
            self.enter()?;
            let exp = self.unary()?;
            self.leave(1);
            let span = base.span.start..exp.span.end;
            return Ok(Expr {
                kind: ExprKind::Binary(BinOp::Pow, Box::new(base), Box::new(exp)),
                span,
            });
        }
        Ok(base)
    }

    fn postfix(&mut self) -> PResult<Expr> {
        let mut e = self.primary()?;
        // Each field of a chain (`x.T.T`) deepens the tree by one.
        let mut chained = 0;
        while self.is_punct(".") && !self.peek().line_start {
            self.enter()?;
            chained += 1;
            self.bump();
            let start = self.peek().span.start;
            let field = match self.name_part()? {
                Some((name, end)) => Ident {
                    name,
                    span: start..end,
                },
                None => return self.error("a field name"),
            };
            let span = e.span.start..field.span.end;
            e = Expr {
                kind: ExprKind::Field(Box::new(e), field),
                span,
            };
        }
        self.leave(chained);
        Ok(e)
    }

    fn args(&mut self) -> PResult<Vec<Arg>> {
        self.expect_punct("(")?;
        let mut args = Vec::new();
        while !self.is_punct(")") {
            let named = matches!(self.peek().tok, Tok::Ident(_))
                && matches!(
                    self.tokens.get(self.pos + 1).map(|t| &t.tok),
                    Some(Tok::Punct("="))
                );
            let name = if named {
                let n = self.ident("an argument name")?;
                self.bump();
                Some(n)
            } else {
                None
            };
            args.push(Arg {
                name,
                value: self.expr()?,
            });
            if !self.eat_punct(",") {
                break;
            }
        }
        self.expect_punct(")")?;
        Ok(args)
    }

    fn primary(&mut self) -> PResult<Expr> {
        let t = self.peek();
        let span = t.span.clone();
        match &t.tok {
            Tok::Int(n) => {
                self.bump();
                Ok(Expr {
                    kind: ExprKind::Int(*n),
                    span,
                })
            }
            Tok::Float(x) => {
                self.bump();
                Ok(Expr {
                    kind: ExprKind::Float(*x),
                    span,
                })
            }
            Tok::Punct("(") => {
                self.bump();
                let mut e = self.expr()?;
                let end = self.expect_punct(")")?.end;
                e.span = span.start..end;
                Ok(e)
            }
            Tok::Ident(k) if k == "ttt" => self.ttt(),
            Tok::Ident(k) if k == "state" && self.in_rule => {
                self.bump();
                Ok(Expr {
                    kind: ExprKind::Name(k.clone()),
                    span,
                })
            }
            Tok::Ident(k) if k == "true" || k == "false" => {
                let b = k == "true";
                self.bump();
                Ok(Expr {
                    kind: ExprKind::Bool(b),
                    span,
                })
            }
            Tok::Str(text) => {
                let text = text.clone();
                self.bump();
                Ok(Expr {
                    kind: ExprKind::Str(text),
                    span,
                })
            }
            Tok::Ident(k) if k == "if" => {
                // `else if` chains nest: one level per `if`.
                self.enter()?;
                self.bump();
                let cond = self.expr()?;
                let then = self.body()?;
                self.expect_keyword("else")?;
                let otherwise = if self.is_keyword("if") {
                    // `else if`: a nested `if` expression as the whole `else` body.
                    let nested = self.primary()?;
                    Body {
                        lets: Vec::new(),
                        result: nested,
                    }
                } else {
                    self.body()?
                };
                self.leave(1);
                Ok(Expr {
                    kind: ExprKind::If(Box::new(cond), Box::new(then), Box::new(otherwise)),
                    span: span.start..self.prev_end(),
                })
            }
            Tok::Punct("[") => {
                let shape = self.shape()?;
                Ok(Expr {
                    kind: ExprKind::List(shape.dims),
                    span: shape.span,
                })
            }
            Tok::Ident(_) => {
                let name = self.ident("a name")?;
                if self.is_punct("(") && !self.peek().line_start {
                    let args = self.args()?;
                    let span = name.span.start..self.prev_end();
                    Ok(Expr {
                        kind: ExprKind::Call(name, args),
                        span,
                    })
                } else {
                    Ok(Expr {
                        kind: ExprKind::Name(name.name),
                        span: name.span,
                    })
                }
            }
            _ => self.error("an expression"),
        }
    }

    fn ttt(&mut self) -> PResult<Expr> {
        let start = self.expect_keyword("ttt")?.start;
        let model = self.ident("an inner model name")?;
        let args = self.args()?;
        self.expect_keyword("per")?;
        self.expect_punct("(")?;
        let mut per = Vec::new();
        while !self.is_punct(")") {
            per.push(self.ident("a dimension name")?);
            if !self.eat_punct(",") {
                break;
            }
        }
        self.expect_punct(")")?;
        self.expect_keyword("update")?;
        let rule = self.ident("an update rule such as `minibatch_gd`")?;
        let rule_args = self.args()?;
        Ok(Expr {
            kind: ExprKind::Ttt(Box::new(TttExpr {
                model,
                args,
                per,
                rule,
                rule_args,
            })),
            span: start..self.prev_end(),
        })
    }
}

/// Keywords that cannot name things.
pub fn is_reserved(s: &str) -> bool {
    matches!(
        s,
        "config"
            | "fn"
            | "inner"
            | "main"
            | "state"
            | "param"
            | "let"
            | "input"
            | "output"
            | "intermediate"
            | "dim"
            | "import"
            | "ttt"
            | "for"
            | "in"
            | "if"
            | "else"
            | "true"
            | "false"
    )
}
