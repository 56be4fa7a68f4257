//! The interpreter's kernels: one plain function per op, computing in the element type `T`.
//!
//! Every function checks its operands and returns a message on failure instead of panicking.
//! Accumulations run sequentially in index order.

use super::value::{numel, Arr, Elem};
use ndarray::{ArrayViewD, IxDyn};
use std::convert::Infallible;
use tttc_ir::composite::{build_unary, PrimitiveBuilder};
use tttc_ir::{BinaryOp, ReduceOp, UnaryOp};

/// A view of `a` for broadcasting.
fn view<T: Elem>(a: &Arr<T>) -> Result<ArrayViewD<'_, T>, String> {
    ArrayViewD::from_shape(IxDyn(&a.shape), &a.data).map_err(|e| format!("internal: {e}"))
}

/// `a` broadcast (numpy rules) to `shape`, materialized in row-major order.
fn broadcast_data<T: Elem>(a: &Arr<T>, shape: &[usize]) -> Result<Vec<T>, String> {
    numel(shape)?;
    let v = view(a)?;
    let b = v
        .broadcast(IxDyn(shape))
        .ok_or_else(|| format!("{:?} does not broadcast to {shape:?}", a.shape))?;
    Ok(b.iter().copied().collect())
}

/// The numpy broadcast of two shapes (trailing axes aligned; extent 1 stretches).
pub(crate) fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for (i, slot) in out.iter_mut().enumerate() {
        let from_end = rank - 1 - i;
        let da = (from_end < a.len()).then(|| a[a.len() - 1 - from_end]);
        let db = (from_end < b.len()).then(|| b[b.len() - 1 - from_end]);
        *slot = match (da, db) {
            (Some(x), None) | (None, Some(x)) => x,
            (Some(x), Some(y)) if x == y => x,
            (Some(1), Some(y)) => y,
            (Some(x), Some(1)) => x,
            _ => return None,
        };
    }
    Some(out)
}

/// Scalar evaluation in `T`, for [`build_unary`]: composites expand to these primitives.
struct Scalar<T>(std::marker::PhantomData<T>);

impl<T: Elem> PrimitiveBuilder for Scalar<T> {
    type Value = T;
    type Error = Infallible;

    fn constant(&mut self, c: f64) -> Result<T, Infallible> {
        Ok(T::from_f64(c))
    }

    fn primitive_unary(&mut self, op: UnaryOp, x: T) -> Result<T, Infallible> {
        Ok(primitive_unary(op, x))
    }

    fn binary(&mut self, op: BinaryOp, a: T, b: T) -> Result<T, Infallible> {
        Ok(binary_scalar(op, a, b))
    }
}

/// One unary function on one element: primitives directly, composites as their one definition
/// in [`tttc_ir::composite`].
pub(crate) fn unary_scalar<T: Elem>(fun: UnaryOp, x: T) -> T {
    if fun.is_primitive() {
        return primitive_unary(fun, x);
    }
    let Ok(y) = build_unary(&mut Scalar(std::marker::PhantomData), fun, x);
    y
}

/// One primitive unary function ([`UnaryOp::is_primitive`]) on one element.
fn primitive_unary<T: Elem>(fun: UnaryOp, x: T) -> T {
    match fun {
        UnaryOp::Neg => -x,
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Tanh => x.tanh(),
        // NaN propagates (`NaN < 0` is false).
        UnaryOp::Relu => {
            if x < T::ZERO {
                T::ZERO
            } else {
                x
            }
        }
        UnaryOp::Step => {
            if x > T::ZERO {
                T::ONE
            } else {
                T::ZERO
            }
        }
        UnaryOp::Floor => x.floor(),
        UnaryOp::Sin => x.sin(),
        UnaryOp::Cos => x.cos(),
        // Composites are expanded by `unary_scalar` and never reach here; as a safe answer,
        // the expansion.
        composite => unary_scalar(composite, x),
    }
}

/// One binary function on one pair of elements. `max` and `min` propagate NaN (like numpy's
/// `maximum`/`minimum`).
pub(crate) fn binary_scalar<T: Elem>(fun: BinaryOp, a: T, b: T) -> T {
    match fun {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Pow => a.powf(b),
        BinaryOp::Max | BinaryOp::Min if a.is_nan() || b.is_nan() => a + b,
        BinaryOp::Max => {
            if a >= b {
                a
            } else {
                b
            }
        }
        BinaryOp::Min => {
            if a <= b {
                a
            } else {
                b
            }
        }
    }
}

/// An elementwise function of one operand.
pub(crate) fn unary<T: Elem>(fun: UnaryOp, a: &Arr<T>) -> Arr<T> {
    Arr {
        shape: a.shape.clone(),
        data: a.data.iter().map(|&x| unary_scalar(fun, x)).collect(),
    }
}

/// An elementwise function of two operands with numpy broadcasting.
pub(crate) fn binary<T: Elem>(fun: BinaryOp, a: &Arr<T>, b: &Arr<T>) -> Result<Arr<T>, String> {
    let shape = broadcast_shape(&a.shape, &b.shape).ok_or_else(|| {
        format!(
            "{}: shapes {:?} and {:?} do not broadcast",
            fun.name(),
            a.shape,
            b.shape
        )
    })?;
    let x = broadcast_data(a, &shape)?;
    let y = broadcast_data(b, &shape)?;
    let data = x
        .iter()
        .zip(&y)
        .map(|(&p, &q)| binary_scalar(fun, p, q))
        .collect();
    Arr::new(shape, data)
}

/// Matrix product over the last two axes; leading axes broadcast. Each entry is accumulated
/// sequentially over the inner index, in `T`.
pub(crate) fn matmul<T: Elem>(a: &Arr<T>, b: &Arr<T>) -> Result<Arr<T>, String> {
    let (ra, rb) = (a.shape.len(), b.shape.len());
    if ra < 2 || rb < 2 {
        return Err(format!(
            "matmul needs operands with 2 or more axes, got {:?} @ {:?}",
            a.shape, b.shape
        ));
    }
    let (m, k) = (a.shape[ra - 2], a.shape[ra - 1]);
    let (k2, n) = (b.shape[rb - 2], b.shape[rb - 1]);
    if k != k2 {
        return Err(format!(
            "matmul: inner dimensions differ: {:?} @ {:?}",
            a.shape, b.shape
        ));
    }
    let lead = broadcast_shape(&a.shape[..ra - 2], &b.shape[..rb - 2]).ok_or_else(|| {
        format!(
            "matmul: batch axes of {:?} and {:?} do not broadcast",
            a.shape, b.shape
        )
    })?;
    let batch = numel(&lead)?;
    let with = |x: usize, y: usize| {
        let mut s = lead.clone();
        s.extend([x, y]);
        s
    };
    let x = broadcast_data(a, &with(m, k))?;
    let y = broadcast_data(b, &with(k, n))?;
    let out_shape = with(m, n);
    let mut out = Vec::with_capacity(numel(&out_shape)?);
    for bi in 0..batch {
        let xa = &x[bi * m * k..(bi + 1) * m * k];
        let yb = &y[bi * k * n..(bi + 1) * k * n];
        for i in 0..m {
            for j in 0..n {
                let mut acc = T::ZERO;
                for p in 0..k {
                    acc = acc + xa[i * k + p] * yb[p * n + j];
                }
                out.push(acc);
            }
        }
    }
    Arr::new(out_shape, out)
}

/// Swaps the last two axes.
pub(crate) fn transpose<T: Elem>(a: &Arr<T>) -> Result<Arr<T>, String> {
    let r = a.shape.len();
    if r < 2 {
        return Err(format!("transpose needs 2 or more axes, got {:?}", a.shape));
    }
    let (m, n) = (a.shape[r - 2], a.shape[r - 1]);
    let batch = numel(&a.shape[..r - 2])?;
    let mut out = Vec::with_capacity(a.data.len());
    for b in 0..batch {
        let block = &a.data[b * m * n..(b + 1) * m * n];
        for j in 0..n {
            for i in 0..m {
                out.push(block[i * n + j]);
            }
        }
    }
    let mut shape = a.shape.clone();
    shape.swap(r - 1, r - 2);
    Arr::new(shape, out)
}

/// Reorders axes: result axis `i` is axis `perm[i]` of `a` (numpy's `transpose(a, perm)`).
pub(crate) fn permute<T: Elem>(a: &Arr<T>, perm: &[usize]) -> Result<Arr<T>, String> {
    let rank = a.shape.len();
    let mut seen = vec![false; rank];
    let is_perm = perm.len() == rank
        && perm
            .iter()
            .all(|&p| seen.get_mut(p).is_some_and(|s| !std::mem::replace(s, true)));
    if !is_perm {
        return Err(format!(
            "permute: {perm:?} is not a permutation of the axes of {:?}",
            a.shape
        ));
    }
    // Row-major strides of `a`, then the result's axes walked in row-major order.
    let mut strides = vec![1usize; rank];
    for i in (0..rank.saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * a.shape[i + 1];
    }
    let shape: Vec<usize> = perm.iter().map(|&p| a.shape[p]).collect();
    let src_strides: Vec<usize> = perm.iter().map(|&p| strides[p]).collect();
    let n = numel(&shape)?;
    let mut out = Vec::with_capacity(n);
    let mut index = vec![0usize; rank];
    for _ in 0..n {
        let offset: usize = index.iter().zip(&src_strides).map(|(i, s)| i * s).sum();
        out.push(a.data[offset]);
        // Advance the multi-index (last axis fastest).
        for ax in (0..rank).rev() {
            index[ax] += 1;
            if index[ax] < shape[ax] {
                break;
            }
            index[ax] = 0;
        }
    }
    Arr::new(shape, out)
}

/// `[0, 1, ..., len - 1]`.
pub(crate) fn iota<T: Elem>(len: usize) -> Result<Arr<T>, String> {
    numel(&[len])?;
    Arr::new(vec![len], (0..len).map(|i| T::from_f64(i as f64)).collect())
}

/// Reduces `axis`, keeping it with extent 1. Sums run sequentially along the axis; the mean
/// divides the sum by the extent (0/0 = NaN for an empty axis).
pub(crate) fn reduce<T: Elem>(fun: ReduceOp, axis: usize, a: &Arr<T>) -> Result<Arr<T>, String> {
    if axis >= a.shape.len() {
        return Err(format!(
            "{}: axis {axis} out of range for {:?}",
            fun.name(),
            a.shape
        ));
    }
    let mut shape = a.shape.clone();
    shape[axis] = 1;
    let outer = numel(&a.shape[..axis])?;
    let n = a.shape[axis];
    let inner = numel(&a.shape[axis + 1..])?;
    let mut out = Vec::with_capacity(numel(&shape)?);
    for o in 0..outer {
        for i in 0..inner {
            let mut acc = T::ZERO;
            for p in 0..n {
                acc = acc + a.data[(o * n + p) * inner + i];
            }
            out.push(match fun {
                ReduceOp::Sum => acc,
                ReduceOp::Mean => acc / T::from_f64(n as f64),
            });
        }
    }
    Arr::new(shape, out)
}

/// Broadcasts `a` to `shape` (numpy rules).
pub(crate) fn expand<T: Elem>(a: &Arr<T>, shape: &[usize]) -> Result<Arr<T>, String> {
    if a.shape.len() > shape.len() {
        return Err(format!(
            "expand: {:?} does not broadcast to {shape:?}",
            a.shape
        ));
    }
    let data = broadcast_data(a, shape).map_err(|e| format!("expand: {e}"))?;
    Arr::new(shape.to_vec(), data)
}

/// Sums the broadcast axes of `a` away so that it has `shape`: leading extra axes are summed
/// and dropped, axes where `shape` has extent 1 are summed and kept. The adjoint of
/// [`expand`].
pub(crate) fn sum_to<T: Elem>(a: &Arr<T>, shape: &[usize]) -> Result<Arr<T>, String> {
    let bad = || format!("sum_to: {shape:?} does not broadcast to {:?}", a.shape);
    if shape.len() > a.shape.len() {
        return Err(bad());
    }
    let mut cur = a.clone();
    for _ in 0..a.shape.len() - shape.len() {
        cur = reduce(ReduceOp::Sum, 0, &cur)?;
        cur.shape.remove(0);
    }
    for (axis, &target) in shape.iter().enumerate() {
        if cur.shape[axis] == target {
            continue;
        }
        if target != 1 {
            return Err(bad());
        }
        cur = reduce(ReduceOp::Sum, axis, &cur)?;
    }
    Ok(cur)
}

/// Reinterprets the row-major data of `a` with `shape`.
pub(crate) fn reshape<T: Elem>(a: &Arr<T>, shape: &[usize]) -> Result<Arr<T>, String> {
    let n = numel(shape)?;
    if n != a.data.len() {
        return Err(format!(
            "reshape: {:?} has {} elements, {shape:?} has {n}",
            a.shape,
            a.data.len()
        ));
    }
    Arr::new(shape.to_vec(), a.data.clone())
}

/// `out[i] = Σ_j w[i, j] x[j]` for `w [p, k]`, `x [k, s...]`.
pub(crate) fn mix<T: Elem>(w: &Arr<T>, x: &Arr<T>) -> Result<Arr<T>, String> {
    let (&[p, k], Some(&k2)) = (w.shape.as_slice(), x.shape.first()) else {
        return Err(format!("mix: bad shapes {:?} and {:?}", w.shape, x.shape));
    };
    if k != k2 {
        return Err(format!("mix: {k} weights per row but {k2} rows"));
    }
    let row = x.shape[1..].iter().product::<usize>();
    let mut out = vec![T::ZERO; p * row];
    for i in 0..p {
        for j in 0..k {
            let wij = w.data[i * k + j];
            for (o, &v) in out[i * row..(i + 1) * row]
                .iter_mut()
                .zip(&x.data[j * row..(j + 1) * row])
            {
                *o = *o + wij * v;
            }
        }
    }
    let mut shape = vec![p];
    shape.extend_from_slice(&x.shape[1..]);
    Arr::new(shape, out)
}

/// `out[i] = Σ_j w[i, j] u[j]ᵀ d[j]` for `w [p, k]`, `u [k, m]`, `d [k, n]`.
pub(crate) fn mix_outer<T: Elem>(w: &Arr<T>, u: &Arr<T>, d: &Arr<T>) -> Result<Arr<T>, String> {
    let (&[p, k], &[k1, m], &[k2, n]) =
        (w.shape.as_slice(), u.shape.as_slice(), d.shape.as_slice())
    else {
        return Err(format!(
            "mix_outer: bad shapes {:?}, {:?}, {:?}",
            w.shape, u.shape, d.shape
        ));
    };
    if k != k1 || k != k2 {
        return Err(format!("mix_outer: row counts {k}, {k1}, {k2} differ"));
    }
    let mut out = vec![T::ZERO; p * m * n];
    for i in 0..p {
        for j in 0..k {
            let wij = w.data[i * k + j];
            for r in 0..m {
                let a = wij * u.data[j * m + r];
                let dst = &mut out[(i * m + r) * n..(i * m + r + 1) * n];
                for (o, &v) in dst.iter_mut().zip(&d.data[j * n..(j + 1) * n]) {
                    *o = *o + a * v;
                }
            }
        }
    }
    Arr::new(vec![p, m, n], out)
}

/// `(outer, n, inner)`: the extents before, of and after `axis` of `shape`, so that element
/// `(o, t, i)` is at `(o * n + t) * inner + i`.
fn split_at_axis(
    shape: &[usize],
    axis: usize,
    what: &str,
) -> Result<(usize, usize, usize), String> {
    let Some(&n) = shape.get(axis) else {
        return Err(format!("{what}: axis {axis} out of range for {shape:?}"));
    };
    Ok((
        shape[..axis].iter().product(),
        n,
        shape[axis + 1..].iter().product(),
    ))
}

/// `a[.., start .. start + len, ..]` along `axis`.
pub(crate) fn slice<T: Elem>(
    a: &Arr<T>,
    axis: usize,
    start: usize,
    len: usize,
) -> Result<Arr<T>, String> {
    let (outer, n, inner) = split_at_axis(&a.shape, axis, "slice")?;
    if start.checked_add(len).is_none_or(|end| end > n) {
        return Err(format!(
            "slice: elements {start}..{} of axis {axis} of {:?} do not exist",
            start.saturating_add(len),
            a.shape
        ));
    }
    let mut data = Vec::with_capacity(outer * len * inner);
    for o in 0..outer {
        let base = (o * n + start) * inner;
        data.extend_from_slice(&a.data[base..base + len * inner]);
    }
    let mut shape = a.shape.clone();
    shape[axis] = len;
    Arr::new(shape, data)
}

/// `y[t] = x[t - by]` along `axis` for `t >= by`; for `t < by`, `fill[t]` (`fill` has `x`'s
/// shape with extent `by` on `axis`) or zero without a fill.
pub(crate) fn shift<T: Elem>(
    x: &Arr<T>,
    fill: Option<&Arr<T>>,
    axis: usize,
    by: usize,
) -> Result<Arr<T>, String> {
    let (outer, n, inner) = split_at_axis(&x.shape, axis, "shift")?;
    if let Some(f) = fill {
        let mut want = x.shape.clone();
        want[axis] = by;
        if f.shape != want {
            return Err(format!(
                "shift: the fill must be {want:?}, got {:?}",
                f.shape
            ));
        }
    }
    let mut data = Vec::with_capacity(x.data.len());
    for o in 0..outer {
        for t in 0..n {
            if t >= by {
                let from = (o * n + t - by) * inner;
                data.extend_from_slice(&x.data[from..from + inner]);
            } else if let Some(f) = fill {
                let from = (o * by + t) * inner;
                data.extend_from_slice(&f.data[from..from + inner]);
            } else {
                data.extend(std::iter::repeat_n(T::ZERO, inner));
            }
        }
    }
    Arr::new(x.shape.clone(), data)
}

/// `y[t] = x[t + by]` along `axis` for `t + by < n`; zero for the last `by` positions.
pub(crate) fn unshift<T: Elem>(x: &Arr<T>, axis: usize, by: usize) -> Result<Arr<T>, String> {
    let (outer, n, inner) = split_at_axis(&x.shape, axis, "unshift")?;
    let mut data = Vec::with_capacity(x.data.len());
    for o in 0..outer {
        for t in 0..n {
            match t.checked_add(by).filter(|&s| s < n) {
                Some(s) => {
                    let from = (o * n + s) * inner;
                    data.extend_from_slice(&x.data[from..from + inner]);
                }
                None => data.extend(std::iter::repeat_n(T::ZERO, inner)),
            }
        }
    }
    Arr::new(x.shape.clone(), data)
}

/// Checks that `id` is an integer in `0..rows`, as the row index it stands for.
fn row_of<T: Elem>(ids: &Arr<T>, i: usize, rows: usize) -> Result<usize, String> {
    let x = ids.data[i].to_f64();
    if x.fract() == 0.0 && x >= 0.0 && x < rows as f64 {
        return Ok(x as usize);
    }
    let mut at = vec![0; ids.shape.len()];
    let mut rest = i;
    for (a, &n) in at.iter_mut().zip(&ids.shape).rev() {
        *a = rest % n.max(1);
        rest /= n.max(1);
    }
    Err(format!(
        "id {x} at index {at:?} is not an integer in 0..{rows} (the table's rows)"
    ))
}

/// Rows of `table [V, h...]` by `ids [s...]`: `[s..., h...]`. An id that is not an integer
/// in `0..V` is an error.
pub(crate) fn gather<T: Elem>(table: &Arr<T>, ids: &Arr<T>) -> Result<Arr<T>, BadId> {
    let Some((&rows, row_shape)) = table.shape.split_first() else {
        return Err(BadId::Shape("gather: the table has no axes".into()));
    };
    let row: usize = row_shape.iter().product();
    let mut shape = ids.shape.clone();
    shape.extend_from_slice(row_shape);
    numel(&shape).map_err(BadId::Shape)?;
    let mut data = Vec::with_capacity(ids.data.len() * row);
    for i in 0..ids.data.len() {
        let r = row_of(ids, i, rows).map_err(BadId::Id)?;
        data.extend_from_slice(&table.data[r * row..(r + 1) * row]);
    }
    Arr::new(shape, data).map_err(BadId::Shape)
}

/// The adjoint of [`gather`] for the table: `grad [s..., h...]` summed into `[rows, h...]` by
/// `ids [s...]`, in index order (repeated ids add up).
pub(crate) fn scatter_add<T: Elem>(
    grad: &Arr<T>,
    ids: &Arr<T>,
    rows: usize,
) -> Result<Arr<T>, BadId> {
    let r = ids.shape.len();
    if grad.shape.len() < r || grad.shape[..r] != ids.shape[..] {
        return Err(BadId::Shape(format!(
            "scatter_add: rows {:?} do not start with the ids' shape {:?}",
            grad.shape, ids.shape
        )));
    }
    let row: usize = grad.shape[r..].iter().product();
    let mut shape = vec![rows];
    shape.extend_from_slice(&grad.shape[r..]);
    let n = numel(&shape).map_err(BadId::Shape)?;
    let mut data = vec![T::ZERO; n];
    for i in 0..ids.data.len() {
        let v = row_of(ids, i, rows).map_err(BadId::Id)?;
        for (d, &g) in data[v * row..(v + 1) * row]
            .iter_mut()
            .zip(&grad.data[i * row..(i + 1) * row])
        {
            *d = *d + g;
        }
    }
    Arr::new(shape, data).map_err(BadId::Shape)
}

/// Why a `gather` or `scatter_add` failed: ill-formed operands (a bug) or a bad id (the data's).
pub(crate) enum BadId {
    /// The operands' shapes do not fit.
    Shape(String),
    /// An id is not an integer in range.
    Id(String),
}
