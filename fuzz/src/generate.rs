//! A grammar of well-typed `.ttt` programs, driven by the fuzzer's bytes through
//! [`arbitrary::Unstructured`]: every choice (an operator, a width, whether a state is shared
//! across heads, a chunk size) is read from the bytes, so that libFuzzer's mutations move
//! through the space of programs rather than of characters.
//!
//! An inner model is a function `g(x: [1, d]) -> [1, d]` built as an expression tree over
//! rows `[1, w]` (the width is tracked, so every expression type-checks): linear layers on
//! fresh states (`y @ W`, `y @ W.T`, with a bias or not), activations, elementwise products
//! and sums with states or parameters, scalings, LayerNorm and RMSNorm on parameters, sums and
//! products of two sub-expressions, centering by a mean, squares, and `let` bodies. Its loss
//! is one of a few reconstruction-style losses of `g(k)` against `v`; its output one of a few
//! uses of `g(q)`. The `main` block binds every state and parameter to an input, per head or
//! shared, may transform the queries before the scan and the outputs after it, may chain a
//! second scan of the same model on the first one's output, and outputs the final states of
//! some of them.

use crate::checks::DiffCase;
use arbitrary::{Result, Unstructured};
use tttc::Backend;

/// Elementwise functions of one row that keep values bounded enough to differentiate twice.
const ACTIVATIONS: [&str; 8] = [
    "tanh",
    "sigmoid",
    "silu",
    "gelu_tanh",
    "relu",
    "sin",
    "cos",
    "rsqrt_soft",
];

/// The deepest expression tree of an inner model.
const MAX_DEPTH: u32 = 4;
/// The most states an inner model declares.
const MAX_STATES: usize = 6;
/// The longest sequence.
const MAX_LEN: usize = 12;

/// A declared state or parameter: its name and shape (per head).
struct Decl {
    name: String,
    shape: Vec<usize>,
}

/// The inner model under construction.
struct Inner<'a, 'b> {
    u: &'a mut Unstructured<'b>,
    states: Vec<Decl>,
    params: Vec<Decl>,
    /// The `let` statements of `g`'s body, in order.
    lets: Vec<String>,
}

impl Inner<'_, '_> {
    fn width(&mut self) -> Result<usize> {
        self.u.int_in_range(1..=4)
    }

    fn state(&mut self, shape: Vec<usize>) -> String {
        let name = format!("S{}", self.states.len());
        self.states.push(Decl {
            name: name.clone(),
            shape,
        });
        name
    }

    fn param(&mut self, shape: Vec<usize>) -> String {
        let name = format!("P{}", self.params.len());
        self.params.push(Decl {
            name: name.clone(),
            shape,
        });
        name
    }

    /// `expr` (a row of width `w`) mapped to width `n` by a linear layer on a new state.
    fn linear(&mut self, expr: String, w: usize, n: usize) -> Result<String> {
        let transposed = self.u.arbitrary::<bool>()?;
        let bias = self.u.arbitrary::<bool>()?;
        let mut out = if transposed {
            let s = self.state(vec![n, w]);
            format!("({expr} @ {s}.T)")
        } else {
            let s = self.state(vec![w, n]);
            format!("({expr} @ {s})")
        };
        if bias {
            let b = self.state(vec![1, n]);
            out = format!("({out} + {b})");
        }
        Ok(out)
    }

    /// A row expression over `x` and its width.
    fn expr(&mut self, depth: u32, d: usize) -> Result<(String, usize)> {
        let full = self.states.len() >= MAX_STATES;
        if depth == 0 {
            return Ok(("x".to_string(), d));
        }
        let choice = self.u.int_in_range(0..=11u8)?;
        Ok(match choice {
            0 => ("x".to_string(), d),
            1 if !full => {
                let (e, w) = self.expr(depth - 1, d)?;
                let n = self.width()?;
                (self.linear(e, w, n)?, n)
            }
            2 => {
                let (e, w) = self.expr(depth - 1, d)?;
                let act = *self.u.choose(&ACTIVATIONS)?;
                let e = match act {
                    // 1/sqrt of a positive value: exercises rsqrt without its pole.
                    "rsqrt_soft" => format!("rsqrt(1.5 + {e} * {e})"),
                    _ => format!("{act}({e})"),
                };
                (e, w)
            }
            3 if !full => {
                let (e, w) = self.expr(depth - 1, d)?;
                let s = self.state(vec![1, w]);
                let op = *self.u.choose(&["*", "+", "-"])?;
                (format!("({e} {op} {s})"), w)
            }
            4 => {
                let (e, w) = self.expr(depth - 1, d)?;
                let form = self.u.int_in_range(0..=3u8)?;
                let e = match form {
                    0 => format!("(0.5 * {e})"),
                    1 => format!("({e} / 2.0)"),
                    2 => format!("(-{e})"),
                    _ => format!("({e} * {w})"),
                };
                (e, w)
            }
            5 => {
                let (e, w) = self.expr(depth - 1, d)?;
                let lnw = self.param(vec![w]);
                let lnb = self.param(vec![w]);
                (format!("layer_norm({e}, {lnw}, {lnb}, 1e-5)"), w)
            }
            6 => {
                let (e, w) = self.expr(depth - 1, d)?;
                let p = self.param(vec![w]);
                (format!("rms_norm({e}, {p}, 1e-5)"), w)
            }
            7 => {
                let (a, wa) = self.expr(depth - 1, d)?;
                let (mut b, wb) = self.expr(depth - 1, d)?;
                if wb != wa {
                    if self.states.len() >= MAX_STATES {
                        return Ok((a, wa));
                    }
                    b = self.linear(b, wb, wa)?;
                }
                let op = *self.u.choose(&["+", "-", "*"])?;
                (format!("({a} {op} {b})"), wa)
            }
            8 => {
                let (e, w) = self.expr(depth - 1, d)?;
                let reduce = *self.u.choose(&["mean", "sum"])?;
                let op = *self.u.choose(&["-", "*"])?;
                let e = match op {
                    "-" => format!("({e} - {reduce}({e}, -1))"),
                    _ => format!("({e} * tanh({reduce}({e}, -1)))"),
                };
                (e, w)
            }
            9 => {
                let (e, w) = self.expr(depth - 1, d)?;
                (format!("({e}) ^ 2"), w)
            }
            10 => {
                let (e, w) = self.expr(depth - 1, d)?;
                let name = format!("t{}", self.lets.len());
                self.lets.push(format!("let {name} = {e}"));
                let (rest, w2) = self.expr(depth - 1, d)?;
                let combined = if w2 == w {
                    format!("({name} * {rest})")
                } else {
                    format!("({name} + sum({rest}, -1))")
                };
                (combined, w)
            }
            11 if !full => {
                let (e, w) = self.expr(depth - 1, d)?;
                let p = self.param(vec![1, w]);
                (format!("({e} + {p})"), w)
            }
            _ => ("x".to_string(), d),
        })
    }
}

/// `dims` joined as a shape literal's inside.
fn dims(shape: &[usize]) -> String {
    shape
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A generated program and its test parameters.
pub fn case(u: &mut Unstructured) -> Result<DiffCase> {
    let d: usize = u.int_in_range(1..=4)?;
    let mut inner = Inner {
        u,
        states: Vec::new(),
        params: Vec::new(),
        lets: Vec::new(),
    };
    let depth = inner.u.int_in_range(1..=MAX_DEPTH)?;
    let (mut g, w) = inner.expr(depth, d)?;
    // g must return [1, d] and use at least one state.
    if w != d || inner.states.is_empty() {
        g = inner.linear(g, w, d)?;
    }
    let Inner {
        u,
        states,
        params,
        lets,
    } = inner;
    let g = match lets.is_empty() {
        true => format!("= {g}"),
        false => format!("{{\n    {}\n    {g}\n  }}", lets.join("\n    ")),
    };
    let loss = match u.int_in_range(0..=3u8)? {
        0 => "0.5 * sum((g(k) - v) ^ 2)",
        1 => "sum((g(k) - (v - k)) ^ 2)",
        2 => "mean((g(k) - v) ^ 2)",
        _ => "0.5 * sum((g(k) - v) ^ 2) + 0.1 * sum(g(k) * k)",
    };
    let out = match u.int_in_range(0..=2u8)? {
        0 => "g(q)",
        1 => "q + g(q)",
        _ => "tanh(g(q)) * 2.0",
    };
    let mut decls = String::new();
    for s in &states {
        decls += &format!("  state {}: [{}]\n", s.name, dims(&s.shape));
    }
    for p in &params {
        decls += &format!("  param {}: [{}]\n", p.name, dims(&p.shape));
    }

    let chained = u.arbitrary::<bool>()?;
    let mut inputs = String::new();
    // The inputs for one scan's states and parameters (suffix "" or "_2"), per head or shared.
    let mut bindings = |u: &mut Unstructured, suffix: &str| -> Result<String> {
        let mut b = Vec::new();
        for decl in states.iter().chain(&params) {
            let per_head = u.arbitrary::<bool>()?;
            let shape = match per_head {
                true => format!("H, {}", dims(&decl.shape)),
                false => dims(&decl.shape),
            };
            inputs += &format!("  input {}{suffix}: [{shape}]\n", decl.name);
            b.push(format!("{n} = {n}{suffix}", n = decl.name));
        }
        Ok(b.join(", "))
    };
    let first = bindings(u, "")?;
    let second = if chained {
        Some(bindings(u, "_2")?)
    } else {
        None
    };
    let query = match u.int_in_range(0..=2u8)? {
        0 => "XQ",
        1 => "tanh(XQ)",
        _ => "(XQ + XK) * 0.5",
    };
    let update = "update minibatch_gd(size = mini_batch_size, token_eta = eta, lr = lr)";
    let mut body =
        format!("  let r = ttt M({first}, k = XK, v = XV, q = {query}) per (B, H)\n    {update}\n");
    let mut last = "r";
    if let Some(second) = second {
        body += &format!(
            "  let r2 = ttt M({second}, k = XK, v = XV, q = r.out) per (B, H)\n    {update}\n"
        );
        last = "r2";
    }
    body += &match u.int_in_range(0..=2u8)? {
        0 => format!("  output Z = {last}.out\n"),
        1 => format!("  output Z = sigmoid({last}.out)\n"),
        _ => format!("  output Z = {last}.out + XQ\n"),
    };
    for s in &states {
        if u.arbitrary::<bool>()? {
            body += &format!("  output {n}_last = r.{n}\n", n = s.name);
        }
    }
    let source = format!(
        "config mini_batch_size = 4\n\
         inner M {{\n{decls}\
         \x20 fn g(x: [1, {d}]) -> [1, {d}] {g}\n\
         \x20 loss(k: [1, {d}], v: [1, {d}]) = {loss}\n\
         \x20 out(q: [1, {d}]) = {out}\n\
         }}\n\
         main {{\n\
         \x20 input XQ, XK, XV: [B, H, L, {d}]\n\
         \x20 input eta: [mini_batch_size]\n\
         \x20 input lr: [B, H, L]\n\
         {inputs}{body}}}\n"
    );

    let batch = u.int_in_range(1..=2)?;
    let heads = u.int_in_range(1..=2)?;
    let len = u.int_in_range(1..=MAX_LEN)?;
    let mini_batch = u.int_in_range(1..=5)?;
    let seed = u.arbitrary::<u64>()?;
    let mut chunks = Vec::new();
    let mut left = len;
    while left > 0 {
        let n = u.int_in_range(1..=left)?;
        chunks.push(n);
        left -= n;
    }
    let stream_on = match u.arbitrary::<bool>()? {
        true => Backend::Llvm,
        false => Backend::Cranelift,
    };
    Ok(DiffCase {
        source,
        batch,
        heads,
        len,
        mini_batch,
        seed,
        chunks,
        stream_on,
    })
}
