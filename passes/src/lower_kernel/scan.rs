//! The `ttt` scan: a parallel loop over (batch × heads) slices whose body keeps the states in
//! `Local` buffers, runs the step graph for every full mini-batch and for the remainder, and
//! writes the output rows in place.

use super::*;

impl Lowerer {
    /// Lowers scan node `id` into one `Parallel` loop over its slices (appended to `body`);
    /// returns its results: the output sequence and the final states.
    pub(super) fn lower_ttt(
        &mut self,
        sc: &mut Scope,
        id: NodeId,
        scan: &TttScan,
        operands: &[NodeId],
        body: &mut Vec<Stmt>,
    ) -> Res<Vec<Val>> {
        let (step, k_max) = check_scan(sc, id, scan, operands)?;
        let (views, per_ext) = self.scan_operands(sc, id, scan, operands, body)?;
        let count = numel(&per_ext).ok_or_else(|| sc.invalid_at(id, "too many slices"))?;
        let nper = per_ext.len();
        let result_ty = scan_result_types(sc, id, scan, &per_ext)?;
        let seq_len = result_ty[0][nper];
        let row: usize = result_ty[0][nper + 1..].iter().product();
        let state_shapes: Vec<Vec<usize>> =
            result_ty[1..].iter().map(|s| s[nper..].to_vec()).collect();
        if k_max == 0 && seq_len > 0 {
            return Err(sc.invalid_at(id, "the mini-batch size is 0"));
        }
        let (full, rem) = match k_max {
            0 => (0, 0),
            k => (seq_len / k, seq_len % k),
        };
        let results = self.scan_results(sc, id, &result_ty);

        // The slice loop.
        let c = self.var();
        let cvar = Index::Var(c);
        let slices = slice_operands(&views, scan, &slice_indices(&cvar, &per_ext));
        let mut cb = Vec::new();
        let states = self.load_states(sc, id, scan, &slices, &state_shapes, &mut cb)?;
        let (out_index, next_index) = step_outputs(sc, id, scan, step)?;

        // Full mini-batches in a serial loop, then the remainder.
        let cx = StepCx {
            id,
            scan,
            step,
            slices,
            states,
            state_shapes,
            out_seq: Dest {
                buf: results[0].buf,
                offset: Index::sum(
                    results[0].offset.clone(),
                    Index::scaled(cvar.clone(), (seq_len * row) as i64),
                ),
            },
            row,
            seq_len,
            k_max,
            out_index,
            next_index,
        };
        if full > 0 {
            let mb = self.var();
            let t0 = Index::scaled(Index::Var(mb), k_max as i64);
            let sb = self.lower_step(sc, &cx, k_max, t0)?;
            cb.push(Stmt::counted_loop(mb, full, Schedule::Serial, sb));
        }
        if rem > 0 {
            let t0 = Index::Const((full * k_max) as i64);
            cb.extend(self.lower_step(sc, &cx, rem, t0)?);
        }

        // The final states.
        for (s, state) in cx.states.iter().enumerate() {
            let size: usize = cx.state_shapes[s].iter().product();
            let dest = Dest {
                buf: results[1 + s].buf,
                offset: Index::sum(
                    results[1 + s].offset.clone(),
                    Index::scaled(cvar.clone(), size as i64),
                ),
            };
            self.materialize(&state.val(&cx.state_shapes[s]), &dest, &mut cb);
        }
        if count > 0 {
            body.push(Stmt::counted_loop(c, count, Schedule::Parallel, cb));
        }
        Ok(results
            .iter()
            .zip(&result_ty)
            .map(|(d, shape)| d.val(shape))
            .collect())
    }

    /// The scan's operands as views, and the extents of the mapped dims.
    #[allow(clippy::type_complexity)]
    pub(super) fn scan_operands(
        &mut self,
        sc: &Scope,
        id: NodeId,
        scan: &TttScan,
        operands: &[NodeId],
        body: &mut Vec<Stmt>,
    ) -> Res<(Vec<(View, Vec<usize>)>, Vec<usize>)> {
        let mut views = Vec::with_capacity(operands.len());
        let mut per_ext: Vec<Option<usize>> = vec![None; scan.per.len()];
        for (i, (&o, axes)) in operands.iter().zip(&scan.axes).enumerate() {
            let v = sc.tensor(o, id)?;
            if v.shape.len() != axes.per.len() {
                return Err(sc.invalid_at(
                    id,
                    format!(
                        "operand {i} has shape {:?} but an axis map of rank {}",
                        v.shape,
                        axes.per.len()
                    ),
                ));
            }
            for (&d, p) in v.shape.iter().zip(&axes.per) {
                let Some(p) = *p else { continue };
                match per_ext.get_mut(p) {
                    Some(slot @ None) => *slot = Some(d),
                    Some(Some(prev)) if *prev == d => {}
                    _ => {
                        return Err(sc.invalid_at(
                            id,
                            format!("operand {i} maps an axis of extent {d} inconsistently"),
                        ))
                    }
                }
            }
            let what = format!("%{} operand{i}", id.index());
            views.push(self.view_of(sc, v, &what, body));
        }
        let per_ext = per_ext
            .into_iter()
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| sc.invalid_at(id, "a mapped dim is in no operand"))?;
        Ok((views, per_ext))
    }

    /// The result buffers: a graph output when a `get` of the element is one, else a temporary.
    pub(super) fn scan_results(
        &mut self,
        sc: &Scope,
        id: NodeId,
        result_ty: &[Vec<usize>],
    ) -> Vec<Dest> {
        let graph = sc.graph;
        let mut results = Vec::with_capacity(result_ty.len());
        for (i, shape) in result_ty.iter().enumerate() {
            let taken = graph
                .users(id)
                .into_iter()
                .find_map(|u| match graph.node(u).op {
                    Op::Get { index } if index == i => sc.dests.get(&u).cloned(),
                    _ => None,
                });
            let dest = match taken {
                Some(d) => d,
                None => self.temp(sc, format!("%{} ttt.{i}", id.index()), shape),
            };
            results.push(dest);
        }
        results
    }

    /// The `Local` state buffers of one slice, initialised (statements appended to `cb`) from
    /// the initial states' slices.
    pub(super) fn load_states(
        &mut self,
        sc: &Scope,
        id: NodeId,
        scan: &TttScan,
        slices: &[Slice],
        state_shapes: &[Vec<usize>],
        cb: &mut Vec<Stmt>,
    ) -> Res<Vec<Dest>> {
        let states: Vec<Dest> = state_shapes
            .iter()
            .enumerate()
            .map(|(s, shape)| {
                let name = scan.states.get(s).cloned().unwrap_or_default();
                let buf = self.buffer(
                    format!("ttt%{} {name}", id.index()),
                    BufferKind::Temp,
                    MemorySpace::Local,
                    shape,
                );
                Dest {
                    buf,
                    offset: Index::Const(0),
                }
            })
            .collect();
        for (s, dest) in states.iter().enumerate() {
            let Slice {
                buf,
                offset,
                shape,
                strides,
            } = slices[s].clone();
            if shape != state_shapes[s] {
                return Err(sc.invalid_at(
                    id,
                    format!(
                        "state {s} slices to {shape:?}, the result type says {:?}",
                        state_shapes[s]
                    ),
                ));
            }
            let v = Val {
                shape,
                lazy: Lazy::View(View {
                    buf,
                    offset,
                    strides,
                }),
            };
            self.materialize(&v, dest, cb);
        }
        Ok(states)
    }

    /// One mini-batch of `k` tokens starting at token `t0` of the current slice: the step graph
    /// specialized to `$k = k` on views of the operands, `out` written into the output
    /// sequence, the next states through `Local` temporaries into the state buffers.
    pub(super) fn lower_step(
        &mut self,
        sc: &Scope,
        cx: &StepCx,
        k: usize,
        t0: Index,
    ) -> Res<Vec<Stmt>> {
        let id = cx.id;
        let bind = BTreeMap::from([(MINI_BATCH_DIM.to_string(), k)]);
        let specialized = specialize_graph(cx.step, &bind);
        let path = format!("{}/ttt%{}/step[$k={k}]", sc.path, id.index());
        let prefix = format!("ttt%{}/k{k}/", id.index());
        let states = cx
            .states
            .iter()
            .zip(&cx.state_shapes)
            .map(|(d, shape)| d.val(shape))
            .collect();
        let inputs = cx.blocks().inputs(sc, states, k, &t0)?;
        let mut dests: Vec<Option<Dest>> = vec![None; specialized.outputs().len()];
        if let Some(d) = dests.get_mut(cx.out_index) {
            *d = Some(Dest {
                buf: cx.out_seq.buf,
                offset: Index::sum(cx.out_seq.offset.clone(), ix_mul(t0, cx.row as i64)),
            });
        }
        let mut nexts = Vec::with_capacity(cx.states.len());
        for (s, &pos) in cx.next_index.iter().enumerate() {
            let name = cx.scan.states.get(s).cloned().unwrap_or_default();
            let buf = self.buffer(
                format!("{prefix}next_{name}"),
                BufferKind::Temp,
                MemorySpace::Local,
                &cx.state_shapes[s],
            );
            let d = Dest {
                buf,
                offset: Index::Const(0),
            };
            if let Some(slot) = dests.get_mut(pos) {
                *slot = Some(d.clone());
            }
            nexts.push(d);
        }
        let mut sb = Vec::new();
        self.lower_graph(
            GraphJob {
                graph: &specialized,
                path,
                prefix,
                space: MemorySpace::Local,
                inputs,
                dests,
            },
            &mut sb,
        )?;
        for (s, next) in nexts.iter().enumerate() {
            let shape = &cx.state_shapes[s];
            let len = shape.iter().product();
            let state = &cx.states[s];
            let whole = matches!(
                (&next.offset, &state.offset),
                (Index::Const(0), Index::Const(0))
            );
            if !(whole && in_place::write_in_place(&mut sb, next.buf, state.buf, len)) {
                self.materialize(&next.val(shape), state, &mut sb);
            }
        }
        Ok(sb)
    }
}

/// What the inputs of a scan's step graphs are made of: the operands' slices, and the scan's
/// sequence length and mini-batch size.
pub(super) struct Blocks<'a> {
    pub(super) id: NodeId,
    pub(super) scan: &'a TttScan,
    pub(super) slices: &'a [Slice],
    pub(super) seq_len: usize,
    pub(super) k_max: usize,
}

impl Blocks<'_> {
    /// The step graph's inputs for the mini-batch of `k` tokens starting at token `t0` of the
    /// slice: `states` for the states, the params' slices, and views of the blocks of the
    /// sequence operands (`token_eta[0..k]` when it is per position).
    pub(super) fn inputs(
        &self,
        sc: &Scope,
        states: Vec<Val>,
        k: usize,
        t0: &Index,
    ) -> Res<Vec<Val>> {
        let id = self.id;
        let mut states = states.into_iter();
        let mut inputs = Vec::with_capacity(self.slices.len());
        for (i, sl) in self.slices.iter().enumerate() {
            let view = |shape: Vec<usize>, offset: Index| Val {
                shape,
                lazy: Lazy::View(View {
                    buf: sl.buf,
                    offset,
                    strides: sl.strides.clone(),
                }),
            };
            let v = match self.scan.operand_kind(i) {
                OperandKind::State(s) => states
                    .next()
                    .ok_or_else(|| sc.invalid_at(id, format!("internal: no value of state {s}")))?,
                OperandKind::Param(_) => view(sl.shape.clone(), sl.offset.clone()),
                OperandKind::TokenEta if self.scan.token_eta == TokenEtaForm::PerPosition => {
                    if sl.shape != [self.k_max] {
                        return Err(sc.invalid_at(
                            id,
                            format!(
                                "token_eta slices to {:?}, expected [{}]",
                                sl.shape, self.k_max
                            ),
                        ));
                    }
                    view(vec![k], sl.offset.clone())
                }
                OperandKind::LossArg(_)
                | OperandKind::OutArg(_)
                | OperandKind::Lr
                | OperandKind::Decay
                | OperandKind::TokenEta => {
                    let (Some(&l), Some(&s0)) = (sl.shape.first(), sl.strides.first()) else {
                        return Err(
                            sc.invalid_at(id, format!("sequence operand {i} has no sequence axis"))
                        );
                    };
                    if l != self.seq_len {
                        return Err(sc.invalid_at(
                            id,
                            format!("operand {i} has {l} tokens, expected {}", self.seq_len),
                        ));
                    }
                    let mut shape = sl.shape.clone();
                    shape[0] = k;
                    view(shape, Index::sum(sl.offset.clone(), ix_mul(t0.clone(), s0)))
                }
            };
            inputs.push(v);
        }
        Ok(inputs)
    }
}

/// One scan operand's slice: the operand's buffer, the slice's offset (depending on the slice
/// loop's variable), and the remaining axes.
#[derive(Clone, Debug)]
pub(super) struct Slice {
    pub(super) buf: BufId,
    pub(super) offset: Index,
    pub(super) shape: Vec<usize>,
    pub(super) strides: Vec<i64>,
}

/// What lowering one mini-batch of a scan needs.
pub(super) struct StepCx<'s> {
    pub(super) id: NodeId,
    pub(super) scan: &'s TttScan,
    pub(super) step: &'s Graph,
    /// Every operand's slice.
    pub(super) slices: Vec<Slice>,
    /// The `Local` state buffers and their shapes.
    pub(super) states: Vec<Dest>,
    pub(super) state_shapes: Vec<Vec<usize>>,
    /// The slice's output sequence `[L, ...]`.
    pub(super) out_seq: Dest,
    /// Elements of one output row.
    pub(super) row: usize,
    pub(super) seq_len: usize,
    pub(super) k_max: usize,
    /// Positions of `out` and of every `next_<state>` among the step's outputs.
    pub(super) out_index: usize,
    pub(super) next_index: Vec<usize>,
}

impl StepCx<'_> {
    pub(super) fn blocks(&self) -> Blocks<'_> {
        Blocks {
            id: self.id,
            scan: self.scan,
            slices: &self.slices,
            seq_len: self.seq_len,
            k_max: self.k_max,
        }
    }
}

/// Position of the step graph's output `name`.
pub(super) fn step_output(step: &Graph, name: &str) -> Option<usize> {
    step.outputs().iter().position(|o| o.name == name)
}

/// Checks scan node `id` against its operands; returns its step graph and mini-batch size.
pub(super) fn check_scan<'s>(
    sc: &Scope,
    id: NodeId,
    scan: &'s TttScan,
    operands: &[NodeId],
) -> Res<(&'s Graph, usize)> {
    let graph = sc.graph;
    if sc.space != MemorySpace::Global {
        return Err(LowerKernelError::Unsupported {
            graph: sc.path.clone(),
            node: describe(graph, id),
            message: "a scan inside a scan".into(),
        });
    }
    let step = scan
        .step
        .as_ref()
        .ok_or_else(|| LowerKernelError::MissingStep {
            graph: sc.path.clone(),
            node: describe(graph, id),
        })?;
    let n_ops = scan.operand_count();
    if operands.len() != n_ops || scan.axes.len() != n_ops {
        return Err(sc.invalid_at(
            id,
            format!(
                "{} operand(s) and {} axis map(s), expected {n_ops}",
                operands.len(),
                scan.axes.len()
            ),
        ));
    }
    if step.inputs().len() != n_ops {
        return Err(sc.invalid_at(
            id,
            format!(
                "the step graph takes {} input(s), expected {n_ops}",
                step.inputs().len()
            ),
        ));
    }
    let k_max = scan
        .mini_batch
        .known()
        .ok_or_else(|| LowerKernelError::UnboundDim {
            graph: sc.path.clone(),
            node: describe(graph, id),
            symbol: scan.mini_batch.to_string(),
        })?;
    if k_max > scan.max_mini_batch() {
        return Err(sc.invalid_at(
            id,
            format!(
                "this momentum_gd step runs mini-batches of at most {} tokens, not {k_max}",
                scan.max_mini_batch()
            ),
        ));
    }
    Ok((step, k_max))
}

/// The scan's result shapes, `[per..., L, rest...]` and `[per..., state...]`, checked against
/// the mapped extents `per_ext`.
fn scan_result_types(
    sc: &Scope,
    id: NodeId,
    scan: &TttScan,
    per_ext: &[usize],
) -> Res<Vec<Vec<usize>>> {
    let graph = sc.graph;
    let nper = per_ext.len();
    let result_ty: Vec<Vec<usize>> = match &graph.node(id).ty {
        NodeType::Tuple(ts) => ts
            .iter()
            .map(|t| known_dims(&t.shape, graph, id, &sc.path))
            .collect::<Res<_>>()?,
        NodeType::Tensor(_) => return Err(sc.invalid_at(id, "the scan's type is not a tuple")),
    };
    if result_ty.len() != 1 + scan.states.len()
        || result_ty
            .iter()
            .any(|s| s.len() < nper || s[..nper] != per_ext[..])
        || result_ty[0].len() < nper + 1
    {
        return Err(sc.invalid_at(
            id,
            format!("result type {result_ty:?} for mapped extents {per_ext:?}"),
        ));
    }
    Ok(result_ty)
}

/// The index of every mapped dim in slice `c` (the slice index decomposed with `/` and `%`).
pub(super) fn slice_indices(c: &Index, per_ext: &[usize]) -> Vec<Index> {
    (0..per_ext.len())
        .map(|p| {
            let inner: usize = per_ext[p + 1..].iter().product();
            let q = ix_div(c.clone(), inner as i64);
            if p == 0 {
                q
            } else {
                ix_rem(q, per_ext[p] as i64)
            }
        })
        .collect()
}

/// Every operand's slice at the mapped dims' indices `per_idx`.
pub(super) fn slice_operands(
    views: &[(View, Vec<usize>)],
    scan: &TttScan,
    per_idx: &[Index],
) -> Vec<Slice> {
    views
        .iter()
        .zip(&scan.axes)
        .map(|((v, shape), axes)| slice_of(v, shape, &axes.per, per_idx))
        .collect()
}

/// The slice of view `v` (of shape `shape`) whose axes mapped by `per` (`Some(p)`: mapped dim
/// `p`) are at the indices `per_idx`.
pub(super) fn slice_of(
    v: &View,
    shape: &[usize],
    per: &[Option<usize>],
    per_idx: &[Index],
) -> Slice {
    let mut offset = v.offset.clone();
    let (mut s, mut st) = (Vec::new(), Vec::new());
    for ((&d, &stride), p) in shape.iter().zip(&v.strides).zip(per) {
        match p {
            Some(p) => {
                let i = per_idx.get(*p).cloned().unwrap_or(Index::Const(0));
                offset = Index::sum(offset, ix_mul(i, stride));
            }
            None => {
                s.push(d);
                st.push(stride);
            }
        }
    }
    Slice {
        buf: v.buf,
        offset,
        shape: s,
        strides: st,
    }
}

/// Positions of `out` and of every `next_<state>` among the step graph's outputs.
pub(super) fn step_outputs(
    sc: &Scope,
    id: NodeId,
    scan: &TttScan,
    step: &Graph,
) -> Res<(usize, Vec<usize>)> {
    let out_index = step_output(step, "out")
        .ok_or_else(|| sc.invalid_at(id, "the step graph has no output `out`"))?;
    let next_index = scan
        .states
        .iter()
        .map(|s| {
            let name = TttScan::next_output_name(s);
            step_output(step, &name)
                .ok_or_else(|| sc.invalid_at(id, format!("the step graph has no output `{name}`")))
        })
        .collect::<Res<Vec<usize>>>()?;
    Ok((out_index, next_index))
}
