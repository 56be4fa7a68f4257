//! Recursive-descent parser from tokens to the syntax tree.

use super::ast::*;
use super::diagnostic::{Diagnostic, Span};
use super::lexer::{Tok, Token};

/// Parses a token stream (from [`super::lexer::lex`]) into a file.
pub fn parse(tokens: &[Token]) -> Result<File, Diagnostic> {
    let mut p = Parser { tokens, pos: 0 };
    let mut file = File::default();
    while !p.at_eof() {
        file.items.push(p.item()?);
    }
    Ok(file)
}

struct Parser<'a> {
    tokens: &'a [Token],
    pos: usize,
}

type PResult<T> = Result<T, Diagnostic>;

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

    fn is_punct(&self, p: &str) -> bool {
        matches!(self.peek().tok, Tok::Punct(q) if q == p)
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
                let value = match self.peek().tok {
                    Tok::Float(x) => {
                        self.bump();
                        ConfigLit::Float(x)
                    }
                    _ => ConfigLit::Int(self.usize_lit("a number")?),
                };
                Ok(Item::Config(ConfigDecl { name, value }))
            }
            Tok::Ident(k) if k == "fn" => Ok(Item::Fn(self.fn_decl()?)),
            Tok::Ident(k) if k == "inner" => Ok(Item::Inner(Box::new(self.inner()?))),
            Tok::Ident(k) if k == "main" => Ok(Item::Main(self.main()?)),
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
            _ => self.error("`import`, `config`, `fn`, `inner` or `main`"),
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
        let mut lets = Vec::new();
        while self.is_keyword("let") {
            self.bump();
            let name = self.ident("a name")?;
            self.expect_punct("=")?;
            lets.push((name, self.expr()?));
            self.eat_punct(";");
        }
        let result = self.expr()?;
        self.eat_punct(";");
        self.expect_punct("}")?;
        Ok(Body { lets, result })
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
        while self.is_punct(".") {
            self.bump();
            let part = match &self.peek().tok {
                Tok::Ident(s) => s.clone(),
                Tok::Int(n) => n.to_string(),
                _ => return self.error("a name after `.`"),
            };
            let end = self.bump().span.end;
            id.name = format!("{}.{part}", id.name);
            id.span = id.span.start..end;
        }
        Ok(id)
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

    fn main(&mut self) -> PResult<MainDecl> {
        let span = self.expect_keyword("main")?;
        self.expect_punct("{")?;
        let mut stmts = Vec::new();
        while !self.is_punct("}") {
            match &self.peek().tok {
                Tok::Ident(k) if k == "input" => {
                    self.bump();
                    let mut names = vec![self.dotted("an input name")?];
                    while self.eat_punct(",") {
                        names.push(self.dotted("an input name")?);
                    }
                    self.expect_punct(":")?;
                    stmts.push(MainStmt::Input(names, self.shape()?));
                }
                Tok::Ident(k) if k == "let" => {
                    self.bump();
                    let name = self.ident("a name")?;
                    self.expect_punct("=")?;
                    stmts.push(MainStmt::Let(name, self.expr()?));
                }
                Tok::Ident(k) if k == "output" || k == "intermediate" => {
                    let debug = k == "intermediate";
                    self.bump();
                    let name = self.dotted("an output name")?;
                    self.expect_punct("=")?;
                    let value = self.expr()?;
                    stmts.push(if debug {
                        MainStmt::Intermediate(name, value)
                    } else {
                        MainStmt::Output(name, value)
                    });
                }
                Tok::Ident(k) if k == "dim" => {
                    self.bump();
                    let name = self.ident("a dimension name")?;
                    self.expect_punct("=")?;
                    stmts.push(MainStmt::Dim(name, self.expr()?));
                }
                _ => return self.error("`input`, `dim`, `let`, `output`, `intermediate` or `}`"),
            }
            self.eat_punct(";");
        }
        self.expect_punct("}")?;
        Ok(MainDecl { stmts, span })
    }

    // ---- expressions -------------------------------------------------------------------

    fn expr(&mut self) -> PResult<Expr> {
        self.binary_level(0)
    }

    /// Levels: 0 = `+ -`, 1 = `* / @`.
    fn binary_level(&mut self, level: usize) -> PResult<Expr> {
        let mut lhs = if level == 0 {
            self.binary_level(1)?
        } else {
            self.unary()?
        };
        loop {
            let t = self.peek();
            let op = match (&t.tok, level) {
                (Tok::Punct("+"), 0) => BinOp::Add,
                (Tok::Punct("-"), 0) => BinOp::Sub,
                (Tok::Punct("*"), 1) => BinOp::Mul,
                (Tok::Punct("/"), 1) => BinOp::Div,
                (Tok::Punct("@"), 1) => BinOp::MatMul,
                _ => break,
            };
            if t.line_start {
                break;
            }
            self.bump();
            let rhs = if level == 0 {
                self.binary_level(1)?
            } else {
                self.unary()?
            };
            let span = lhs.span.start..rhs.span.end;
            lhs = Expr {
                kind: ExprKind::Binary(op, Box::new(lhs), Box::new(rhs)),
                span,
            };
        }
        Ok(lhs)
    }

    fn unary(&mut self) -> PResult<Expr> {
        if self.is_punct("-") {
            let start = self.bump().span.start;
            let inner = self.unary()?;
            let span = start..inner.span.end;
            return Ok(Expr {
                kind: ExprKind::Neg(Box::new(inner)),
                span,
            });
        }
        let base = self.postfix()?;
        if self.is_punct("^") && !self.peek().line_start {
            self.bump();
            let exp = self.unary()?;
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
        while self.is_punct(".") && !self.peek().line_start {
            self.bump();
            let field = self.ident("a field name")?;
            let span = e.span.start..field.span.end;
            e = Expr {
                kind: ExprKind::Field(Box::new(e), field),
                span,
            };
        }
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
    )
}
