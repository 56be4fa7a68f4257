//! Helpers of the primal-form tests (`primal_*.rs`): compiling and binding example programs,
//! running them through the interpreter with and without the scan-lowering pass, and comparing
//! results relative to the largest magnitude of the expected tensor.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use tttc_ir::{DType, Dim, Op, Program};
use tttc_runtime::{ElemType, Tensor};

/// The workspace root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Compiles `examples/<file>` in f64 with `settings` (`mini_batch_size`, ...) and derives the
/// gradients.
pub fn compile_example(file: &str, settings: &[(&str, f64)]) -> Program {
    let path = repo_root().join("examples").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let settings: tttc_ir::Settings = settings
        .iter()
        .map(|(k, v)| (k.to_string(), (*v).into()))
        .collect();
    let mut p = tttc_ir::syntax::compile(file, &text, DType::F64, &settings)
        .unwrap_or_else(|e| panic!("{file}: {e:?}"));
    tttc_passes::pipeline::Pipeline::of_passes(vec![Box::new(tttc_passes::Autodiff)])
        .run_graph(&mut p)
        .expect("autodiff");
    p
}

/// A copy of `p` with the scan-lowering pass applied (every scan gets its step graph).
pub fn lowered(p: &Program) -> Program {
    let mut q = p.clone();
    tttc_passes::pipeline::Pipeline::of_passes(vec![Box::new(tttc_passes::lower_scan::LowerScan)])
        .run_graph(&mut q)
        .unwrap_or_else(|e| panic!("lower_scan: {e}"));
    q
}

/// Whether every scan of `p` has a step graph.
pub fn has_steps(p: &Program) -> bool {
    let mut any = false;
    for id in p.graph.node_ids() {
        if let Op::Ttt(scan) = &p.graph.node(id).op {
            if scan.step.is_none() {
                return false;
            }
            any = true;
        }
    }
    any
}

/// The dimensions of `p` bound from the integer configs and the inputs' shapes (what the
/// driver's binding does for programs without derived dimensions).
pub fn bind_dims(p: &Program, inputs: &BTreeMap<String, Tensor>) -> BTreeMap<String, usize> {
    let mut dims = p.int_configs();
    for &id in p.graph.inputs() {
        let name = p.graph.input_name(id).expect("input name");
        let ty = p.graph.tensor_type(id).expect("tensor input");
        let t = inputs
            .get(name)
            .unwrap_or_else(|| panic!("missing input `{name}`"));
        assert_eq!(t.shape().len(), ty.shape.rank(), "rank of `{name}`");
        for (d, &n) in ty.shape.0.iter().zip(t.shape()) {
            if let Dim::Sym(s) = d {
                let prev = dims.insert(s.clone(), n);
                assert!(prev.is_none() || prev == Some(n), "`{s}` bound twice");
            }
        }
    }
    assert!(
        p.derived_dims.is_empty(),
        "derived dims are not handled here"
    );
    dims
}

/// Binds `p` to `inputs`, runs it through the interpreter, and returns every output in f64.
pub fn run_bound(p: &Program, inputs: &BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    let dims = bind_dims(p, inputs);
    let s = p.specialize(&dims);
    tttc_ir::verify::verify_program(&s).unwrap_or_else(|e| panic!("verify: {e}"));
    tttc_backends::interp::run_program(&s, inputs).unwrap_or_else(|e| panic!("interp: {e}"))
}

/// Reads a safetensors file, every tensor converted to f64.
pub fn read_f64(path: &std::path::Path) -> BTreeMap<String, Tensor> {
    tttc_runtime::read_safetensors(path)
        .unwrap_or_else(|e| panic!("{path:?}: {e}"))
        .into_iter()
        .map(|(k, t)| (k, t.cast(ElemType::F64)))
        .collect()
}

/// `max |got - want| / max |want|` (0 when both are all zeros); infinite on a shape mismatch
/// or a NaN.
pub fn rel_to_max(got: &Tensor, want: &Tensor) -> f64 {
    if got.shape() != want.shape() {
        return f64::INFINITY;
    }
    let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
    let scale = w.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let mut diff = 0.0f64;
    for (a, b) in g.iter().zip(&w) {
        let d = (a - b).abs();
        if d.is_nan() {
            return f64::INFINITY;
        }
        diff = diff.max(d);
    }
    if diff == 0.0 {
        0.0
    } else if scale == 0.0 {
        f64::INFINITY
    } else {
        diff / scale
    }
}

/// Asserts that `got` and `want` have the same outputs, each within `tol` relative to its
/// largest magnitude; returns the worst error.
pub fn assert_outputs_close(
    got: &BTreeMap<String, Tensor>,
    want: &BTreeMap<String, Tensor>,
    tol: f64,
    what: &str,
) -> f64 {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{what}: output names differ"
    );
    let mut worst = 0.0f64;
    for (name, w) in want {
        let e = rel_to_max(&got[name], w);
        assert!(
            e <= tol,
            "{what}: output `{name}` differs by {e:e} (relative to max |want|) > {tol:e}\n got  {:?}\n want {:?}",
            got[name].to_f64_vec(),
            w.to_f64_vec()
        );
        worst = worst.max(e);
    }
    worst
}

/// Deterministic pseudo-random f64 values in [-1, 1).
pub fn rand_values(seed: u64, n: usize) -> Vec<f64> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect()
}

/// An f64 tensor of pseudo-random values in [lo, hi).
pub fn rand_tensor(seed: u64, shape: &[usize], lo: f64, hi: f64) -> Tensor {
    let n = shape.iter().product();
    let data: Vec<f64> = rand_values(seed, n)
        .into_iter()
        .map(|x| lo + (x + 1.0) * 0.5 * (hi - lo))
        .collect();
    Tensor::from_f64(shape.to_vec(), data).expect("consistent shape")
}

/// The first `n` entries of a 1-d tensor.
pub fn prefix(t: &Tensor, n: usize) -> Tensor {
    let v = t.to_f64_vec();
    Tensor::from_f64(vec![n], v[..n].to_vec()).expect("prefix")
}
