//! `Program.vjp`: the vector-Jacobian product of a program, as `tttc grad` computes it
//! (reverse mode through the main graph and every scan; docs/gradients.md), through the
//! library's entry point [`tttc::GradProgram`]: the gradient program is made once per
//! checkpoint group and compiled for the program's backend once per set of dimensions, scans
//! included (their backward runs natively like the rest).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use tttc::ir::Program;
use tttc::runtime::Tensor;
use tttc::{Backend, GradError, GradProgram, Precision, Residuals, Settings};

/// What a VJP needs besides its tensors.
pub struct VjpSetup<'a> {
    /// The program (after the graph stages).
    pub program: &'a Program,
    /// Its settings.
    pub settings: &'a Settings,
    /// Its precision.
    pub precision: Precision,
    /// The backend the gradient program is compiled for and runs on.
    pub backend: Backend,
    /// Checkpoint group of the scans' backward (mini-batches).
    pub checkpoint_every: usize,
}

/// The gradient programs of one program, one per checkpoint group, kept between calls (each
/// keeps its compiled code per set of dimensions).
#[derive(Default)]
pub struct VjpCache {
    grads: Mutex<HashMap<usize, Arc<GradProgram>>>,
}

impl VjpCache {
    /// The gradient program for `setup`'s checkpoint group, made on first use.
    fn grad(&self, setup: &VjpSetup<'_>) -> Result<Arc<GradProgram>, GradError> {
        let every = setup.checkpoint_every;
        if let Some(g) = lock(&self.grads).get(&every) {
            return Ok(g.clone());
        }
        // Made outside the lock: another thread may make the same one meanwhile; either is
        // kept, both are equal.
        let g = Arc::new(GradProgram::new(
            setup.program.clone(),
            setup.precision,
            setup.settings,
            setup.backend,
            every,
        )?);
        Ok(lock(&self.grads).entry(every).or_insert(g).clone())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock left the map as it was between two whole operations.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `Σ_o ⟨cotangents[o], o⟩` differentiated with respect to every floating-point input of
/// `inputs` (every input of the program); outputs without a cotangent count as zero.
pub fn vjp(
    setup: &VjpSetup<'_>,
    cache: &VjpCache,
    inputs: &BTreeMap<String, Tensor>,
    cotangents: &BTreeMap<String, Tensor>,
) -> Result<BTreeMap<String, Tensor>, GradError> {
    cache.grad(setup)?.vjp(inputs, cotangents)
}

/// The outputs for `inputs`, and the residuals (in order) that [`backward`] needs: a training
/// step's forward, computed once ([`GradProgram::forward`]).
pub fn forward(
    setup: &VjpSetup<'_>,
    cache: &VjpCache,
    inputs: BTreeMap<String, Tensor>,
) -> Result<(BTreeMap<String, Tensor>, Vec<Tensor>), GradError> {
    let (outputs, residuals) = cache.grad(setup)?.forward(inputs)?;
    Ok((outputs, residuals.into_tensors().into_values().collect()))
}

/// The VJP from what [`forward`] returned for the same `inputs` (residuals in its order).
pub fn backward(
    setup: &VjpSetup<'_>,
    cache: &VjpCache,
    inputs: BTreeMap<String, Tensor>,
    residuals: Vec<Tensor>,
    cotangents: &BTreeMap<String, Tensor>,
) -> Result<BTreeMap<String, Tensor>, GradError> {
    let g = cache.grad(setup)?;
    let names = g.residual_names()?;
    if residuals.len() != names.len() {
        // Too few: the first one missing is named; too many: the first extra one.
        let k = names.len().min(residuals.len());
        return Err(match names.get(k) {
            Some(name) => GradError::MissingResidual(name.clone()),
            None => GradError::UnknownResidual(format!("residual {k}")),
        });
    }
    let named = names.into_iter().zip(residuals).collect();
    g.backward(inputs, Residuals::from_tensors(named), cotangents)
}

/// The shapes of the residuals [`forward`] returns for inputs of `shapes`, in its order.
pub fn residual_shapes(
    setup: &VjpSetup<'_>,
    cache: &VjpCache,
    shapes: &BTreeMap<String, Vec<usize>>,
) -> Result<Vec<Vec<usize>>, GradError> {
    cache.grad(setup)?.residual_shapes(shapes)
}
