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

use crate::bind::{bind, BindError};
use crate::driver::{DriverError, Precision, Settings};
use crate::execute::{prepare, Backend, ExecError, Prepared};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use tttc_ir::Program;
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
    /// Native code per set of dimensions.
    compiled: Mutex<BTreeMap<BTreeMap<String, usize>, Prepared>>,
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
            compiled: Mutex::new(BTreeMap::new()),
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
        let elem = self.precision.elem();
        for name in cotangents.keys() {
            if !self.outputs.iter().any(|(o, _)| o == name) {
                return Err(GradError::UnknownCotangent {
                    name: name.clone(),
                    outputs: self.outputs().join(", "),
                });
            }
        }
        // The outputs' shapes, from the forward program bound to the inputs.
        let forward = bind(&self.forward, inputs, &self.settings, elem).map_err(GradError::Bind)?;
        let mut all = inputs.clone();
        for (name, input) in &self.outputs {
            let want = forward
                .program
                .graph
                .output_by_name(name)
                .and_then(|id| forward.program.graph.tensor_type(id))
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
        let bound = bind(&self.gradient, &all, &self.settings, elem).map_err(GradError::Bind)?;
        let mut compiled = self
            .compiled
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !compiled.contains_key(&bound.dims) {
            let prepared = prepare(self.backend, &bound.program)?;
            compiled.insert(bound.dims.clone(), prepared);
        }
        let prepared = compiled
            .get(&bound.dims)
            .ok_or_else(|| GradError::Internal("the compiled program was not kept".into()))?;
        Ok(prepared.run(&bound.inputs)?)
    }
}
