//! The backward of a `ttt` scan (`ttt_vjp`): the interpreter's algorithm
//! (`tttc_backends::interp`'s `scan_vjp`, docs/gradients.md) as loops, one `Parallel` loop over
//! the slices whose body keeps everything of one slice in `Local` buffers:
//!
//! 1. forward from the initial state with the step graph (only its `next_<state>` outputs),
//!    keeping the state at the start of every `G`-th mini-batch in a checkpoint buffer
//!    `[⌈nmb/G⌉, state]`;
//! 2. the groups in reverse: the group's states recomputed from its checkpoint into a group
//!    buffer `[G, state]`, then `step_vjp` on its mini-batches in reverse, carrying the state's
//!    cotangent, summing the params' (and a per-position `token_eta`'s) and writing the rows of
//!    the sequence operands' cotangents in place.
//!
//! Every group but the last has `G` full mini-batches and is one iteration of a loop; the last
//! (fewer mini-batches, the remainder among them when there is one) is lowered on its own and
//! runs first.
//! An operand's cotangent goes straight into the result when every slice owns a contiguous
//! part of it; otherwise (an operand shared by slices, or strided slices) each slice writes
//! its own part of a staging buffer `[slices, slice shape]`, summed into the result after the
//! slice loop in slice order — the interpreter's order.

use super::scan::{check_scan, slice_indices, slice_of, slice_operands, Blocks, Slice};
use super::*;

/// Where one operand's cotangent goes.
enum GradDest {
    /// Each slice's part of the result, row-major (its offset depends on the slice index).
    Direct(Dest),
    /// A staging buffer `[slices, slice shape]`, summed into the result afterwards.
    Staged { buf: BufId, size: usize },
}

/// What lowering the backward of one slice needs.
struct VjpCx<'s> {
    id: NodeId,
    scan: &'s TttScan,
    step: &'s Graph,
    step_vjp: &'s Graph,
    slices: Vec<Slice>,
    seq_len: usize,
    k_max: usize,
    state_shapes: Vec<Vec<usize>>,
    /// The cotangent of the output sequence, this slice's `[L, ...]`.
    ct_out: Slice,
    /// The state's cotangent carried backwards (`Local`).
    d_states: Vec<Dest>,
    /// Per operand: where the slice's cotangent goes (a `Local` accumulator for the params
    /// and a per-position `token_eta`, rows of the result for the sequence operands).
    grads: Vec<Dest>,
    /// Per operand: whether `grads` is an accumulator (summed over the mini-batches).
    accumulated: Vec<bool>,
}

impl VjpCx<'_> {
    fn blocks(&self) -> Blocks<'_> {
        Blocks {
            id: self.id,
            scan: self.scan,
            slices: &self.slices,
            seq_len: self.seq_len,
            k_max: self.k_max,
        }
    }
}

/// `n - 1 - v`: the loop variable `v` over `0..n` counting down.
fn reversed(v: VarId, n: usize) -> Index {
    Index::sum(Index::Const(n as i64 - 1), Index::scaled(Index::Var(v), -1))
}

/// One state of a buffer of states `[count, shape]` at position `at`.
fn state_at(buf: BufId, shape: &[usize], at: Index) -> Dest {
    let size: usize = shape.iter().product();
    Dest {
        buf,
        offset: ix_mul(at, size as i64),
    }
}

impl Lowerer {
    /// Lowers `ttt_vjp` node `id` (operands: the scan's, then the cotangents of its results)
    /// into one `Parallel` loop over the slices (appended to `body`), plus the sums of the
    /// staged cotangents; returns the cotangent of every operand of the scan.
    pub(super) fn lower_ttt_vjp(
        &mut self,
        sc: &mut Scope,
        id: NodeId,
        scan: &TttScan,
        checkpoint_every: usize,
        operands: &[NodeId],
        body: &mut Vec<Stmt>,
    ) -> Res<Vec<Val>> {
        let n = scan.operand_count();
        let ns = scan.states.len();
        if operands.len() != n + 1 + ns {
            return Err(sc.invalid_at(
                id,
                format!("{} operand(s), expected {}", operands.len(), n + 1 + ns),
            ));
        }
        let (step, k_max) = check_scan(sc, id, scan, &operands[..n])?;
        let step_vjp = scan
            .step_vjp
            .as_ref()
            .ok_or_else(|| sc.invalid_at(id, "the scan has no step_vjp graph"))?;
        if step_vjp.inputs().len() != n + 1 + ns || step_vjp.outputs().len() != n {
            return Err(sc.invalid_at(
                id,
                format!(
                    "step_vjp takes {} input(s) and gives {} output(s), expected {} and {n}",
                    step_vjp.inputs().len(),
                    step_vjp.outputs().len(),
                    n + 1 + ns
                ),
            ));
        }
        let (views, per_ext) = self.scan_operands(sc, id, scan, &operands[..n], body)?;
        let count = numel(&per_ext).ok_or_else(|| sc.invalid_at(id, "too many slices"))?;
        let nper = per_ext.len();

        // The cotangents of the scan's results: `[per..., L, ...]` and `[per..., state]`.
        let mut ct_views = Vec::with_capacity(1 + ns);
        for (j, &o) in operands[n..].iter().enumerate() {
            let v = sc.tensor(o, id)?;
            if v.shape.len() < nper || v.shape[..nper] != per_ext[..] {
                return Err(sc.invalid_at(
                    id,
                    format!(
                        "cotangent {j} has shape {:?}, expected the mapped extents {per_ext:?} first",
                        v.shape
                    ),
                ));
            }
            let what = format!("%{} ct{j}", id.index());
            ct_views.push(self.view_of(sc, v, &what, body));
        }
        let seq_len = match ct_views[0].1.get(nper) {
            Some(&l) => l,
            None => return Err(sc.invalid_at(id, "the output's cotangent has no sequence axis")),
        };
        let state_shapes: Vec<Vec<usize>> = ct_views[1..]
            .iter()
            .map(|(_, s)| s[nper..].to_vec())
            .collect();
        if k_max == 0 && seq_len > 0 {
            return Err(sc.invalid_at(id, "the mini-batch size is 0"));
        }
        let (full, rem) = match k_max {
            0 => (0, 0),
            k => (seq_len / k, seq_len % k),
        };
        let nmb = full + usize::from(rem > 0);
        let group = checkpoint_every.max(1);

        // The results (one per operand, the operand's type) and where each slice's part goes.
        let grad_ty: Vec<Vec<usize>> = views.iter().map(|(_, s)| s.clone()).collect();
        let results = self.scan_results(sc, id, &grad_ty);
        let c = self.var();
        let cvar = Index::Var(c);
        let per_idx = slice_indices(&cvar, &per_ext);
        let slices = slice_operands(&views, scan, &per_idx);
        let mut grad_dests = Vec::with_capacity(n);
        for (i, ((_, shape), axes)) in views.iter().zip(&scan.axes).enumerate() {
            let whole = View {
                buf: results[i].buf,
                offset: results[i].offset.clone(),
                strides: row_major(shape),
            };
            let part = slice_of(&whole, shape, &axes.per, &per_idx);
            let owned = (0..nper).all(|p| axes.per.contains(&Some(p)));
            if owned && part.strides == row_major(&part.shape) {
                grad_dests.push(GradDest::Direct(Dest {
                    buf: part.buf,
                    offset: part.offset,
                }));
            } else {
                let size: usize = part.shape.iter().product();
                let mut staged_shape = vec![count];
                staged_shape.extend_from_slice(&part.shape);
                let buf = self.buffer(
                    format!("%{} ttt_vjp.staged{i}", id.index()),
                    BufferKind::Temp,
                    MemorySpace::Global,
                    &staged_shape,
                );
                grad_dests.push(GradDest::Staged { buf, size });
            }
        }
        let slice_dest = |g: &GradDest| match g {
            GradDest::Direct(d) => d.clone(),
            GradDest::Staged { buf, size } => Dest {
                buf: *buf,
                offset: ix_mul(cvar.clone(), *size as i64),
            },
        };

        // The slice loop's body.
        let mut cb = Vec::new();
        let ct_slices: Vec<Slice> = ct_views
            .iter()
            .map(|(v, shape)| {
                let per: Vec<Option<usize>> =
                    (0..shape.len()).map(|a| (a < nper).then_some(a)).collect();
                slice_of(v, shape, &per, &per_idx)
            })
            .collect();
        let prefix = format!("ttt_vjp%{}/", id.index());
        let mut d_states = Vec::with_capacity(ns);
        for (s, shape) in state_shapes.iter().enumerate() {
            let name = scan.states.get(s).cloned().unwrap_or_default();
            let buf = self.buffer(
                format!("{prefix}d_{name}"),
                BufferKind::Temp,
                MemorySpace::Local,
                shape,
            );
            let d = Dest {
                buf,
                offset: Index::Const(0),
            };
            let sl = &ct_slices[1 + s];
            let v = Val {
                shape: sl.shape.clone(),
                lazy: Lazy::View(View {
                    buf: sl.buf,
                    offset: sl.offset.clone(),
                    strides: sl.strides.clone(),
                }),
            };
            if v.shape != *shape {
                return Err(sc.invalid_at(id, format!("cotangent of state {s} is {:?}", v.shape)));
            }
            self.materialize(&v, &d, &mut cb);
            d_states.push(d);
        }
        let mut grads = Vec::with_capacity(n);
        let mut accumulated = Vec::with_capacity(n);
        for (i, sl) in slices.iter().enumerate() {
            let acc = match scan.operand_kind(i) {
                OperandKind::Param(_) => true,
                OperandKind::TokenEta => scan.token_eta == TokenEtaForm::PerPosition,
                _ => false,
            };
            if acc {
                let buf = self.buffer(
                    format!("{prefix}acc{i}"),
                    BufferKind::Temp,
                    MemorySpace::Local,
                    &sl.shape,
                );
                let d = Dest {
                    buf,
                    offset: Index::Const(0),
                };
                let zero = Val {
                    shape: sl.shape.clone(),
                    lazy: Lazy::Const(0.0),
                };
                self.materialize(&zero, &d, &mut cb);
                grads.push(d);
            } else {
                grads.push(slice_dest(&grad_dests[i]));
            }
            accumulated.push(acc);
        }
        let cx = VjpCx {
            id,
            scan,
            step,
            step_vjp,
            slices,
            seq_len,
            k_max,
            state_shapes,
            ct_out: ct_slices[0].clone(),
            d_states,
            grads,
            accumulated,
        };
        if nmb > 0 {
            self.lower_slice_backward(sc, &cx, nmb, group, rem, &mut cb)?;
        }
        // The slice's cotangents of the states and of what was accumulated.
        for (i, g) in grad_dests.iter().enumerate() {
            let shape = &cx.slices[i].shape;
            let from = match scan.operand_kind(i) {
                OperandKind::State(s) => &cx.d_states[s],
                _ if cx.accumulated[i] => &cx.grads[i],
                _ => continue,
            };
            self.materialize(&from.val(shape), &slice_dest(g), &mut cb);
        }
        if count > 0 {
            body.push(Stmt::counted_loop(c, count, Schedule::Parallel, cb));
        }

        // Staged cotangents: the slices' parts summed into the result, in slice order.
        for (i, g) in grad_dests.iter().enumerate() {
            let GradDest::Staged { buf, size } = g else {
                continue;
            };
            let shape = &views[i].1;
            let zero = Val {
                shape: shape.clone(),
                lazy: Lazy::Const(0.0),
            };
            self.materialize(&zero, &results[i], body);
            if count == 0 {
                continue;
            }
            let c2 = self.var();
            let whole = View {
                buf: results[i].buf,
                offset: results[i].offset.clone(),
                strides: row_major(shape),
            };
            let part = slice_of(
                &whole,
                shape,
                &scan.axes[i].per,
                &slice_indices(&Index::Var(c2), &per_ext),
            );
            let (idx, loops) = self.loops(&part.shape);
            let at = address(&part.offset, &part.strides, &idx);
            let staged_at = address(
                &ix_mul(Index::Var(c2), *size as i64),
                &row_major(&part.shape),
                &idx,
            );
            let st = store(
                part.buf,
                at.clone(),
                bin(BinaryOp::Add, load(part.buf, at), load(*buf, staged_at)),
            );
            body.push(Stmt::Loop {
                var: c2,
                extent: count,
                schedule: Schedule::Serial,
                body: wrap(loops, vec![st]),
            });
        }
        Ok(results
            .iter()
            .zip(&grad_ty)
            .map(|(d, shape)| d.val(shape))
            .collect())
    }

    /// The forward with checkpoints and the groups in reverse for one slice (`nmb ≥ 1`
    /// mini-batches, the last of `rem` tokens when `rem > 0`).
    fn lower_slice_backward(
        &mut self,
        sc: &Scope,
        cx: &VjpCx,
        nmb: usize,
        group: usize,
        rem: usize,
        cb: &mut Vec<Stmt>,
    ) -> Res<()> {
        let (id, k_max) = (cx.id, cx.k_max);
        let ngroups = nmb.div_ceil(group);
        let held = group.min(nmb);
        let prefix = format!("ttt_vjp%{}/", id.index());
        // The step with its `next_<state>` outputs only (the forward and the recomputation do
        // not need `out`).
        let mut next_only = cx.step.clone();
        let next_names: Vec<String> = cx
            .scan
            .states
            .iter()
            .map(|s| TttScan::next_output_name(s))
            .collect();
        next_only.retain_outputs(|o| next_names.contains(&o.name));
        let mut checkpoints = Vec::with_capacity(cx.state_shapes.len());
        let mut held_states = Vec::with_capacity(cx.state_shapes.len());
        for (s, shape) in cx.state_shapes.iter().enumerate() {
            let name = cx.scan.states.get(s).cloned().unwrap_or_default();
            let mut ck = vec![ngroups];
            ck.extend_from_slice(shape);
            checkpoints.push(self.buffer(
                format!("{prefix}checkpoints_{name}"),
                BufferKind::Temp,
                MemorySpace::Local,
                &ck,
            ));
            let mut gr = vec![held];
            gr.extend_from_slice(shape);
            held_states.push(self.buffer(
                format!("{prefix}group_{name}"),
                BufferKind::Temp,
                MemorySpace::Local,
                &gr,
            ));
        }
        let copy_states = |l: &mut Lowerer,
                           from: &[BufId],
                           from_at: &Index,
                           to: &[BufId],
                           to_at: &Index,
                           out: &mut Vec<Stmt>| {
            for (s, shape) in cx.state_shapes.iter().enumerate() {
                let src = state_at(from[s], shape, from_at.clone()).val(shape);
                l.materialize(&src, &state_at(to[s], shape, to_at.clone()), out);
            }
        };

        // 1. Forward: the state at the start of every group.
        let theta = self.load_states(sc, cx.id, cx.scan, &cx.slices, &cx.state_shapes, cb)?;
        let theta_bufs: Vec<BufId> = theta.iter().map(|d| d.buf).collect();
        if ngroups > 1 {
            let g = self.var();
            let j = self.var();
            let mut gb = Vec::new();
            copy_states(
                self,
                &theta_bufs,
                &Index::Const(0),
                &checkpoints,
                &Index::Var(g),
                &mut gb,
            );
            let m = Index::sum(Index::scaled(Index::Var(g), group as i64), Index::Var(j));
            let t0 = ix_mul(m, k_max as i64);
            let states: Vec<Val> = theta
                .iter()
                .zip(&cx.state_shapes)
                .map(|(d, s)| d.val(s))
                .collect();
            let mut nexts = Vec::with_capacity(theta.len());
            for (s, shape) in cx.state_shapes.iter().enumerate() {
                nexts.push(self.buffer(
                    format!("{prefix}fwd/next{s}"),
                    BufferKind::Temp,
                    MemorySpace::Local,
                    shape,
                ));
            }
            let next_dests: Vec<Dest> = nexts
                .iter()
                .map(|&b| Dest {
                    buf: b,
                    offset: Index::Const(0),
                })
                .collect();
            let mut jb =
                self.lower_next(sc, cx, &next_only, k_max, &t0, states, &next_dests, "fwd")?;
            // Into the running state: in place where the step allows it (`in_place.rs`), else
            // copied.
            for (s, shape) in cx.state_shapes.iter().enumerate() {
                let len = shape.iter().product();
                if !super::in_place::write_in_place(&mut jb, nexts[s], theta_bufs[s], len) {
                    let src = state_at(nexts[s], shape, Index::Const(0)).val(shape);
                    self.materialize(
                        &src,
                        &state_at(theta_bufs[s], shape, Index::Const(0)),
                        &mut jb,
                    );
                }
            }
            gb.push(Stmt::counted_loop(j, group, Schedule::Serial, jb));
            cb.push(Stmt::counted_loop(g, ngroups - 1, Schedule::Serial, gb));
        }
        copy_states(
            self,
            &theta_bufs,
            &Index::Const(0),
            &checkpoints,
            &Index::Const(ngroups as i64 - 1),
            cb,
        );

        // 2. The last group first (it ends the sequence): the remainder, then its full
        //    mini-batches in reverse.
        let last = ngroups - 1;
        let m0 = last * group;
        let in_last = nmb - m0;
        let g = Index::Const(last as i64);
        self.recompute(
            sc,
            cx,
            &next_only,
            (&checkpoints, &held_states),
            (&g, group),
            in_last,
            cb,
        )?;
        let full_in_last = in_last - usize::from(rem > 0);
        if rem > 0 {
            let j = Index::Const(in_last as i64 - 1);
            let m = Index::Const(nmb as i64 - 1);
            cb.extend(self.lower_vjp_step(sc, cx, &held_states, &j, &m, rem)?);
        }
        if full_in_last > 0 {
            let jr = self.var();
            let j = reversed(jr, full_in_last);
            let m = Index::sum(Index::Const(m0 as i64), j.clone());
            let jb = self.lower_vjp_step(sc, cx, &held_states, &j, &m, k_max)?;
            cb.push(Stmt::counted_loop(jr, full_in_last, Schedule::Serial, jb));
        }
        // 3. The full groups before it, in reverse.
        if ngroups > 1 {
            let gi = self.var();
            let g = reversed(gi, ngroups - 1);
            let mut gb = Vec::new();
            self.recompute(
                sc,
                cx,
                &next_only,
                (&checkpoints, &held_states),
                (&g, group),
                group,
                &mut gb,
            )?;
            let jr = self.var();
            let j = reversed(jr, group);
            let m = Index::sum(ix_mul(g.clone(), group as i64), j.clone());
            let jb = self.lower_vjp_step(sc, cx, &held_states, &j, &m, k_max)?;
            gb.push(Stmt::counted_loop(jr, group, Schedule::Serial, jb));
            cb.push(Stmt::counted_loop(gi, ngroups - 1, Schedule::Serial, gb));
        }

        Ok(())
    }

    /// The states of the `len` mini-batches of group `g` (of `group` mini-batches; full ones
    /// only are stepped over):
    /// the group's checkpoint into position 0 of the group buffer, then step `j` from
    /// position `j` into `j + 1`.
    #[allow(clippy::too_many_arguments)]
    fn recompute(
        &mut self,
        sc: &Scope,
        cx: &VjpCx,
        next_only: &Graph,
        (checkpoints, held): (&[BufId], &[BufId]),
        (g, group): (&Index, usize),
        len: usize,
        out: &mut Vec<Stmt>,
    ) -> Res<()> {
        for (s, shape) in cx.state_shapes.iter().enumerate() {
            let src = state_at(checkpoints[s], shape, g.clone()).val(shape);
            self.materialize(&src, &state_at(held[s], shape, Index::Const(0)), out);
        }
        if len <= 1 {
            return Ok(());
        }
        let j = self.var();
        let m = Index::sum(ix_mul(g.clone(), group as i64), Index::Var(j));
        let t0 = ix_mul(m, cx.k_max as i64);
        let states: Vec<Val> = cx
            .state_shapes
            .iter()
            .enumerate()
            .map(|(s, shape)| state_at(held[s], shape, Index::Var(j)).val(shape))
            .collect();
        let dests: Vec<Dest> = cx
            .state_shapes
            .iter()
            .enumerate()
            .map(|(s, shape)| state_at(held[s], shape, Index::sum(Index::Var(j), Index::Const(1))))
            .collect();
        let jb = self.lower_next(sc, cx, next_only, cx.k_max, &t0, states, &dests, "re")?;
        out.push(Stmt::counted_loop(j, len - 1, Schedule::Serial, jb));
        Ok(())
    }

    /// The step graph `next_only` (outputs `next_<state>` only) for the mini-batch of `k`
    /// tokens at token `t0` from `states`, its outputs into `dests` (one per state).
    #[allow(clippy::too_many_arguments)]
    fn lower_next(
        &mut self,
        sc: &Scope,
        cx: &VjpCx,
        next_only: &Graph,
        k: usize,
        t0: &Index,
        states: Vec<Val>,
        dests: &[Dest],
        what: &str,
    ) -> Res<Vec<Stmt>> {
        let id = cx.id;
        let bind = BTreeMap::from([(MINI_BATCH_DIM.to_string(), k)]);
        let specialized = specialize_graph(next_only, &bind);
        let inputs = cx.blocks().inputs(sc, states, k, t0)?;
        let mut out_dests = Vec::with_capacity(specialized.outputs().len());
        for o in specialized.outputs() {
            let s = cx
                .scan
                .states
                .iter()
                .position(|s| TttScan::next_output_name(s) == o.name)
                .ok_or_else(|| sc.invalid_at(id, format!("step output `{}`", o.name)))?;
            out_dests.push(Some(dests[s].clone()));
        }
        let mut sb = Vec::new();
        self.lower_graph(
            GraphJob {
                graph: &specialized,
                path: format!("{}/ttt_vjp%{}/step[$k={k}]", sc.path, id.index()),
                prefix: format!("ttt_vjp%{}/{what}/k{k}/", id.index()),
                space: MemorySpace::Local,
                inputs,
                dests: out_dests,
            },
            &mut sb,
        )?;
        Ok(sb)
    }

    /// `step_vjp` on mini-batch `m` (`k` tokens) from the state at position `j` of the group
    /// buffer: the state's cotangent updated, the params' accumulated, the sequence operands'
    /// rows written.
    fn lower_vjp_step(
        &mut self,
        sc: &Scope,
        cx: &VjpCx,
        held: &[BufId],
        j: &Index,
        m: &Index,
        k: usize,
    ) -> Res<Vec<Stmt>> {
        let id = cx.id;
        let t0 = ix_mul(m.clone(), cx.k_max as i64);
        let bind = BTreeMap::from([(MINI_BATCH_DIM.to_string(), k)]);
        let specialized = specialize_graph(cx.step_vjp, &bind);
        let states: Vec<Val> = cx
            .state_shapes
            .iter()
            .enumerate()
            .map(|(s, shape)| state_at(held[s], shape, j.clone()).val(shape))
            .collect();
        let mut inputs = cx.blocks().inputs(sc, states, k, &t0)?;
        let ct = &cx.ct_out;
        let (Some(_), Some(&s0)) = (ct.shape.first(), ct.strides.first()) else {
            return Err(sc.invalid_at(id, "the output's cotangent has no sequence axis"));
        };
        let mut ct_shape = ct.shape.clone();
        ct_shape[0] = k;
        inputs.push(Val {
            shape: ct_shape,
            lazy: Lazy::View(View {
                buf: ct.buf,
                offset: Index::sum(ct.offset.clone(), ix_mul(t0.clone(), s0)),
                strides: ct.strides.clone(),
            }),
        });
        for (d, shape) in cx.d_states.iter().zip(&cx.state_shapes) {
            inputs.push(d.val(shape));
        }
        let prefix = format!("ttt_vjp%{}/vjp/k{k}/", id.index());
        let mut dests = Vec::with_capacity(cx.slices.len());
        // After the step: temporaries copied into the state cotangents, or added to accumulators.
        let mut after: Vec<(Dest, Dest, Vec<usize>, bool)> = Vec::new();
        for (i, o) in specialized.outputs().iter().enumerate() {
            let shape = known_shape(&specialized, o.node, &sc.path)?;
            let kind = cx.scan.operand_kind(i);
            let want: Vec<usize> = match kind {
                OperandKind::State(s) => cx.state_shapes[s].clone(),
                OperandKind::Param(_) => cx.slices[i].shape.clone(),
                _ if cx.accumulated[i] => vec![k],
                _ => {
                    let mut s = cx.slices[i].shape.clone();
                    if let Some(first) = s.first_mut() {
                        *first = k;
                    }
                    s
                }
            };
            if shape != want {
                return Err(sc.invalid_at(
                    id,
                    format!(
                        "step_vjp output `{}` is {shape:?}, expected {want:?}",
                        o.name
                    ),
                ));
            }
            match kind {
                OperandKind::State(s) => {
                    let tmp = self.local(format!("{prefix}{}", o.name), &shape);
                    dests.push(Some(tmp.clone()));
                    after.push((tmp, cx.d_states[s].clone(), shape, false));
                }
                _ if cx.accumulated[i] => {
                    let tmp = self.local(format!("{prefix}{}", o.name), &shape);
                    dests.push(Some(tmp.clone()));
                    after.push((tmp, cx.grads[i].clone(), shape, true));
                }
                _ => {
                    let row: usize = shape[1..].iter().product();
                    dests.push(Some(Dest {
                        buf: cx.grads[i].buf,
                        offset: Index::sum(
                            cx.grads[i].offset.clone(),
                            ix_mul(t0.clone(), row as i64),
                        ),
                    }));
                }
            }
        }
        let mut sb = Vec::new();
        self.lower_graph(
            GraphJob {
                graph: &specialized,
                path: format!("{}/ttt_vjp%{}/step_vjp[$k={k}]", sc.path, id.index()),
                prefix,
                space: MemorySpace::Local,
                inputs,
                dests,
            },
            &mut sb,
        )?;
        for (tmp, to, shape, add) in after {
            // A state's cotangent over the old one where the step allows it (`in_place.rs`).
            let whole = matches!(
                (&tmp.offset, &to.offset),
                (Index::Const(0), Index::Const(0))
            );
            let len = shape.iter().product();
            if !add && whole && super::in_place::write_in_place(&mut sb, tmp.buf, to.buf, len) {
                continue;
            }
            let v = if add {
                Val {
                    shape: shape.clone(),
                    lazy: Lazy::Binary(
                        BinaryOp::Add,
                        Box::new(to.val(&shape)),
                        Box::new(tmp.val(&shape)),
                    ),
                }
            } else {
                tmp.val(&shape)
            };
            self.materialize(&v, &to, &mut sb);
        }
        Ok(sb)
    }

    /// A fresh `Local` temporary.
    fn local(&mut self, name: String, shape: &[usize]) -> Dest {
        let buf = self.buffer(name, BufferKind::Temp, MemorySpace::Local, shape);
        Dest {
            buf,
            offset: Index::Const(0),
        }
    }
}
