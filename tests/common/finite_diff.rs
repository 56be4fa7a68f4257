//! Gradients through whole programs against central finite differences, on the graph
//! interpreter in f64: the program's gradient program (`grad_program`) gives every input's
//! vector-Jacobian product for cotangents `cts`; along a random direction `v` per input, its
//! pairing `⟨grad, v⟩` must equal the derivative of `f(x) = Σ ⟨ct, output(x)⟩` along `v`.

use std::collections::BTreeMap;
use tttc::runtime::{ElemType, Tensor};
use tttc::{bind, Settings};

/// Step of the central differences.
pub const STEP: f64 = 1e-5;

/// `Σ_outputs ⟨ct, output⟩` of `program` run on `inputs`.
pub fn pairing(
    program: &tttc::ir::Program,
    inputs: &BTreeMap<String, Tensor>,
    cts: &BTreeMap<String, Tensor>,
    settings: &Settings,
) -> Result<f64, String> {
    let bound = bind(program, inputs, settings, ElemType::F64).map_err(|e| e.to_string())?;
    let outs = tttc::backends::interp::run_program(&bound.program, &bound.inputs)
        .map_err(|e| e.to_string())?;
    Ok(cts
        .iter()
        .map(|(name, ct)| {
            let o = outs[name].to_f64_vec();
            o.iter()
                .zip(ct.to_f64_vec())
                .map(|(a, b)| a * b)
                .sum::<f64>()
        })
        .sum())
}

/// The gradients of `Σ ⟨ct, output⟩` with respect to every floating-point input, by the
/// program's gradient program with checkpoint group `every`, on the interpreter.
pub fn gradients(
    program: &tttc::ir::Program,
    inputs: &BTreeMap<String, Tensor>,
    cts: &BTreeMap<String, Tensor>,
    settings: &Settings,
    every: usize,
) -> Result<BTreeMap<String, Tensor>, String> {
    let names: Vec<String> = cts.keys().cloned().collect();
    let grad =
        tttc::passes::autodiff::grad_program(program, &names, every).map_err(|e| e.to_string())?;
    let ct_inputs = tttc::passes::autodiff::cotangent_input_names(program, &names);
    let mut all = inputs.clone();
    for (name, input) in names.iter().zip(&ct_inputs) {
        all.insert(input.clone(), cts[name].clone());
    }
    let bound = bind(&grad, &all, settings, ElemType::F64).map_err(|e| e.to_string())?;
    tttc::backends::interp::run_program(&bound.program, &bound.inputs).map_err(|e| e.to_string())
}

/// One input's check: the autodiff pairing `⟨grad, v⟩`, the finite-difference derivative
/// along `v` (Richardson extrapolation of central differences at a step and half of it, so the
/// O(h²) truncation error cancels: at [`STEP`], or at smaller steps where the two disagree) and
/// a scale for the tolerance (the larger of |fd| and `Σ|gradᵢ vᵢ|`).
pub struct DirectionalCheck {
    /// `⟨grad, v⟩`.
    pub autodiff: f64,
    /// The finite-difference derivative along `v`.
    pub finite_differences: f64,
    /// The magnitude the error is relative to.
    pub scale: f64,
}

/// Checks input `name` of `inputs` along direction `v` against its gradient `g`.
pub fn directional(
    program: &tttc::ir::Program,
    inputs: &BTreeMap<String, Tensor>,
    cts: &BTreeMap<String, Tensor>,
    settings: &Settings,
    name: &str,
    g: &Tensor,
    v: &[f64],
) -> Result<DirectionalCheck, String> {
    let x = &inputs[name];
    let at = |s: f64| {
        let data: Vec<f64> = x
            .to_f64_vec()
            .iter()
            .zip(v)
            .map(|(a, d)| a + s * d)
            .collect();
        let mut ins = inputs.clone();
        let moved = Tensor::from_f64(x.shape().to_vec(), data).map_err(|e| e.to_string())?;
        ins.insert(name.to_string(), moved);
        pairing(program, &ins, cts, settings)
    };
    let central = |h: f64| -> Result<f64, String> { Ok((at(h)? - at(-h)?) / (2.0 * h)) };
    let terms: Vec<f64> = g.to_f64_vec().iter().zip(v).map(|(a, b)| a * b).collect();
    let magnitude: f64 = terms.iter().map(|t| t.abs()).sum();
    // Central differences at h and h/2 differ by (3/4)·f'''·h²/6: tiny where the function is
    // smooth at that scale. Where they do not agree to SMOOTH (a LayerNorm of nearly equal
    // features curves so much that the differences at 1e-5 are off by 20%), smaller steps.
    let mut h = STEP;
    let (mut coarse, mut fine) = (central(h)?, central(h / 2.0)?);
    for _ in 0..REFINEMENTS {
        if (coarse - fine).abs() <= SMOOTH * fine.abs().max(magnitude) {
            break;
        }
        h /= 4.0;
        (coarse, fine) = (central(h)?, central(h / 2.0)?);
    }
    let fd = (4.0 * fine - coarse) / 3.0;
    Ok(DirectionalCheck {
        autodiff: terms.iter().sum(),
        finite_differences: fd,
        scale: fd.abs().max(magnitude),
    })
}

/// Steps tried below [`STEP`] (each a quarter of the last, down to `STEP / 256`) while the
/// central differences at a step and its half disagree.
const REFINEMENTS: usize = 4;

/// The central differences at a step and its half agree when they differ by at most this much
/// of the scale; then Richardson's extrapolation of the two is left with errors of the order
/// of the square of that (and rounding), far inside the tests' 1e-6.
const SMOOTH: f64 = 1e-4;
