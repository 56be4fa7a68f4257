//! Moving tensors between the layouts a stream needs: chunks along the sequence axis, and
//! scan operands rearranged slice-major (`[n, rest...]`, one row per scan slice).

use super::StreamError;
use tttc_runtime::{Tensor, TensorData};

/// Row-major strides of `shape`.
fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// A tensor of `shape` whose element `i` is `t`'s element `index[i]`.
fn gather(t: &Tensor, shape: Vec<usize>, index: &[usize]) -> Result<Tensor, StreamError> {
    let data = match t.data() {
        TensorData::F32(v) => TensorData::F32(index.iter().map(|&i| v[i]).collect()),
        TensorData::F64(v) => TensorData::F64(index.iter().map(|&i| v[i]).collect()),
    };
    Tensor::new(shape, data).map_err(|e| StreamError::internal(e.to_string()))
}

/// `t` with a new shape of the same size.
pub fn reshape(t: Tensor, shape: Vec<usize>) -> Result<Tensor, StreamError> {
    let (_, data) = t.into_parts();
    Tensor::new(shape, data).map_err(|e| StreamError::internal(e.to_string()))
}

/// Elements `start..start + len` of `t` along `axis`.
pub fn slice_axis(
    t: &Tensor,
    axis: usize,
    start: usize,
    len: usize,
) -> Result<Tensor, StreamError> {
    let shape = t.shape();
    if axis >= shape.len() || start + len > shape[axis] {
        return Err(StreamError::internal(format!(
            "slice {start}..{} of axis {axis} of {shape:?}",
            start + len
        )));
    }
    if start == 0 && len == shape[axis] {
        return Ok(t.clone());
    }
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    if outer == 1 {
        let range = start * inner..(start + len) * inner;
        let data = match t.data() {
            TensorData::F32(v) => TensorData::F32(v[range].to_vec().into()),
            TensorData::F64(v) => TensorData::F64(v[range].to_vec().into()),
        };
        let mut out = shape.to_vec();
        out[axis] = len;
        return Tensor::new(out, data).map_err(|e| StreamError::internal(e.to_string()));
    }
    let mut index = Vec::with_capacity(outer * len * inner);
    for o in 0..outer {
        let base = o * shape[axis] * inner + start * inner;
        index.extend(base..base + len * inner);
    }
    let mut out = shape.to_vec();
    out[axis] = len;
    gather(t, out, &index)
}

/// `parts` joined along `axis` (all other extents equal).
pub fn concat_axis(mut parts: Vec<Tensor>, axis: usize) -> Result<Tensor, StreamError> {
    if parts.len() == 1 {
        return parts
            .pop()
            .ok_or_else(|| StreamError::internal("nothing to concatenate"));
    }
    let Some(first) = parts.first() else {
        return Err(StreamError::internal("nothing to concatenate"));
    };
    let shape = first.shape().to_vec();
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let total: usize = parts.iter().map(|p| p.shape()[axis]).sum();
    let mut out_shape = shape.clone();
    out_shape[axis] = total;
    macro_rules! join {
        ($variant:ident) => {{
            let mut out = Vec::with_capacity(outer * total * inner);
            for o in 0..outer {
                for p in &parts {
                    let TensorData::$variant(v) = p.data() else {
                        return Err(StreamError::internal("mixed element types"));
                    };
                    let n = p.shape()[axis] * inner;
                    out.extend_from_slice(&v[o * n..(o + 1) * n]);
                }
            }
            TensorData::$variant(out.into())
        }};
    }
    let data = match first.data() {
        TensorData::F32(_) => join!(F32),
        TensorData::F64(_) => join!(F64),
    };
    Tensor::new(out_shape, data).map_err(|e| StreamError::internal(e.to_string()))
}

/// `t` (a scan operand laid out with `per[a] = Some(p)` for axes mapped to scan dim `p`) as
/// `[n, rest...]`: one row per slice, slices in row-major order of `per_sizes`, unmapped axes
/// kept in order; a scan dim `t` lacks is broadcast.
pub fn to_slices(
    t: &Tensor,
    per: &[Option<usize>],
    per_sizes: &[usize],
) -> Result<Tensor, StreamError> {
    let shape = t.shape();
    if per.len() != shape.len() {
        return Err(StreamError::internal(format!(
            "operand of shape {shape:?} has {} axis mappings",
            per.len()
        )));
    }
    // Scan dims leading, in order, none broadcast: already slice-major.
    let np = per_sizes.len();
    let leading = per.iter().enumerate().all(|(a, p)| match p {
        Some(p) => *p == a,
        None => a >= np,
    });
    if leading && shape.len() >= np && shape[..np] == *per_sizes {
        let mut out = vec![per_sizes.iter().product()];
        out.extend(&shape[np..]);
        return reshape(t.clone(), out);
    }
    let src = strides(shape);
    let mut per_stride = vec![0; per_sizes.len()];
    let mut rest_shape = Vec::new();
    let mut rest_stride = Vec::new();
    for (a, p) in per.iter().enumerate() {
        match p {
            Some(p) if *p < per_sizes.len() => per_stride[*p] = src[a],
            Some(_) => return Err(StreamError::internal("axis mapped to no scan dim")),
            None => {
                rest_shape.push(shape[a]);
                rest_stride.push(src[a]);
            }
        }
    }
    let slice_offsets = offsets(per_sizes, &per_stride);
    let rest_offsets = offsets(&rest_shape, &rest_stride);
    let mut index = Vec::with_capacity(slice_offsets.len() * rest_offsets.len());
    for s in &slice_offsets {
        index.extend(rest_offsets.iter().map(|r| s + r));
    }
    let mut out = vec![slice_offsets.len()];
    out.extend(rest_shape);
    gather(t, out, &index)
}

/// Every offset `Σ i_a stride_a` over the multi-indices of `shape`, in row-major order.
fn offsets(shape: &[usize], stride: &[usize]) -> Vec<usize> {
    let mut out = vec![0usize];
    for (&n, &s) in shape.iter().zip(stride) {
        out = out
            .iter()
            .flat_map(|&base| (0..n).map(move |i| base + i * s))
            .collect();
    }
    out
}

/// Column `c` of a `[n, m]` tensor, as `[n]`.
pub fn column(t: &Tensor, c: usize) -> Result<Tensor, StreamError> {
    let [n, m] = t.shape() else {
        return Err(StreamError::internal(format!(
            "column of a {:?} tensor",
            t.shape()
        )));
    };
    let index: Vec<usize> = (0..*n).map(|i| i * m + c).collect();
    gather(t, vec![*n], &index)
}

/// `theta − rate[i] · sum` for every slice `i` (leading axis), in the tensors' own precision.
pub fn minus_scaled(theta: &Tensor, rate: &Tensor, sum: &Tensor) -> Result<Tensor, StreamError> {
    let n = rate.len();
    if theta.shape() != sum.shape() {
        return Err(StreamError::internal(
            "state and partial sum differ in shape",
        ));
    }
    // A state with no elements (zero slices, or a zero extent in every slice): nothing to do.
    if theta.is_empty() {
        return Ok(theta.clone());
    }
    if n == 0 || !theta.len().is_multiple_of(n) {
        return Err(StreamError::internal(
            "one rate per slice of the state expected",
        ));
    }
    let per = theta.len() / n;
    macro_rules! apply {
        ($variant:ident) => {{
            let (TensorData::$variant(w), TensorData::$variant(r), TensorData::$variant(s)) =
                (theta.data(), rate.data(), sum.data())
            else {
                return Err(StreamError::internal("mixed element types"));
            };
            let mut out = Vec::with_capacity(w.len());
            for ((w, s), &r) in w.chunks_exact(per).zip(s.chunks_exact(per)).zip(r) {
                out.extend(w.iter().zip(s).map(|(&w, &s)| w - r * s));
            }
            TensorData::$variant(out.into())
        }};
    }
    let data = match theta.data() {
        TensorData::F32(_) => apply!(F32),
        TensorData::F64(_) => apply!(F64),
    };
    Tensor::new(theta.shape().to_vec(), data).map_err(|e| StreamError::internal(e.to_string()))
}

/// `Σ_i c_i ⊙ x_i` per slice: every `c_i` holds one `f64` weight per slice (`[n]`), every `x_i`
/// is `[n, ...]` of one shape and element type (a rule's end map on the current values).
pub fn per_slice_combination(terms: &[(Vec<f64>, &Tensor)]) -> Result<Tensor, StreamError> {
    let Some((_, first)) = terms.first() else {
        return Err(StreamError::internal("an empty combination"));
    };
    let mut out = vec![0.0f64; first.len()];
    for (weights, x) in terms {
        let n = weights.len();
        if x.shape() != first.shape() || n == 0 || !x.len().is_multiple_of(n) {
            return Err(StreamError::internal(
                "a combination of states of different shapes, or not one weight per slice",
            ));
        }
        let per = x.len() / n;
        for ((acc, xv), &w) in out
            .chunks_exact_mut(per.max(1))
            .zip(x.to_f64_vec().chunks_exact(per.max(1)))
            .zip(weights)
        {
            for (a, v) in acc.iter_mut().zip(xv) {
                *a += w * v;
            }
        }
    }
    let t = Tensor::from_f64(first.shape().to_vec(), out)
        .map_err(|e| StreamError::internal(e.to_string()))?;
    Ok(t.into_elem(first.elem_type()))
}

/// `rows` (`[n, K, w]`) with row `p` of every slice set to that slice's `row` (`[n, 1, w]`);
/// with `column`, `rows` is `[n, w, K]` and column `p` is set.
pub fn set_row(rows: Tensor, p: usize, row: &Tensor, column: bool) -> Result<Tensor, StreamError> {
    let (shape, mut data) = rows.into_parts();
    let ([n, a, b], [rn, 1, rw]) = (shape.as_slice(), row.shape()) else {
        return Err(StreamError::internal(
            "rows [n, K, w] and a row [n, 1, w] expected",
        ));
    };
    let (k, w) = if column { (b, a) } else { (a, b) };
    if rn != n || rw != w || p >= *k {
        return Err(StreamError::internal("a row that does not fit its rows"));
    }
    macro_rules! copy {
        ($variant:ident) => {{
            let (TensorData::$variant(dst), TensorData::$variant(src)) = (&mut data, row.data())
            else {
                return Err(StreamError::internal("mixed element types"));
            };
            for (slice, r) in dst.chunks_exact_mut(k * w).zip(src.chunks_exact(*w)) {
                if column {
                    for (j, &v) in r.iter().enumerate() {
                        slice[j * k + p] = v;
                    }
                } else {
                    slice[p * w..(p + 1) * w].copy_from_slice(r);
                }
            }
        }};
    }
    if *w > 0 {
        match row.data() {
            TensorData::F32(_) => copy!(F32),
            TensorData::F64(_) => copy!(F64),
        }
    }
    Tensor::new(shape, data).map_err(|e| StreamError::internal(e.to_string()))
}

/// `t` with every element set to zero, in place.
pub fn zeroed(t: Tensor) -> Result<Tensor, StreamError> {
    let (shape, mut data) = t.into_parts();
    match &mut data {
        TensorData::F32(v) => v.fill(0.0),
        TensorData::F64(v) => v.fill(0.0),
    }
    Tensor::new(shape, data).map_err(|e| StreamError::internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize], data: Vec<f64>) -> Tensor {
        Tensor::from_f64(shape.to_vec(), data).unwrap()
    }

    #[test]
    fn slice_then_concat_is_identity() {
        let x = t(&[2, 5, 3], (0..30).map(f64::from).collect());
        let a = slice_axis(&x, 1, 0, 2).unwrap();
        let b = slice_axis(&x, 1, 2, 3).unwrap();
        assert_eq!(
            a.to_f64_vec(),
            vec![0., 1., 2., 3., 4., 5., 15., 16., 17., 18., 19., 20.]
        );
        assert_eq!(concat_axis(vec![a, b], 1).unwrap(), x);
    }

    #[test]
    fn slices_permute_mapped_axes_first_and_broadcast_missing_ones() {
        // Operand [f=2, H=3] mapped as (None, Some(1)); scan dims (B=2, H=3).
        let x = t(&[2, 3], vec![0., 1., 2., 10., 11., 12.]);
        let s = to_slices(&x, &[None, Some(1)], &[2, 3]).unwrap();
        assert_eq!(s.shape(), &[6, 2]);
        assert_eq!(
            s.to_f64_vec(),
            vec![0., 10., 1., 11., 2., 12., 0., 10., 1., 11., 2., 12.]
        );
    }

    #[test]
    fn minus_scaled_of_an_empty_state_is_the_empty_state() {
        // Zero elements per slice (f = 0), and zero slices (B = 0).
        for (shape, rates) in [(vec![2, 0], 2), (vec![0, 3], 0)] {
            let w = t(&shape, vec![]);
            let r = t(&[rates], vec![0.5; rates]);
            assert_eq!(minus_scaled(&w, &r, &w).unwrap(), w);
        }
    }

    #[test]
    fn set_row_writes_one_row_of_every_slice() {
        let rows = t(&[2, 3, 2], vec![0.0; 12]);
        let row = t(&[2, 1, 2], vec![1., 2., 3., 4.]);
        let got = set_row(rows, 1, &row, false).unwrap();
        assert_eq!(
            got.to_f64_vec(),
            vec![0., 0., 1., 2., 0., 0., 0., 0., 3., 4., 0., 0.]
        );
        assert!(set_row(got, 3, &row, false).is_err());
        let columns = t(&[2, 2, 3], vec![0.0; 12]);
        let got = set_row(columns, 2, &row, true).unwrap();
        assert_eq!(
            got.to_f64_vec(),
            vec![0., 0., 1., 0., 0., 2., 0., 0., 3., 0., 0., 4.]
        );
    }

    #[test]
    fn per_slice_combination_weights_every_slice() {
        let w = t(&[2, 2], vec![1., 2., 3., 4.]);
        let s = t(&[2, 2], vec![10., 20., 30., 40.]);
        let got = per_slice_combination(&[(vec![1.0, -1.0], &w), (vec![0.5, 0.0], &s)]).unwrap();
        assert_eq!(got.to_f64_vec(), vec![6., 12., -3., -4.]);
    }

    #[test]
    fn minus_scaled_uses_one_rate_per_slice() {
        let w = t(&[2, 2], vec![1., 1., 1., 1.]);
        let s = t(&[2, 2], vec![1., 2., 3., 4.]);
        let r = t(&[2], vec![0.5, 2.0]);
        assert_eq!(
            minus_scaled(&w, &r, &s).unwrap().to_f64_vec(),
            vec![0.5, 0.0, -5.0, -7.0]
        );
    }
}
