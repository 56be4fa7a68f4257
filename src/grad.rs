//! Gradients of a whole program as a library call, for bindings such as a Python package:
//! [`GradProgram`] compiles a `.ttt` program and its gradient program once (the graph stages,
//! then [`crate::driver::gradient`]); [`GradProgram::vjp`] takes the inputs and the cotangents
//! of any subset of the outputs, each by name, and returns the vector-Jacobian product for
//! every floating-point input under the input's name. Names in, names out; every failure is a
//! [`GradError`].
//!
//! The gradient program covers every output of the program (an output without a cotangent
//! gets zeros), so one program serves every call. Native code is generated once per set of
//! dimensions (the shapes of the inputs) and kept.
//!
//! For a training loop whose loss is computed between the forward and the backward (PyTorch's
//! autograd), [`GradProgram::forward`] computes the outputs and keeps the [`Residuals`] the
//! backward needs, and [`GradProgram::backward`] computes the same VJP from them and the
//! cotangents: the forward values are computed once instead of twice (the gradient program
//! cut at its cotangents: [`tttc_passes::residuals`]).

use crate::bind::{bind_owned, BindError};
use crate::driver::{DriverError, Precision, Settings};
use crate::execute::{prepare, Backend, ExecError, Prepared};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use tttc_ir::Program;
use tttc_passes::residuals::SplitGradient;
use tttc_runtime::Tensor;

/// Why a gradient could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum GradError {
    /// The program could not be compiled or differentiated.
    #[error(transparent)]
    Driver(#[from] DriverError),
    /// The inputs (or cotangents) do not fit the program.
    #[error("the inputs do not fit the program: {0}")]
    Bind(#[source] BindError),
    /// The program could not be compiled for the backend, or failed to run.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// A cotangent under a name that is not an output.
    #[error("`{name}` is not an output of the program (its outputs: {outputs})")]
    UnknownCotangent {
        /// The cotangent's name.
        name: String,
        /// The program's outputs, comma-separated.
        outputs: String,
    },
    /// A cotangent whose shape is not its output's.
    #[error("the cotangent `{name}` has shape {got:?}, but the output `{name}` is {want:?}")]
    CotangentShape {
        /// The output's name.
        name: String,
        /// The cotangent's shape.
        got: Vec<usize>,
        /// The output's shape.
        want: Vec<usize>,
    },
    /// [`GradProgram::backward`] was given residuals without one its backward part reads
    /// (residuals of another program, or changed since [`GradProgram::forward`] kept them).
    #[error("the residual `{0}` is missing: pass what `forward` returned for these inputs")]
    MissingResidual(String),
    /// [`GradProgram::backward`] was given a residual its backward part does not read
    /// (residuals of another program).
    #[error("`{0}` is not a residual of this program: pass what its `forward` returned")]
    UnknownResidual(String),
    /// A bug.
    #[error("internal error: {0}")]
    Internal(String),
    /// A checkpoint group of 0 mini-batches.
    #[error("the checkpoint group must hold at least 1 mini-batch")]
    NoCheckpointGroup,
}

impl GradError {
    /// Whether the caller can fix it (bad inputs, cotangents or settings) rather than a bug.
    pub fn is_user_error(&self) -> bool {
        match self {
            GradError::Driver(e) => e.is_user_error(),
            GradError::Exec(e) => e.is_user_error(),
            GradError::Bind(_)
            | GradError::UnknownCotangent { .. }
            | GradError::CotangentShape { .. }
            | GradError::MissingResidual(_)
            | GradError::UnknownResidual(_)
            | GradError::NoCheckpointGroup => true,
            GradError::Internal(_) => false,
        }
    }
}

/// A program and its gradient program, compiled once (see the module doc).
pub struct GradProgram {
    forward: Program,
    gradient: Program,
    /// The program's outputs, and the gradient program's cotangent input for each.
    outputs: Vec<(String, String)>,
    settings: Settings,
    precision: Precision,
    backend: Backend,
    checkpoint_every: usize,
    /// Native code per set of dimensions.
    compiled: Mutex<BTreeMap<BTreeMap<String, usize>, Prepared>>,
    /// The forward and backward parts, made on first use by [`GradProgram::forward`].
    split: Mutex<Option<std::sync::Arc<SplitGradient>>>,
    /// Native code of the forward part per set of dimensions.
    compiled_forward: Mutex<BTreeMap<BTreeMap<String, usize>, Prepared>>,
    /// Native code of the backward part per set of dimensions.
    compiled_backward: Mutex<BTreeMap<BTreeMap<String, usize>, Prepared>>,
}

/// What [`GradProgram::forward`] keeps for [`GradProgram::backward`]: the forward values the
/// backward reads (activations, the scans' operands), by name.
#[derive(Clone, Debug)]
pub struct Residuals {
    tensors: BTreeMap<String, Tensor>,
}

impl Residuals {
    /// The kept tensors by name (`$residual<k>`).
    pub fn tensors(&self) -> &BTreeMap<String, Tensor> {
        &self.tensors
    }

    /// The kept tensors by name, taken.
    pub fn into_tensors(self) -> BTreeMap<String, Tensor> {
        self.tensors
    }

    /// Residuals from tensors [`Residuals::tensors`] gave (e.g. kept by a binding between the
    /// calls); [`GradProgram::backward`] checks their names and shapes.
    pub fn from_tensors(tensors: BTreeMap<String, Tensor>) -> Residuals {
        Residuals { tensors }
    }

    /// The bytes the residuals hold.
    pub fn bytes(&self) -> usize {
        self.tensors
            .values()
            .map(|t| t.len() * t.elem_type().size_bytes())
            .sum()
    }
}

impl GradProgram {
    /// Compiles the `.ttt` file at `path` (with `settings` applied) and its gradient program
    /// for `backend`, keeping a checkpoint of the scans' states every `checkpoint_every`
    /// mini-batches.
    pub fn from_file(
        path: &Path,
        precision: Precision,
        settings: &Settings,
        backend: Backend,
        checkpoint_every: usize,
    ) -> Result<GradProgram, GradError> {
        let program = crate::compile_file(path, precision, settings)?;
        GradProgram::new(program, precision, settings, backend, checkpoint_every)
    }

    /// [`GradProgram::from_file`] for program text (`file` names it in diagnostics).
    pub fn from_source(
        file: &str,
        text: &str,
        precision: Precision,
        settings: &Settings,
        backend: Backend,
        checkpoint_every: usize,
    ) -> Result<GradProgram, GradError> {
        let program = crate::compile_source(file, text, precision, settings)?;
        GradProgram::new(program, precision, settings, backend, checkpoint_every)
    }

    /// The gradient program of `program`, a program that went through every graph stage
    /// (such as [`crate::compile_file`]'s).
    pub fn new(
        program: Program,
        precision: Precision,
        settings: &Settings,
        backend: Backend,
        checkpoint_every: usize,
    ) -> Result<GradProgram, GradError> {
        if checkpoint_every == 0 {
            return Err(GradError::NoCheckpointGroup);
        }
        if !backend.is_built() {
            return Err(ExecError::NotBuilt(backend.feature()).into());
        }
        let names = program.graph.output_names();
        let gradient =
            crate::driver::gradient(&program, &names, checkpoint_every, None, false)?.program;
        let cts = tttc_passes::autodiff::cotangent_input_names(&program, &names);
        Ok(GradProgram {
            forward: program,
            gradient,
            outputs: names.into_iter().zip(cts).collect(),
            settings: settings.clone(),
            precision,
            backend,
            checkpoint_every,
            compiled: Mutex::new(BTreeMap::new()),
            split: Mutex::new(None),
            compiled_forward: Mutex::new(BTreeMap::new()),
            compiled_backward: Mutex::new(BTreeMap::new()),
        })
    }

    /// The program's outputs: the names cotangents may be given under.
    pub fn outputs(&self) -> Vec<&str> {
        self.outputs.iter().map(|(o, _)| o.as_str()).collect()
    }

    /// The names of the inputs that get a gradient (every input not declared `int`).
    pub fn differentiable_inputs(&self) -> Vec<&str> {
        self.gradient
            .graph
            .outputs()
            .iter()
            .map(|o| o.name.as_str())
            .collect()
    }

    /// The gradient program (graph IR, before binding).
    pub fn gradient_program(&self) -> &Program {
        &self.gradient
    }

    /// The vector-Jacobian product `d/d(input) Σ_o ⟨cotangents[o], o⟩` for every
    /// floating-point input, by the input's name, given every program input by name and the
    /// cotangents of any subset of the outputs (each of its output's shape; the others are
    /// zero). Tensors are converted to the program's precision.
    pub fn vjp(
        &self,
        inputs: &BTreeMap<String, Tensor>,
        cotangents: &BTreeMap<String, Tensor>,
    ) -> Result<BTreeMap<String, Tensor>, GradError> {
        let cts = self.cotangent_inputs(inputs, cotangents)?;
        let mut all = inputs.clone();
        all.extend(cts);
        run_cached(self, &self.compiled, &self.gradient, all)
    }

    /// The program's outputs for `inputs` (every input by name), and what the backward part
    /// needs to compute the same VJP as [`GradProgram::vjp`] later, for cotangents computed
    /// from those outputs ([`GradProgram::backward`]): a training step's forward, without a
    /// second forward in its backward. The inputs are taken (not copied): a caller that needs
    /// them again for [`GradProgram::backward`] passes a clone, or its own copy again.
    pub fn forward(
        &self,
        inputs: BTreeMap<String, Tensor>,
    ) -> Result<(BTreeMap<String, Tensor>, Residuals), GradError> {
        let split = self.split()?;
        let mut outputs = run_cached(self, &self.compiled_forward, &split.forward, inputs)?;
        let mut tensors = BTreeMap::new();
        for name in &split.residuals {
            let t = outputs.remove(name).ok_or_else(|| {
                GradError::Internal(format!("the forward part did not return `{name}`"))
            })?;
            tensors.insert(name.clone(), t);
        }
        Ok((outputs, Residuals { tensors }))
    }

    /// The VJP of [`GradProgram::vjp`] from what [`GradProgram::forward`] kept: `inputs` are
    /// the same inputs (the backward reads some of them again), `cotangents` those of any
    /// subset of the outputs. Inputs and residuals are taken, not copied (the residuals of a
    /// training step are gigabytes).
    pub fn backward(
        &self,
        inputs: BTreeMap<String, Tensor>,
        mut residuals: Residuals,
        cotangents: &BTreeMap<String, Tensor>,
    ) -> Result<BTreeMap<String, Tensor>, GradError> {
        let split = self.split()?;
        let cts = self.cotangent_inputs(&inputs, cotangents)?;
        let graph = &split.backward.graph;
        let mut all: BTreeMap<String, Tensor> = inputs
            .into_iter()
            .filter(|(name, _)| graph.input_by_name(name).is_some())
            .collect();
        for name in &split.residuals {
            let t = residuals
                .tensors
                .remove(name)
                .ok_or_else(|| GradError::MissingResidual(name.clone()))?;
            all.insert(name.clone(), t);
        }
        if let Some(name) = residuals.tensors.keys().next() {
            return Err(GradError::UnknownResidual(name.clone()));
        }
        all.extend(cts);
        run_cached(self, &self.compiled_backward, &split.backward, all)
    }

    /// The names of the residuals [`GradProgram::forward`] keeps, in the order of
    /// [`Residuals::tensors`].
    pub fn residual_names(&self) -> Result<Vec<String>, GradError> {
        let mut names = self.split()?.residuals.clone();
        names.sort();
        Ok(names)
    }

    /// The shapes of the residuals [`GradProgram::forward`] keeps for inputs of `shapes`
    /// (every input by name), in the order of [`GradProgram::residual_names`], without running
    /// anything.
    pub fn residual_shapes(
        &self,
        shapes: &BTreeMap<String, Vec<usize>>,
    ) -> Result<Vec<Vec<usize>>, GradError> {
        let split = self.split()?;
        let (bound, _) =
            crate::bind_shapes(&split.forward, shapes, &self.settings).map_err(GradError::Bind)?;
        self.residual_names()?
            .iter()
            .map(|name| {
                bound
                    .graph
                    .output_by_name(name)
                    .and_then(|id| bound.graph.tensor_type(id))
                    .and_then(|t| t.shape.to_known())
                    .ok_or_else(|| {
                        GradError::Internal(format!("the residual `{name}` has no known shape"))
                    })
            })
            .collect()
    }

    /// The forward and backward parts, made on first use.
    fn split(&self) -> Result<std::sync::Arc<SplitGradient>, GradError> {
        let mut split = self.split.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = split.as_ref() {
            return Ok(s.clone());
        }
        let names: Vec<String> = self.outputs.iter().map(|(o, _)| o.clone()).collect();
        let made = std::sync::Arc::new(crate::driver::split_gradient(
            &self.forward,
            &names,
            self.checkpoint_every,
        )?);
        *split = Some(made.clone());
        Ok(made)
    }

    /// Every output's cotangent by its cotangent input's name: the given ones (checked by
    /// name and shape, converted to the program's precision), zeros for the others.
    fn cotangent_inputs(
        &self,
        inputs: &BTreeMap<String, Tensor>,
        cotangents: &BTreeMap<String, Tensor>,
    ) -> Result<BTreeMap<String, Tensor>, GradError> {
        let elem = self.precision.elem();
        for name in cotangents.keys() {
            if !self.outputs.iter().any(|(o, _)| o == name) {
                return Err(GradError::UnknownCotangent {
                    name: name.clone(),
                    outputs: self.outputs().join(", "),
                });
            }
        }
        // The outputs' shapes, from the forward program specialized to the inputs' shapes.
        let (forward, _) =
            crate::bind::check(&self.forward, inputs, &self.settings).map_err(GradError::Bind)?;
        let mut all = BTreeMap::new();
        for (name, input) in &self.outputs {
            let want = forward
                .graph
                .output_by_name(name)
                .and_then(|id| forward.graph.tensor_type(id))
                .and_then(|t| {
                    t.shape
                        .0
                        .iter()
                        .map(|d| d.known())
                        .collect::<Option<Vec<_>>>()
                })
                .ok_or_else(|| {
                    GradError::Internal(format!("the output `{name}` has no known shape"))
                })?;
            let ct = match cotangents.get(name) {
                Some(ct) if ct.shape() != want.as_slice() => {
                    return Err(GradError::CotangentShape {
                        name: name.clone(),
                        got: ct.shape().to_vec(),
                        want,
                    })
                }
                Some(ct) => ct.cast(elem),
                None => Tensor::zeros(want, elem),
            };
            all.insert(input.clone(), ct);
        }
        Ok(all)
    }
}

/// `program` (the gradient program or one of its parts) bound to `tensors` and run, compiled
/// once per set of dimensions into `cache`.
fn run_cached(
    grad: &GradProgram,
    cache: &Mutex<BTreeMap<BTreeMap<String, usize>, Prepared>>,
    program: &Program,
    tensors: BTreeMap<String, Tensor>,
) -> Result<BTreeMap<String, Tensor>, GradError> {
    let elem = grad.precision.elem();
    let bound = bind_owned(program, tensors, &grad.settings, elem).map_err(GradError::Bind)?;
    let mut compiled = cache
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if !compiled.contains_key(&bound.dims) {
        let prepared = prepare(grad.backend, &bound.program)?;
        compiled.insert(bound.dims.clone(), prepared);
    }
    let prepared = compiled
        .get(&bound.dims)
        .ok_or_else(|| GradError::Internal("the compiled program was not kept".into()))?;
    Ok(prepared.run(&bound.inputs)?)
}
