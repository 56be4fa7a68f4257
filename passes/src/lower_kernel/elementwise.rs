//! Elementwise and view ops: constants, extents, iotas, unary and binary functions stay lazy
//! expressions (inlined into their consumer's loop); transpose, permute, expand and reshape only
//! change the view.

use super::*;

impl Lowerer {
    /// The value of node `id` when its op is elementwise or only changes the view (`None` for
    /// other ops).
    pub(super) fn lower_elementwise(
        &mut self,
        sc: &Scope,
        id: NodeId,
        shape: &[usize],
        body: &mut Vec<Stmt>,
    ) -> Res<Option<Val>> {
        let graph = sc.graph;
        let operands = graph.operands(id);
        let n = numel(shape).unwrap_or(0);
        let arg = |i: usize| sc.tensor(operands[i], id);
        let lazy = |lazy: Lazy| Val {
            shape: shape.to_vec(),
            lazy,
        };
        Ok(Some(match &graph.node(id).op {
            Op::Const { value } => lazy(Lazy::Const(*value)),
            Op::Extent { dim } => {
                let e = dim.known().ok_or_else(|| LowerKernelError::UnboundDim {
                    graph: sc.path.clone(),
                    node: describe(graph, id),
                    symbol: dim.to_string(),
                })?;
                lazy(Lazy::Const(e as f64))
            }
            Op::Iota { .. } => {
                if shape.len() != 1 {
                    return Err(sc.invalid_at(id, format!("an iota of shape {shape:?}")));
                }
                lazy(Lazy::Iota)
            }
            Op::Unary { fun } => {
                let x = arg(0)?;
                if x.shape != shape {
                    return Err(sc.invalid_at(id, format!("operand {:?}", x.shape)));
                }
                lazy(Lazy::Unary(*fun, Box::new(x)))
            }
            Op::Binary { fun } => {
                let (a, b) = (arg(0)?, arg(1)?);
                if !broadcasts(&a.shape, shape) || !broadcasts(&b.shape, shape) {
                    return Err(sc.invalid_at(
                        id,
                        format!("operands {:?} and {:?} for {shape:?}", a.shape, b.shape),
                    ));
                }
                let a = self.cheap_operand(sc, a, n, &format!("%{} lhs", id.index()), body);
                let b = self.cheap_operand(sc, b, n, &format!("%{} rhs", id.index()), body);
                lazy(Lazy::Binary(*fun, Box::new(a), Box::new(b)))
            }
            Op::Transpose => {
                let x = arg(0)?;
                let r = x.shape.len();
                if r < 2 {
                    return Err(sc.invalid_at(id, "transpose of fewer than 2 axes"));
                }
                let mut perm: Vec<usize> = (0..r).collect();
                perm.swap(r - 1, r - 2);
                permute(x, &perm)
            }
            Op::Permute { perm } => {
                let x = arg(0)?;
                let mut seen = perm.clone();
                seen.sort_unstable();
                if seen != (0..x.shape.len()).collect::<Vec<_>>() {
                    return Err(sc.invalid_at(id, format!("{perm:?} is not a permutation")));
                }
                permute(x, perm)
            }
            Op::Expand { .. } => {
                let x = arg(0)?;
                if !broadcasts(&x.shape, shape) {
                    return Err(sc.invalid_at(id, format!("{:?} does not broadcast", x.shape)));
                }
                let x = self.cheap_operand(sc, x, n, &format!("%{} operand", id.index()), body);
                expand(x, shape)
            }
            Op::Reshape { .. } => {
                let x = arg(0)?;
                if numel(&x.shape) != Some(n) {
                    return Err(sc.invalid_at(
                        id,
                        format!("{:?} has a different size than {shape:?}", x.shape),
                    ));
                }
                reshape(x, shape)
            }
            _ => return Ok(None),
        }))
    }
}
