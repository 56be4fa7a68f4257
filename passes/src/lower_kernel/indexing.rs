//! Index arithmetic: row-major strides, folded `/`, `%` and `*`, addresses of views,
//! broadcasting, and reshapes (which axes group together, and the strides a reshaped view keeps).

use super::*;

/// Row-major element strides of `shape`.
pub(super) fn row_major(shape: &[usize]) -> Vec<i64> {
    let mut strides = vec![1i64; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1] as i64;
    }
    strides
}

/// `a / c`, folding constants and `c == 1`. A non-positive `c` only arises for values with no
/// elements (which are never read) and gives 0.
pub(super) fn ix_div(a: Index, c: i64) -> Index {
    match a {
        _ if c <= 0 => Index::Const(0),
        _ if c == 1 => a,
        Index::Const(x) => Index::Const(x / c),
        a => Index::Div(Box::new(a), c),
    }
}

/// `a % c`, folding constants and `c == 1` (a non-positive `c` gives 0, as for [`ix_div`]).
pub(super) fn ix_rem(a: Index, c: i64) -> Index {
    match a {
        _ if c <= 1 => Index::Const(0),
        Index::Const(x) => Index::Const(x % c),
        a => Index::Rem(Box::new(a), c),
    }
}

/// `a * c`, folding constants and products of products.
pub(super) fn ix_mul(a: Index, c: i64) -> Index {
    match a {
        Index::Mul(x, c1) => match c1.checked_mul(c) {
            Some(cc) => Index::scaled(*x, cc),
            None => Index::Mul(Box::new(Index::Mul(x, c1)), c),
        },
        a => Index::scaled(a, c),
    }
}

/// `offset + Σ idx_i strides_i`.
pub(super) fn address(offset: &Index, strides: &[i64], idx: &[Index]) -> Index {
    strides
        .iter()
        .zip(idx)
        .fold(offset.clone(), |acc, (&s, i)| {
            Index::sum(acc, ix_mul(i.clone(), s))
        })
}

/// The index into an operand of shape `op_shape` broadcast (numpy rules) to a value indexed by
/// `idx`: trailing axes aligned, extent-1 axes read at 0.
pub(super) fn bcast_idx(op_shape: &[usize], idx: &[Index]) -> Vec<Index> {
    let (r, big) = (op_shape.len(), idx.len());
    op_shape
        .iter()
        .enumerate()
        .map(|(j, &d)| {
            if d == 1 || big + j < r {
                Index::Const(0)
            } else {
                idx[big + j - r].clone()
            }
        })
        .collect()
}

/// Groups of axes of two shapes with the same number of elements, pairing the non-unit axes of
/// `new` and `old` into runs with equal products (the finest common refinement of a reshape).
/// `None` when the products never meet (different sizes) or an extent is 0.
pub(super) fn reshape_groups(
    new: &[usize],
    old: &[usize],
) -> Option<Vec<(Vec<usize>, Vec<usize>)>> {
    if new.contains(&0) || old.contains(&0) {
        return None;
    }
    let n: Vec<usize> = (0..new.len()).filter(|&i| new[i] != 1).collect();
    let o: Vec<usize> = (0..old.len()).filter(|&j| old[j] != 1).collect();
    let (mut i, mut j) = (0, 0);
    let mut groups = Vec::new();
    while i < n.len() || j < o.len() {
        let (&first_n, &first_o) = (n.get(i)?, o.get(j)?);
        let mut gn = vec![first_n];
        let mut go = vec![first_o];
        let (mut pn, mut po) = (new[first_n], old[first_o]);
        i += 1;
        j += 1;
        while pn != po {
            if pn < po {
                let &a = n.get(i)?;
                pn = pn.checked_mul(new[a])?;
                gn.push(a);
                i += 1;
            } else {
                let &b = o.get(j)?;
                po = po.checked_mul(old[b])?;
                go.push(b);
                j += 1;
            }
        }
        groups.push((gn, go));
    }
    Some(groups)
}

/// Whether a reshape from `old` to `new` only inserts or drops unit axes (every non-unit axis
/// maps to one non-unit axis), or has no elements.
pub(super) fn reshape_is_regrouping(new: &[usize], old: &[usize]) -> bool {
    if new.contains(&0) || old.contains(&0) {
        return true;
    }
    reshape_groups(new, old)
        .is_some_and(|gs| gs.iter().all(|(gn, go)| gn.len() == 1 && go.len() == 1))
}

/// The index into a value of shape `old` read through a reshape to `new` at `idx`.
pub(super) fn reshape_idx(new: &[usize], old: &[usize], idx: &[Index]) -> Vec<Index> {
    let mut out = vec![Index::Const(0); old.len()];
    // Without a finer grouping (sizes are checked when the node is lowered, and an empty value
    // is never read), everything is one group.
    let groups = reshape_groups(new, old)
        .unwrap_or_else(|| vec![((0..new.len()).collect(), (0..old.len()).collect())]);
    for (gn, go) in groups {
        if let ([a], [b]) = (gn.as_slice(), go.as_slice()) {
            out[*b] = idx.get(*a).cloned().unwrap_or(Index::Const(0));
            continue;
        }
        // Linear position within the group, then its digits in the old axes.
        let mut linear = Index::Const(0);
        let mut stride = 1i64;
        for &a in gn.iter().rev() {
            let i = idx.get(a).cloned().unwrap_or(Index::Const(0));
            linear = Index::sum(linear, Index::scaled(i, stride));
            stride *= new[a] as i64;
        }
        let mut stride = 1i64;
        for (pos, &b) in go.iter().enumerate().rev() {
            let digit = ix_div(linear.clone(), stride);
            out[b] = if pos == 0 {
                digit
            } else {
                ix_rem(digit, old[b] as i64)
            };
            stride *= old[b] as i64;
        }
    }
    out
}

/// The strides of a view of shape `old` with `strides`, reshaped to `new` without copying, if
/// possible (each group of axes contiguous in itself).
pub(super) fn reshape_strides(new: &[usize], old: &[usize], strides: &[i64]) -> Option<Vec<i64>> {
    if numel(new)? == 0 {
        return Some(vec![0; new.len()]);
    }
    let mut out = vec![0i64; new.len()];
    for (gn, go) in reshape_groups(new, old)? {
        for w in go.windows(2) {
            if strides[w[0]] != strides[w[1]] * old[w[1]] as i64 {
                return None;
            }
        }
        let mut s = strides[*go.last()?];
        for &a in gn.iter().rev() {
            out[a] = s;
            s *= new[a] as i64;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reshape_groups_pair_runs_of_equal_size() {
        let g = reshape_groups(&[4, 1, 6], &[2, 2, 3, 2]).expect("groups");
        assert_eq!(g, vec![(vec![0], vec![0, 1]), (vec![2], vec![2, 3])]);
        assert!(reshape_groups(&[4], &[5]).is_none());
    }

    #[test]
    fn reshape_strides_need_contiguous_groups() {
        // A transposed [3, 2] (strides [1, 3]) cannot be flattened without a copy...
        assert_eq!(reshape_strides(&[6], &[3, 2], &[1, 3]), None);
        // ...but splitting an axis of it can.
        assert_eq!(
            reshape_strides(&[3, 1, 2], &[3, 2], &[1, 3]),
            Some(vec![1, 0, 3])
        );
        assert_eq!(
            reshape_strides(&[2, 3, 4], &[6, 4], &[4, 1]),
            Some(vec![12, 4, 1])
        );
    }
}
