//! Lowering one graph: its scope (values of lowered nodes, users, destinations), the program
//! being built (buffers, loop variables), and the walk over the graph's nodes.

use super::*;

/// One graph to lower: its inputs' values and where its outputs go.
pub(super) struct GraphJob<'g> {
    pub(super) graph: &'g Graph,
    /// The graph's name in errors.
    pub(super) path: String,
    /// Prefix of its temporaries' names.
    pub(super) prefix: String,
    /// Where its temporaries live.
    pub(super) space: MemorySpace,
    /// One value per graph input.
    pub(super) inputs: Vec<Val>,
    /// Per graph output: where it must end up (row-major), if anywhere.
    pub(super) dests: Vec<Option<Dest>>,
}

/// The state of lowering one graph.
pub(super) struct Scope<'g> {
    pub(super) graph: &'g Graph,
    pub(super) path: String,
    pub(super) prefix: String,
    pub(super) space: MemorySpace,
    pub(super) vals: HashMap<NodeId, NodeVal>,
    pub(super) users: HashMap<NodeId, usize>,
    /// The nodes read only transposed (see [`Scope::read_only_transposed`]).
    pub(super) read_transposed: std::collections::HashSet<NodeId>,
    pub(super) dests: HashMap<NodeId, Dest>,
    /// Row-major copies of strided right operands of matmuls, by the operand's node: a
    /// transposed weight used by several products (a step's VJP reads `Wᵀ` in several) is
    /// copied once per graph. Nodes are values, and the buffers they view are not written while
    /// the graph runs (outputs go to their own destinations), so a copy stays valid.
    pub(super) contiguous: std::cell::RefCell<HashMap<NodeId, Val>>,
}

impl Scope<'_> {
    pub(super) fn invalid(&self, message: impl Into<String>) -> LowerKernelError {
        LowerKernelError::Invalid {
            graph: self.path.clone(),
            message: message.into(),
        }
    }

    pub(super) fn invalid_at(
        &self,
        id: NodeId,
        message: impl std::fmt::Display,
    ) -> LowerKernelError {
        self.invalid(format!("{}: {message}", describe(self.graph, id)))
    }

    /// Whether node `id` is read only transposed: every use of it is a `transpose` of it, or
    /// a unary elementwise op used once and itself read only transposed (`transpose(neg(x))`:
    /// the op stays lazy and is read through the same transpose). A graph output is a use of
    /// its own.
    pub(super) fn read_only_transposed(&self, id: NodeId) -> bool {
        self.read_transposed.contains(&id)
    }

    pub(super) fn shape(&self, id: NodeId) -> Res<Vec<usize>> {
        known_shape(self.graph, id, &self.path)
    }

    pub(super) fn tensor(&self, id: NodeId, user: NodeId) -> Res<Val> {
        match self.vals.get(&id) {
            Some(NodeVal::Tensor(v)) => Ok(v.clone()),
            Some(NodeVal::Tuple(_)) => {
                Err(self.invalid_at(user, format!("operand %{} is a tuple", id.index())))
            }
            None => Err(self.invalid_at(user, format!("operand %{} was not lowered", id.index()))),
        }
    }
}

/// The program being built.
pub(super) struct Lowerer {
    pub(super) options: LowerOptions,
    pub(super) dtype: DType,
    pub(super) buffers: Vec<Buffer>,
    pub(super) vars: u32,
}

impl Lowerer {
    pub(super) fn buffer(
        &mut self,
        name: String,
        kind: BufferKind,
        space: MemorySpace,
        shape: &[usize],
    ) -> BufId {
        self.buffers.push(Buffer {
            name,
            kind,
            space,
            layout: Layout::row_major(shape),
        });
        BufId(self.buffers.len() as u32 - 1)
    }

    pub(super) fn var(&mut self) -> VarId {
        self.vars += 1;
        VarId(self.vars - 1)
    }

    /// One loop per extent, except that extent-1 axes get the constant index 0 and no loop.
    pub(super) fn loops(&mut self, extents: &[usize]) -> (Vec<Index>, Vec<(VarId, usize)>) {
        let mut idx = Vec::with_capacity(extents.len());
        let mut loops = Vec::new();
        for &e in extents {
            if e == 1 {
                idx.push(Index::Const(0));
            } else {
                let v = self.var();
                idx.push(Index::Var(v));
                loops.push((v, e));
            }
        }
        (idx, loops)
    }

    /// A fresh row-major temporary in the scope's memory space.
    pub(super) fn temp(&mut self, sc: &Scope, name: String, shape: &[usize]) -> Dest {
        let buf = self.buffer(
            format!("{}{name}", sc.prefix),
            BufferKind::Temp,
            sc.space,
            shape,
        );
        Dest {
            buf,
            offset: Index::Const(0),
        }
    }

    /// Where node `id` is computed: its output destination, or a fresh temporary.
    pub(super) fn dest_for(&mut self, sc: &Scope, id: NodeId, shape: &[usize]) -> Dest {
        match sc.dests.get(&id) {
            Some(d) => d.clone(),
            None => {
                let name = format!("%{} {}", id.index(), sc.graph.node(id).op.name());
                self.temp(sc, name, shape)
            }
        }
    }

    /// Stores every element of `v` into `dest` with a loop nest.
    pub(super) fn materialize(&mut self, v: &Val, dest: &Dest, body: &mut Vec<Stmt>) {
        let (idx, loops) = self.loops(&v.shape);
        let st = store(dest.buf, dest.at(&v.shape, &idx), v.emit(&idx));
        body.extend(wrap(loops, vec![st]));
    }

    /// `v` as a view, materializing it into a temporary unless it is one.
    pub(super) fn view_of(
        &mut self,
        sc: &Scope,
        v: Val,
        what: &str,
        body: &mut Vec<Stmt>,
    ) -> (View, Vec<usize>) {
        if let Lazy::View(w) = v.lazy {
            return (w, v.shape);
        }
        let dest = self.temp(sc, what.to_string(), &v.shape);
        self.materialize(&v, &dest, body);
        let shape = v.shape;
        let strides = row_major(&shape);
        (
            View {
                buf: dest.buf,
                offset: dest.offset,
                strides,
            },
            shape,
        )
    }

    /// `v` materialized when it is costly to read and would be read more than once per element
    /// of a value of `n` elements.
    pub(super) fn cheap_operand(
        &mut self,
        sc: &Scope,
        v: Val,
        n: usize,
        what: &str,
        body: &mut Vec<Stmt>,
    ) -> Val {
        if v.is_costly() && numel(&v.shape).is_some_and(|m| m < n) {
            let (w, shape) = self.view_of(sc, v, what, body);
            Val {
                shape,
                lazy: Lazy::View(w),
            }
        } else {
            v
        }
    }

    /// Lowers one graph, appending its statements to `body`; every output with a destination
    /// ends up there.
    pub(super) fn lower_graph(&mut self, job: GraphJob<'_>, body: &mut Vec<Stmt>) -> Res<()> {
        let graph = job.graph;
        let mut sc = Scope {
            graph,
            path: job.path,
            prefix: job.prefix,
            space: job.space,
            vals: HashMap::new(),
            users: HashMap::new(),
            read_transposed: Default::default(),
            dests: HashMap::new(),
            contiguous: Default::default(),
        };
        if job.inputs.len() != graph.inputs().len() {
            return Err(sc.invalid(format!(
                "the graph takes {} input(s), {} given",
                graph.inputs().len(),
                job.inputs.len()
            )));
        }
        if job.dests.len() != graph.outputs().len() {
            return Err(sc.invalid("internal: one destination per output expected"));
        }
        for o in graph.outputs() {
            if graph.get(o.node).is_none() {
                return Err(sc.invalid(format!("output `{}` names a missing node", o.name)));
            }
        }
        let order = graph
            .live_order()
            .ok_or_else(|| sc.invalid("the graph has a cycle"))?;
        let mut user_nodes: HashMap<NodeId, Vec<NodeId>> = HashMap::new();
        for &id in &order {
            for o in graph.operands(id) {
                *sc.users.entry(o).or_insert(0) += 1;
                user_nodes.entry(o).or_default().push(id);
            }
        }
        for o in graph.outputs() {
            *sc.users.entry(o.node).or_insert(0) += 1;
        }
        // Users come after their operands in `order`: decided from the last node back.
        for &id in order.iter().rev() {
            let users = user_nodes.get(&id).map_or(&[][..], Vec::as_slice);
            let read_transposed = !users.is_empty()
                && sc.users.get(&id).copied() == Some(users.len())
                && users.iter().all(|&u| match graph.node(u).op {
                    Op::Transpose => true,
                    Op::Unary { .. } => {
                        sc.users.get(&u).copied() == Some(1) && sc.read_transposed.contains(&u)
                    }
                    _ => false,
                });
            if read_transposed {
                sc.read_transposed.insert(id);
            }
        }
        for (o, d) in graph.outputs().iter().zip(&job.dests) {
            if let Some(d) = d {
                sc.dests.entry(o.node).or_insert_with(|| d.clone());
            }
        }
        for (pos, (&id, v)) in graph.inputs().iter().zip(job.inputs).enumerate() {
            let want = sc.shape(id)?;
            if want != v.shape {
                return Err(sc.invalid(format!(
                    "input #{pos} ({}) is {want:?}, given {:?}",
                    describe(graph, id),
                    v.shape
                )));
            }
            sc.vals.insert(id, NodeVal::Tensor(v));
        }
        for &id in &order {
            self.lower_node(&mut sc, id, body)?;
        }
        for (o, d) in graph.outputs().iter().zip(&job.dests) {
            let Some(d) = d else { continue };
            let v = sc.tensor(o.node, o.node)?;
            if !d.holds(&v) {
                self.materialize(&v, d, body);
            }
        }
        Ok(())
    }

    /// Lowers node `id` (its operands are lowered).
    pub(super) fn lower_node(
        &mut self,
        sc: &mut Scope,
        id: NodeId,
        body: &mut Vec<Stmt>,
    ) -> Res<()> {
        if !self.check_node(sc, id)? {
            return Ok(());
        }
        let graph = sc.graph;
        let node = graph.node(id);
        let operands = graph.operands(id);
        match &node.op {
            Op::Ttt(scan) => {
                let vals = self.lower_ttt(sc, id, scan, &operands, body)?;
                sc.vals.insert(id, NodeVal::Tuple(vals));
                return Ok(());
            }
            Op::TttVjp {
                scan,
                checkpoint_every,
            } => {
                let vals = self.lower_ttt_vjp(sc, id, scan, *checkpoint_every, &operands, body)?;
                sc.vals.insert(id, NodeVal::Tuple(vals));
                return Ok(());
            }
            Op::Get { index } => {
                let v = match sc.vals.get(&operands[0]) {
                    Some(NodeVal::Tuple(vs)) => vs.get(*index).cloned(),
                    _ => None,
                };
                let v = v.ok_or_else(|| {
                    sc.invalid_at(id, format!("element {index} of a non-tuple or short tuple"))
                })?;
                sc.vals.insert(id, NodeVal::Tensor(v));
                return Ok(());
            }
            _ => {}
        }
        let shape = sc.shape(id)?;
        let v = match self.lower_elementwise(sc, id, &shape, body)? {
            Some(v) => v,
            None => self.lower_compute(sc, id, &operands, &shape, body)?,
        };
        let v = self.settle(sc, id, v, &shape, body);
        sc.vals.insert(id, NodeVal::Tensor(v));
        Ok(())
    }

    /// Checks node `id`'s element type and operand count; `false` for an input node (its value
    /// is given).
    fn check_node(&self, sc: &Scope, id: NodeId) -> Res<bool> {
        let graph = sc.graph;
        let node = graph.node(id);
        if let Op::Input { .. } = node.op {
            return match sc.vals.contains_key(&id) {
                true => Ok(false),
                false => Err(sc.invalid_at(id, "an input node missing from the input list")),
            };
        }
        if node.ty.tensor().is_some_and(|t| t.dtype != self.dtype)
            || matches!(&node.ty, NodeType::Tuple(ts) if ts.iter().any(|t| t.dtype != self.dtype))
        {
            return Err(LowerKernelError::Unsupported {
                graph: sc.path.clone(),
                node: describe(graph, id),
                message: format!("element types other than the program's {}", self.dtype),
            });
        }
        let operands = graph.operands(id);
        if let Some(n) = node.op.arity() {
            if operands.len() != n {
                return Err(
                    sc.invalid_at(id, format!("takes {n} operand(s), has {}", operands.len()))
                );
            }
        }
        Ok(true)
    }

    /// The value of node `id` of an op that computes into memory: matmuls, reductions, mixes,
    /// slices, shifts and unshifts.
    fn lower_compute(
        &mut self,
        sc: &Scope,
        id: NodeId,
        operands: &[NodeId],
        shape: &[usize],
        body: &mut Vec<Stmt>,
    ) -> Res<Val> {
        let arg = |i: usize| sc.tensor(operands[i], id);
        Ok(match &sc.graph.node(id).op {
            Op::MatMul => self.matmul(sc, id, arg(0)?, arg(1)?, shape, body)?,
            Op::Reduce { fun, axis } => {
                let x = arg(0)?;
                let mut want = x.shape.clone();
                match want.get_mut(*axis) {
                    Some(d) => *d = 1,
                    None => return Err(sc.invalid_at(id, format!("axis {axis} out of range"))),
                }
                if want != shape {
                    return Err(sc.invalid_at(id, format!("operand {:?}", x.shape)));
                }
                let dest = self.dest_for(sc, id, shape);
                self.reduce_into(&x, *axis, *fun, &dest, body);
                dest.val(shape)
            }
            Op::SumTo { .. } => self.sum_to(sc, id, arg(0)?, shape, body)?,
            Op::Mix => self.mix(sc, id, arg(0)?, arg(1)?, shape, body)?,
            Op::MixOuter => self.mix_outer(sc, id, [arg(0)?, arg(1)?, arg(2)?], shape, body)?,
            Op::Gather => self.gather(sc, id, arg(0)?, arg(1)?, shape, body)?,
            Op::ScatterAdd { .. } => self.scatter_add(sc, id, arg(0)?, arg(1)?, shape, body)?,
            Op::Slice { axis, start, .. } => {
                let x = arg(0)?;
                self.slice(sc, id, x, *axis, *start, shape, body)?
            }
            Op::Shift { axis, by } => {
                let x = arg(0)?;
                let fill = if operands.len() > 1 {
                    Some(arg(1)?)
                } else {
                    None
                };
                self.shift(sc, id, x, fill, *axis, *by, shape, body)?
            }
            Op::Unshift { axis, by } => self.unshift(sc, id, arg(0)?, *axis, *by, shape, body)?,
            _ => return Err(sc.invalid_at(id, "internal: lowered out of place")),
        })
    }

    /// Where node `id`'s value `v` lives: in its output destination when it has one, in a
    /// temporary when it is costly and not used exactly once, else it stays lazy.
    fn settle(
        &mut self,
        sc: &Scope,
        id: NodeId,
        v: Val,
        shape: &[usize],
        body: &mut Vec<Stmt>,
    ) -> Val {
        if let Some(dest) = sc.dests.get(&id) {
            if v.as_view().is_some() {
                v
            } else {
                let dest = dest.clone();
                self.materialize(&v, &dest, body);
                dest.val(shape)
            }
        } else if v.is_costly() && sc.users.get(&id).copied().unwrap_or(0) != 1 {
            let dest = self.dest_for(sc, id, shape);
            self.materialize(&v, &dest, body);
            dest.val(shape)
        } else {
            v
        }
    }
}
