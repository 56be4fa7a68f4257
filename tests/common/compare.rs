//! THE comparison of computed values with expected ones, for every test: lengths and shapes
//! must agree, a NaN or an infinity must be matched by the same non-finite value (a plain
//! `fold(f64::max)` would skip a NaN), and a failure reports the largest error and where it is.

use tttc::runtime::Tensor;

/// The largest error of `got` against `expected`, relative to max |expected| (absolute when
/// `expected` is all zeros), and where it is; `Err` with a description on a length mismatch or
/// a non-finite value not matched by the same one.
pub fn max_rel_error(got: &[f64], expected: &[f64]) -> Result<(f64, usize), String> {
    if got.len() != expected.len() {
        return Err(format!(
            "{} values computed, {} expected",
            got.len(),
            expected.len()
        ));
    }
    let scale = expected
        .iter()
        .filter(|x| x.is_finite())
        .fold(0.0f64, |m, x| m.max(x.abs()));
    let scale = if scale > 0.0 { scale } else { 1.0 };
    let mut worst = (0.0f64, 0usize);
    for (i, (&g, &e)) in got.iter().zip(expected).enumerate() {
        if !g.is_finite() || !e.is_finite() {
            let same = (g.is_nan() && e.is_nan()) || g == e;
            if !same {
                return Err(format!("element {i} is {g}, expected {e}"));
            }
            continue;
        }
        let err = (g - e).abs() / scale;
        if err > worst.0 {
            worst = (err, i);
        }
    }
    Ok(worst)
}

/// Fails the test unless `got` matches `expected` within `tol` relative to max |expected|
/// (see [`max_rel_error`]); `name` says what is compared.
pub fn assert_close(name: &str, got: &[f64], expected: &[f64], tol: f64) {
    match max_rel_error(got, expected) {
        Err(why) => panic!("{name}: {why}"),
        Ok((err, at)) => assert!(
            err <= tol,
            "{name}: max relative error {err:e} > {tol:e} at element {at} (got {}, expected {})",
            got[at],
            expected[at]
        ),
    }
}

/// [`assert_close`] for tensors: their shapes must be equal too, and the place of the largest
/// error is given as an index per axis.
pub fn assert_tensor_close(name: &str, got: &Tensor, expected: &Tensor, tol: f64) {
    assert_eq!(got.shape(), expected.shape(), "{name}: shape mismatch");
    let (g, e) = (got.to_f64_vec(), expected.to_f64_vec());
    match max_rel_error(&g, &e) {
        Err(why) => panic!("{name} {:?}: {why}", got.shape()),
        Ok((err, at)) => assert!(
            err <= tol,
            "{name}: max relative error {err:e} > {tol:e} at {:?} (got {}, expected {})",
            index_of(got.shape(), at),
            g[at],
            e[at]
        ),
    }
}

/// The index per axis of element `flat` of a row-major `shape`.
pub fn index_of(shape: &[usize], flat: usize) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    let mut rest = flat;
    for (slot, &n) in idx.iter_mut().zip(shape).rev() {
        if n > 0 {
            *slot = rest % n;
            rest /= n;
        }
    }
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mismatches_are_caught() {
        assert!(max_rel_error(&[1.0], &[1.0, 2.0]).is_err());
        assert!(max_rel_error(&[f64::NAN], &[1.0]).is_err());
        assert!(max_rel_error(&[1.0], &[f64::INFINITY]).is_err());
        assert_eq!(
            max_rel_error(&[f64::NAN, 1.0], &[f64::NAN, 1.0]),
            Ok((0.0, 0))
        );
        assert_eq!(max_rel_error(&[1.0, 2.5], &[1.0, 2.0]), Ok((0.25, 1)));
    }
}
