//! `Program.vjp`: the vector-Jacobian product of a program, as `tttc grad` computes it
//! (reverse mode through the main graph and every scan; docs/gradients.md).
//!
//! This is glue until the library has its own VJP entry point: [`gradient_program`] is the one
//! function to swap for it. The rest (checking the cotangents, binding, running, caching) does
//! not depend on how the gradient program is made.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use tttc::ir::{Op, Program};
use tttc::runtime::Tensor;
use tttc::{Backend, BindError, ExecError, Precision, Prepared, Settings};

/// Why a VJP cannot be computed.
#[derive(Debug, thiserror::Error)]
pub enum VjpError {
    /// The cotangents or the checkpoint group do not fit the program (the user's).
    #[error("{0}")]
    Input(String),
    /// The inputs do not fit the gradient program.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// Compiling or running the gradient program failed.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// Making the gradient program failed.
    #[error("cannot differentiate the program: {0}")]
    Grad(String),
}

/// The gradient program of `program` for the cotangents of outputs `given`, with scan backward
/// checkpoints every `checkpoint_every` mini-batches: inputs are `program`'s, then one cotangent
/// per output of `given` (named by `cotangent_input_names`); outputs are the gradients of every
/// floating-point input under the input's name. Swap this for the library's entry point.
pub fn gradient_program(
    program: &Program,
    given: &[String],
    checkpoint_every: usize,
) -> Result<Program, VjpError> {
    let grad = tttc::passes::autodiff::grad_program(program, given, checkpoint_every)
        .map_err(|e| VjpError::Grad(e.to_string()))?;
    tttc::ir::verify::verify_program(&grad).map_err(|e| VjpError::Grad(e.message))?;
    Ok(grad)
}

/// A gradient program's key: the outputs given cotangents and the checkpoint group.
type GradKey = (Vec<String>, usize);

/// A compiled gradient program's key: [`GradKey`] and every input's shape.
type CompiledKey = (Vec<String>, usize, Vec<Vec<usize>>);

/// Gradient programs and their compiled forms, kept between calls.
#[derive(Default)]
pub struct VjpCache {
    grads: Mutex<HashMap<GradKey, Arc<Program>>>,
    compiled: Mutex<HashMap<CompiledKey, Arc<Mutex<Prepared>>>>,
}

impl VjpCache {
    fn grad(
        &self,
        program: &Program,
        given: &[String],
        every: usize,
    ) -> Result<Arc<Program>, VjpError> {
        let key = (given.to_vec(), every);
        if let Some(g) = lock(&self.grads).get(&key) {
            return Ok(g.clone());
        }
        let g = Arc::new(gradient_program(program, given, every)?);
        lock(&self.grads).insert(key, g.clone());
        Ok(g)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock left the map as it was between two whole operations.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a VJP needs besides its tensors.
pub struct VjpSetup<'a> {
    /// The program (after the pipeline).
    pub program: &'a Program,
    /// Its settings.
    pub settings: &'a Settings,
    /// Its precision.
    pub precision: Precision,
    /// The backend to run on when the gradient program has no scan backward (which runs on the
    /// interpreter only so far).
    pub backend: Backend,
    /// Checkpoint group of the scans' backward.
    pub checkpoint_every: usize,
}

/// `Σ_o ⟨cotangents[o], o⟩` differentiated with respect to every floating-point input of
/// `inputs` (every input of the program); outputs without a cotangent count as zero.
pub fn vjp(
    setup: &VjpSetup<'_>,
    cache: &VjpCache,
    inputs: &BTreeMap<String, Tensor>,
    cotangents: &BTreeMap<String, Tensor>,
) -> Result<BTreeMap<String, Tensor>, VjpError> {
    let program = setup.program;
    let elem = setup.precision.elem();
    if setup.checkpoint_every == 0 {
        return Err(VjpError::Input(
            "checkpoint_every must be at least 1".into(),
        ));
    }
    let outputs = program.graph.output_names();
    if let Some(name) = cotangents.keys().find(|n| !outputs.contains(n)) {
        return Err(VjpError::Input(format!(
            "cotangent `{name}`: not an output of the program (its outputs: {})",
            outputs.join(", ")
        )));
    }
    // The forward program, bound from the inputs' shapes alone, says what shape each
    // cotangent must have.
    let shapes: BTreeMap<String, Vec<usize>> = inputs
        .iter()
        .map(|(n, t)| (n.clone(), t.shape().to_vec()))
        .collect();
    let (forward, _) = tttc::bind_shapes(program, &shapes, setup.settings)?;
    for (name, ct) in cotangents {
        let want = forward
            .graph
            .output_by_name(name)
            .and_then(|id| forward.graph.tensor_type(id))
            .and_then(|t| t.shape.to_known());
        if let Some(want) = want {
            if want.as_slice() != ct.shape() {
                return Err(VjpError::Input(format!(
                    "cotangent `{name}` has shape {:?}, but the output `{name}` is {want:?}",
                    ct.shape()
                )));
            }
        }
    }
    let given: Vec<String> = cotangents.keys().cloned().collect();
    let grad = cache.grad(program, &given, setup.checkpoint_every)?;
    let ct_names = tttc::passes::autodiff::cotangent_input_names(program, &given);
    let mut tensors = inputs.clone();
    for (name, input) in given.iter().zip(&ct_names) {
        tensors.insert(input.clone(), cotangents[name].cast(elem));
    }
    let has_scan_backward = grad
        .graph
        .node_ids()
        .into_iter()
        .any(|id| matches!(grad.graph.node(id).op, Op::TttVjp { .. }));
    let backend = if has_scan_backward {
        Backend::Interp
    } else {
        setup.backend
    };
    let bound = tttc::bind(&grad, &tensors, setup.settings, elem)?;
    if backend == Backend::Interp {
        return Ok(tttc::prepare(backend, &bound.program)?.run(&bound.inputs)?);
    }
    let key = (
        given,
        setup.checkpoint_every,
        bound.inputs.values().map(|t| t.shape().to_vec()).collect(),
    );
    let prepared = {
        let found = lock(&cache.compiled).get(&key).cloned();
        match found {
            Some(p) => p,
            None => {
                let p = Arc::new(Mutex::new(tttc::prepare(backend, &bound.program)?));
                lock(&cache.compiled).insert(key, p.clone());
                p
            }
        }
    };
    let outputs = lock(&prepared).run(&bound.inputs)?;
    Ok(outputs)
}
