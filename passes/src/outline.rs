//! Outlining repeated layers: runs of top-level kernel statements that repeat with only their
//! buffers (and loop variables) changed — the unrolled layers of a model — become one
//! [`KernelFunction`] and one [`Stmt::Call`] per repeat, so that a native backend compiles each
//! distinct layer once and its compile time no longer grows with depth.
//!
//! **Finding the repeats (structural hashing).** Every top-level statement is put in canonical
//! form: its buffers renamed to slots in order of first appearance (each slot keeping the
//! buffer's layout, memory space and whether it is a program input), its loop variables
//! likewise; equal canonical forms get equal keys. A run `(start, len, count)` is a stretch of
//! the key sequence with period `len` repeated `count ≥ 2` times; the run saving the most
//! statements is taken, checked as a whole (the repeats' canonical forms over all their `len`
//! statements together must be equal, so each repeat's buffers map one-to-one and consistently
//! onto the first's), and the statements before and after it are searched again for more runs
//! (a step program can have several).
//!
//! **The rewrite.** The first repeat's statements become the function's body as they are; its
//! parameters are the first repeat's `Global` buffers in slot order, and each call passes the
//! corresponding buffers of its repeat. `Local` and `Shared` buffers stay inside the function
//! (the first repeat's), which is sound only when nothing they hold outlives one iteration of a
//! loop that refreshes them: a run with scratch used outside such a loop, or used outside the
//! run, is not outlined.
//!
//! **Constants first.** Before the search, top-level statements that compute tables from
//! nothing but constants (no program input; a model's RoPE angles) into buffers no other
//! statement writes move to the front of the program, past statements that touch none of
//! their buffers: the lowering builds such a table
//! inside the first layer that needs it, which would make the first layer differ from the
//! others and be compiled on its own.
//!
//! The pass changes no result: [`tttc_ir::kernel::inline_calls`] of its output is its input up
//! to the names of buffers and loop variables of the later repeats and the constant statements
//! moved to the front. It runs for CPU targets
//! only (the GPU mapping wants every statement at the top level); `TTTC_NO_OUTLINE=1` in the
//! environment turns it off ([`Outline::from_env`]) for comparisons.

use crate::pipeline::KernelPass;
use crate::PassError;
use std::collections::{BTreeSet, HashMap};
use tttc_ir::kernel::{
    buffers_used, BufId, BufferKind, FuncId, Index, KernelFunction, KernelProgram, Layout,
    MemorySpace, Schedule, Stmt, VarId,
};

/// Fewest top-level statements in one repeat worth a function (a layer has dozens; shorter
/// repeats are left to LLVM, which optimizes across them).
pub const MIN_REPEAT_LEN: usize = 4;

/// The environment variable that turns outlining off in [`Outline::from_env`].
pub const DISABLE_ENV: &str = "TTTC_NO_OUTLINE";

/// The outlining pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outline {
    /// Whether it rewrites anything (off: the program passes through unchanged).
    pub enabled: bool,
}

impl Default for Outline {
    fn default() -> Self {
        Outline { enabled: true }
    }
}

impl Outline {
    /// On, unless [`DISABLE_ENV`] is set to something other than `0` or the empty string.
    pub fn from_env() -> Outline {
        let off = crate::pipeline::switched_off(DISABLE_ENV);
        Outline { enabled: !off }
    }
}

impl KernelPass for Outline {
    fn name(&self) -> &'static str {
        "outline"
    }

    fn run(&self, program: &KernelProgram) -> Result<KernelProgram, PassError> {
        Ok(if self.enabled {
            outline(program)
        } else {
            program.clone()
        })
    }
}

/// `p` with its repeated runs of top-level statements outlined (see the module doc). A program
/// that already has functions is returned as it is.
pub fn outline(p: &KernelProgram) -> KernelProgram {
    if !p.functions.is_empty() {
        return p.clone();
    }
    let body = hoist_constants(p);
    let mut o = Outliner {
        p,
        functions: Vec::new(),
    };
    let body = o.segment(body);
    KernelProgram {
        name: p.name.clone(),
        dtype: p.dtype,
        buffers: p.buffers.clone(),
        vars: p.vars,
        body,
        functions: o.functions,
        memory: p.memory.clone(),
    }
}

/// The program's body with its *constant* top-level statements moved to the front, keeping
/// their order: a statement is constant when it reads no program input, every buffer it
/// reads but does not write is written by constant statements before it (tables such as a
/// model's RoPE angles, built from iotas), and no statement that stays in place writes a
/// buffer it writes (so filling the padding rows of a layer's activation with zeros stays in
/// its layer: hoisted, the activation would live from the program's start, and every layer's
/// at once). A statement moves only past statements that touch none of its buffers, so every
/// buffer sees the same accesses in the same order.
///
/// The lowering computes a table shared by every layer where the first layer first needs it,
/// inside that layer; moved out, the first layer repeats like the others and is outlined too.
fn hoist_constants(p: &KernelProgram) -> Vec<Stmt> {
    let written_by = |s: &Stmt| -> BTreeSet<BufId> {
        let written = s.stores().into_iter().map(|(b, _, _)| b);
        match s {
            Stmt::Gemm(g) => written.chain([g.c.buf]).collect(),
            _ => written.collect(),
        }
    };
    // Every statement's buffers, once.
    let used: Vec<BTreeSet<BufId>> = p
        .body
        .iter()
        .map(|s| buffers_used(std::slice::from_ref(s)))
        .collect();
    let written: Vec<BTreeSet<BufId>> = p.body.iter().map(written_by).collect();
    // Buffers that statements staying in place write: grows until no hoisted statement
    // writes one (each round keeps at least one more statement in place, or stops).
    let mut kept_writes: BTreeSet<BufId> = BTreeSet::new();
    loop {
        let mut constant: BTreeSet<BufId> = BTreeSet::new();
        let mut touched: BTreeSet<BufId> = BTreeSet::new();
        let (mut front, mut rest) = (Vec::new(), Vec::new());
        let mut rest_writes: BTreeSet<BufId> = BTreeSet::new();
        for (i, s) in p.body.iter().enumerate() {
            let (used, written) = (&used[i], &written[i]);
            let hoist = !matches!(s, Stmt::Call { .. } | Stmt::Barrier)
                && !used.is_empty()
                && written.is_disjoint(&kept_writes)
                && used.iter().all(|b| {
                    !touched.contains(b)
                        && !matches!(p.buffers[b.0 as usize].kind, BufferKind::Input(_))
                        && (written.contains(b) || constant.contains(b))
                });
            if hoist {
                constant.extend(written.iter().copied());
                front.push(i);
            } else {
                touched.extend(used.iter().copied());
                rest_writes.extend(written.iter().copied());
                rest.push(i);
            }
        }
        if constant.is_disjoint(&rest_writes) {
            front.extend(rest);
            return front.into_iter().map(|i| p.body[i].clone()).collect();
        }
        kept_writes.extend(rest_writes);
    }
}

/// What a buffer slot keeps of its buffer in a canonical form.
#[derive(Clone, Debug, PartialEq)]
struct SlotKind {
    layout: Layout,
    space: MemorySpace,
    input: bool,
}

/// Statements in canonical form: buffers and loop variables renamed in order of first
/// appearance.
#[derive(Debug, PartialEq)]
struct Canonical {
    body: Vec<Stmt>,
    slots: Vec<SlotKind>,
    /// The original buffer of each slot.
    buffers: Vec<BufId>,
}

impl Canonical {
    /// A hash of the form (its statements and slots, not the original buffers), computed from
    /// its printed form without building the text.
    fn hash(&self) -> u64 {
        use std::fmt::Write as _;
        use std::hash::Hasher as _;
        /// Feeds what is written into a hasher.
        struct Feed(std::collections::hash_map::DefaultHasher);
        impl std::fmt::Write for Feed {
            fn write_str(&mut self, s: &str) -> std::fmt::Result {
                self.0.write(s.as_bytes());
                Ok(())
            }
        }
        let mut feed = Feed(std::collections::hash_map::DefaultHasher::new());
        // Writing into a hasher cannot fail.
        let _ = write!(feed, "{:?}{:?}", self.body, self.slots);
        feed.0.finish()
    }

    /// Whether two canonical forms are the same up to the original buffers.
    fn same_shape(&self, other: &Canonical) -> bool {
        self.body == other.body && self.slots == other.slots
    }
}

fn canonical(p: &KernelProgram, stmts: &[Stmt]) -> Canonical {
    let mut c = Canonicalizer {
        bufs: HashMap::new(),
        order: Vec::new(),
        loops: 0,
        scope: Vec::new(),
    };
    let body = stmts.iter().map(|s| c.stmt(s)).collect();
    let slots = c
        .order
        .iter()
        .map(|&b| {
            let buf = &p.buffers[b.0 as usize];
            SlotKind {
                layout: buf.layout.clone(),
                space: buf.space,
                input: matches!(buf.kind, BufferKind::Input(_)),
            }
        })
        .collect();
    Canonical {
        body,
        slots,
        buffers: c.order,
    }
}

/// Renames buffers to slots in order of first appearance, and every loop's variable to the
/// loop's number in order of appearance (so that reusing a variable in another loop does not
/// change the form).
struct Canonicalizer {
    bufs: HashMap<BufId, BufId>,
    order: Vec<BufId>,
    loops: u32,
    /// Enclosing loops' variables and their new names, innermost last.
    scope: Vec<(VarId, VarId)>,
}

impl Canonicalizer {
    fn slot(&mut self, b: BufId) -> BufId {
        let n = self.bufs.len() as u32;
        *self.bufs.entry(b).or_insert_with(|| {
            self.order.push(b);
            BufId(n)
        })
    }

    fn index(&self, i: &Index) -> Index {
        i.substitute(&|v| {
            self.scope
                .iter()
                .rev()
                .find(|(w, _)| *w == v)
                .map(|(_, x)| Index::Var(*x))
        })
    }

    fn stmt(&mut self, s: &Stmt) -> Stmt {
        match s {
            Stmt::Loop {
                var,
                extent,
                schedule,
                body,
            } => {
                let new = VarId(self.loops);
                self.loops += 1;
                self.scope.push((*var, new));
                let body = body.iter().map(|s| self.stmt(s)).collect();
                self.scope.pop();
                Stmt::counted_loop(new, *extent, *schedule, body)
            }
            Stmt::Store { buf, index, value } => {
                // Loads first: the order code generators evaluate them in.
                let mut value = value.map_indices(&|i| self.index(i));
                value.for_each_load_mut(&mut |b, _| *b = self.slot(*b));
                let mut index = self.index(index);
                index.for_each_load_mut(&mut |b, _| *b = self.slot(*b));
                Stmt::store(self.slot(*buf), index, value)
            }
            Stmt::Gemm(g) => {
                let mut g = g.clone();
                for v in [&mut g.a, &mut g.b, &mut g.c] {
                    v.buf = self.slot(v.buf);
                }
                Stmt::Gemm(g)
            }
            Stmt::Call { func, args } => Stmt::Call {
                func: *func,
                args: args.iter().map(|&b| self.slot(b)).collect(),
            },
            Stmt::Barrier => Stmt::Barrier,
        }
    }
}

struct Outliner<'p> {
    p: &'p KernelProgram,
    functions: Vec<KernelFunction>,
}

/// A candidate: `count` repeats of `len` statements from `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    start: usize,
    len: usize,
    count: usize,
}

impl Run {
    fn saved(&self) -> usize {
        (self.count - 1) * self.len
    }

    fn end(&self) -> usize {
        self.start + self.len * self.count
    }
}

/// Every maximal periodic stretch of `keys` with period at least [`MIN_REPEAT_LEN`], as runs
/// of at least two repeats, most statements saved first.
fn candidates(keys: &[u32]) -> Vec<Run> {
    let n = keys.len();
    let mut out = Vec::new();
    for len in MIN_REPEAT_LEN..=n / 2 {
        let mut i = 0;
        while i + len < n {
            if keys[i] != keys[i + len] {
                i += 1;
                continue;
            }
            let mut j = i;
            while j + len < n && keys[j] == keys[j + len] {
                j += 1;
            }
            // keys[i..j + len] has period len.
            let count = (j - i + len) / len;
            if count >= 2 {
                out.push(Run {
                    start: i,
                    len,
                    count,
                });
            }
            i = j + 1;
        }
    }
    out.sort_by(|a, b| {
        b.saved()
            .cmp(&a.saved())
            .then(a.len.cmp(&b.len))
            .then(a.start.cmp(&b.start))
    });
    out
}

/// Scratch (`Local`/`Shared`) buffers used in `stmts` outside every loop that refreshes them.
fn unrefreshed_scratch(p: &KernelProgram, stmts: &[Stmt]) -> BTreeSet<BufId> {
    fn go(p: &KernelProgram, s: &Stmt, loops: &mut Vec<Schedule>, out: &mut BTreeSet<BufId>) {
        let mut note = |b: BufId, loops: &[Schedule]| {
            let space = p.buffers[b.0 as usize].space;
            if space != MemorySpace::Global
                && !loops.iter().any(|&l| space.fresh_each_iteration_of(l))
            {
                out.insert(b);
            }
        };
        match s {
            Stmt::Loop { schedule, body, .. } => {
                loops.push(*schedule);
                for s in body {
                    go(p, s, loops, out);
                }
                loops.pop();
            }
            Stmt::Store { buf, index, value } => {
                note(*buf, loops);
                index.for_each_load(&mut |b, _| note(b, loops));
                value.for_each_load(&mut |b, _| note(b, loops));
            }
            Stmt::Gemm(g) => [g.a.buf, g.b.buf, g.c.buf]
                .into_iter()
                .for_each(|b| note(b, loops)),
            Stmt::Call { args, .. } => args.iter().for_each(|&b| note(b, loops)),
            Stmt::Barrier => {}
        }
    }
    let mut out = BTreeSet::new();
    for s in stmts {
        go(p, s, &mut Vec::new(), &mut out);
    }
    out
}

impl Outliner<'_> {
    /// `stmts` with their best run outlined, and the stretches before and after it searched
    /// again.
    fn segment(&mut self, mut stmts: Vec<Stmt>) -> Vec<Stmt> {
        if stmts.len() < 2 * MIN_REPEAT_LEN {
            return stmts;
        }
        // A statement's key: its canonical form's hash (two statements with the same key are
        // only candidates: `check` compares the forms themselves).
        let mut interned: HashMap<u64, u32> = HashMap::new();
        let keys: Vec<u32> = stmts
            .iter()
            .map(|s| {
                let c = canonical(self.p, std::slice::from_ref(s));
                let n = interned.len() as u32;
                *interned.entry(c.hash()).or_insert(n)
            })
            .collect();
        for run in candidates(&keys) {
            if let Some((run, forms)) = self.check(&stmts, run) {
                let after = stmts.split_off(run.end());
                let calls = self.rewrite(&stmts, run, &forms);
                stmts.truncate(run.start);
                let mut out = self.segment(stmts);
                out.extend(calls);
                out.extend(self.segment(after));
                return out;
            }
        }
        stmts
    }

    /// The first stretch of at least two consecutive repeats of `run` whose buffers map
    /// consistently onto the stretch's first repeat, if its scratch buffers may be shared, with
    /// the canonical form of each of its repeats.
    fn check(&self, stmts: &[Stmt], run: Run) -> Option<(Run, Vec<Canonical>)> {
        let repeat = |r: usize| &stmts[run.start + r * run.len..run.start + (r + 1) * run.len];
        let mut forms: Vec<Canonical> = (0..run.count)
            .map(|r| canonical(self.p, repeat(r)))
            .collect();
        let mut base = 0;
        let mut count = 1;
        while base + 1 < run.count {
            count = 1;
            while base + count < run.count && forms[base + count].same_shape(&forms[base]) {
                count += 1;
            }
            if count >= 2 {
                break;
            }
            base += 1;
        }
        if count < 2 {
            return None;
        }
        let run = Run {
            start: run.start + base * run.len,
            len: run.len,
            count,
        };
        let inside = &stmts[run.start..run.end()];
        if !unrefreshed_scratch(self.p, inside).is_empty() {
            return None;
        }
        let scratch_inside: BTreeSet<BufId> = buffers_used(inside)
            .into_iter()
            .filter(|b| self.p.buffers[b.0 as usize].space != MemorySpace::Global)
            .collect();
        let outside = buffers_used(&stmts[..run.start])
            .into_iter()
            .chain(buffers_used(&stmts[run.end()..]));
        for b in outside {
            if scratch_inside.contains(&b) {
                return None;
            }
        }
        forms.truncate(base + count);
        forms.drain(..base);
        Some((run, forms))
    }

    /// The calls replacing `run` (and its function, added to the program's); `forms`: the
    /// canonical form of each of its repeats.
    fn rewrite(&mut self, stmts: &[Stmt], run: Run, forms: &[Canonical]) -> Vec<Stmt> {
        let func = FuncId(self.functions.len() as u32);
        let repeat = |r: usize| &stmts[run.start + r * run.len..run.start + (r + 1) * run.len];
        let globals = |c: &Canonical| -> Vec<BufId> {
            c.buffers
                .iter()
                .zip(&c.slots)
                .filter(|(_, k)| k.space == MemorySpace::Global)
                .map(|(b, _)| *b)
                .collect()
        };
        self.functions.push(KernelFunction {
            name: format!("repeat{}", func.0),
            params: forms.first().map(globals).unwrap_or_default(),
            body: repeat(0).to_vec(),
        });
        forms
            .iter()
            .map(|form| Stmt::Call {
                func,
                args: globals(form),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
