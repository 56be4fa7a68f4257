//! `tttc._native.Program`: a `.ttt` program compiled through the graph stages once, then bound
//! and compiled for a backend once per set of input shapes (kept), and run on the caller's
//! arrays: floating-point inputs in place, outputs written by compiled code straight into new
//! numpy arrays, the GIL released while it runs.

use crate::arrays::{self, Arg};
use crate::errors;
use crate::session::Session;
use crate::vjp::{self, VjpCache, VjpSetup};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tttc::execute::BufferList;
use tttc::ir::{Dim, Program as IrProgram, Setting};
use tttc::passes::pipeline::{Ir, IrForm, Pipeline, Target};
use tttc::runtime::{ElemType, Tensor};
use tttc::{Backend, Precision, Prepared, Settings};

/// A program bound to one set of input shapes and compiled for the backend.
struct Entry {
    /// The program with every dimension known.
    specialized: IrProgram,
    /// The value of every dimension.
    dims: BTreeMap<String, usize>,
    /// The compiled code (one run at a time).
    prepared: Mutex<Prepared>,
    /// Input and output buffers in the order of `run_raw`, for backends that run in place.
    raw: Option<(BufferList, BufferList)>,
    /// Every output's shape (intermediates included).
    output_shapes: BTreeMap<String, Vec<usize>>,
}

/// Input and output addresses handed to compiled code while the GIL is released.
struct RawCall {
    inputs: Vec<*const u8>,
    outputs: Vec<*mut u8>,
}

// SAFETY: the addresses point into buffers that the calling frame keeps exported (inputs) or
// owns (fresh numpy arrays) until the call returns; only the one thread running the call reads
// or writes through them.
unsafe impl Send for RawCall {}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock left the map as it was between two whole operations.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A compiled `.ttt` program (see the Python class `tttc.Program`).
#[pyclass(module = "tttc._native", frozen)]
pub struct Program {
    path: PathBuf,
    /// As lowered from the source, before any stage (`inspect("parse")`, the primal cost).
    lowered: IrProgram,
    /// After every graph stage.
    program: IrProgram,
    settings: Settings,
    precision: Precision,
    backend: Backend,
    compiled: Mutex<HashMap<Vec<Vec<usize>>, Arc<Entry>>>,
    vjps: VjpCache,
    last_addresses: Mutex<BTreeMap<String, usize>>,
}

/// A Python value as a `--set` value.
fn setting(name: &str, value: &Bound<'_, PyAny>) -> PyResult<Setting> {
    if let Ok(b) = value.extract::<bool>() {
        return Ok(Setting::Bool(b));
    }
    if let Ok(v) = value.extract::<f64>() {
        return Ok(Setting::Number(v));
    }
    if let Ok(s) = value.extract::<String>() {
        return Ok(Setting::Text(s));
    }
    Err(errors::type_error(format!(
        "setting `{name}`: expected a number, a bool or a str"
    )))
}

fn settings_of(dict: Option<&Bound<'_, PyDict>>) -> PyResult<Settings> {
    let mut settings = Settings::new();
    if let Some(d) = dict {
        for (k, v) in d.iter() {
            let name: String = k
                .extract()
                .map_err(|_| errors::type_error("setting names must be str"))?;
            let s = setting(&name, &v)?;
            settings.insert(name, s);
        }
    }
    Ok(settings)
}

fn parse_backend(name: &str) -> PyResult<Backend> {
    let backend = match name {
        "llvm" => Backend::Llvm,
        "cranelift" => Backend::Cranelift,
        "interp" => Backend::Interp,
        "ptx" => Backend::Ptx,
        other => {
            return Err(errors::value(format!(
                "unknown backend `{other}`; the backends are llvm, cranelift, interp, ptx"
            )))
        }
    };
    if !backend.is_built() {
        return Err(errors::value(tttc::ExecError::NotBuilt(backend.feature())));
    }
    Ok(backend)
}

fn parse_precision(name: &str) -> PyResult<Precision> {
    match name {
        "float32" | "f32" => Ok(Precision::F32),
        "float64" | "f64" => Ok(Precision::F64),
        other => Err(errors::value(format!(
            "unknown precision `{other}`; use \"float32\" or \"float64\""
        ))),
    }
}

/// A shape with its symbols as str and known extents as int.
fn shape_list<'py>(py: Python<'py>, dims: &[Dim]) -> PyResult<Bound<'py, PyList>> {
    let items: Vec<Bound<'py, PyAny>> = dims
        .iter()
        .map(|d| match d {
            Dim::Known(n) => n.into_pyobject(py).map(|o| o.into_any()),
            Dim::Sym(s) => s.into_pyobject(py).map(|o| o.into_any()),
        })
        .collect::<Result<_, _>>()?;
    PyList::new(py, items)
}

/// Shapes from a dict of name → shape (a sequence of ints).
fn shapes_of(dict: &Bound<'_, PyDict>) -> PyResult<BTreeMap<String, Vec<usize>>> {
    let mut shapes = BTreeMap::new();
    for (k, v) in dict.iter() {
        let name: String = k.extract()?;
        let shape: Vec<usize> = v.extract().map_err(|_| {
            errors::type_error(format!("`{name}`: a shape is a sequence of ints >= 0"))
        })?;
        shapes.insert(name, shape);
    }
    Ok(shapes)
}

impl Program {
    fn elem(&self) -> ElemType {
        self.precision.elem()
    }

    /// Every input of the program from `inputs` (copies in the run's element type, or with
    /// `views` views of the caller's arrays); a missing one is a `TypeError` naming it.
    fn every_input(
        &self,
        py: Python<'_>,
        inputs: &Bound<'_, PyDict>,
        views: bool,
    ) -> PyResult<BTreeMap<String, Tensor>> {
        let objects: BTreeMap<String, Bound<'_, PyAny>> = inputs.extract()?;
        let tensors = arrays::to_tensors(py, &self.program, &objects, self.elem(), views)?;
        let missing: Vec<String> = arrays::input_names(&self.program)
            .into_iter()
            .filter(|n| !tensors.contains_key(n))
            .collect();
        if !missing.is_empty() {
            return Err(errors::type_error(format!(
                "missing input(s): {}",
                missing.join(", ")
            )));
        }
        Ok(tensors)
    }

    /// Floating-point arrays by name (`what` names them in messages), as tensors.
    fn float_tensors(
        &self,
        py: Python<'_>,
        dict: &Bound<'_, PyDict>,
        what: &str,
    ) -> PyResult<BTreeMap<String, Tensor>> {
        let objects: BTreeMap<String, Bound<'_, PyAny>> = dict.extract()?;
        let mut out = BTreeMap::new();
        for (name, obj) in &objects {
            let arg = arrays::borrow_float(&format!("{what} `{name}`"), obj, self.elem())?;
            out.insert(name.clone(), arg.to_tensor(py)?);
        }
        Ok(out)
    }

    /// What the gradient entry points need, for checkpoint group `checkpoint_every`.
    fn vjp_setup(&self, checkpoint_every: usize) -> PyResult<VjpSetup<'_>> {
        if checkpoint_every == 0 {
            return Err(errors::value("checkpoint_every must be at least 1"));
        }
        Ok(VjpSetup {
            program: &self.program,
            settings: &self.settings,
            precision: self.precision,
            backend: self.backend,
            checkpoint_every,
        })
    }

    /// The entry for `shapes` (every input's), binding and compiling it on first use with the
    /// GIL released.
    fn entry(&self, py: Python<'_>, shapes: &BTreeMap<String, Vec<usize>>) -> PyResult<Arc<Entry>> {
        let key: Vec<Vec<usize>> = shapes.values().cloned().collect();
        if let Some(e) = lock(&self.compiled).get(&key) {
            return Ok(e.clone());
        }
        let (specialized, dims) =
            tttc::bind_shapes(&self.program, shapes, &self.settings).map_err(errors::bind)?;
        let backend = self.backend;
        let (prepared, specialized) = py
            .detach(move || tttc::prepare(backend, &specialized).map(|p| (p, specialized)))
            .map_err(errors::exec)?;
        let mut output_shapes = BTreeMap::new();
        for o in specialized.graph.outputs() {
            let shape = specialized
                .graph
                .tensor_type(o.node)
                .and_then(|t| t.shape.to_known())
                .ok_or_else(|| errors::internal(format!("output `{}` has no shape", o.name)))?;
            output_shapes.insert(o.name.clone(), shape);
        }
        let raw = prepared.raw_buffers();
        let entry = Arc::new(Entry {
            specialized,
            dims,
            prepared: Mutex::new(prepared),
            raw,
            output_shapes,
        });
        lock(&self.compiled).insert(key, entry.clone());
        Ok(entry)
    }

    /// Reads the call's tensors: every input present, each of the right kind.
    fn arguments(&self, tensors: &Bound<'_, PyDict>) -> PyResult<BTreeMap<String, Arg>> {
        let objects: BTreeMap<String, Bound<'_, PyAny>> = tensors.extract()?;
        let args = arrays::read_inputs(&self.program, &objects, self.elem())?;
        let missing: Vec<String> = arrays::input_names(&self.program)
            .into_iter()
            .filter(|n| !args.contains_key(n))
            .collect();
        if !missing.is_empty() {
            return Err(errors::type_error(format!(
                "missing input(s): {}",
                missing.join(", ")
            )));
        }
        Ok(args)
    }

    fn keep(&self, name: &str, intermediates: bool) -> bool {
        intermediates || !self.program.intermediates.iter().any(|n| n == name)
    }

    /// The program after graph stage `stage`, from the lowered one.
    fn after_graph_stage(&self, py: Python<'_>, stage: &str) -> PyResult<IrProgram> {
        let lowered = self.lowered.clone();
        let stage = stage.to_string();
        py.detach(move || tttc::driver::optimize(lowered, Some(&stage), false))
            .map(|c| c.program)
            .map_err(|e| errors::driver(py, e))
    }
}

#[pymethods]
impl Program {
    /// Compiles `path` through the graph stages with `set` (name → number, bool or str) and
    /// `config` (a config.json path, or a dict: keys naming a setting are used, others
    /// ignored; a value that differs from `set` is an error).
    #[staticmethod]
    #[pyo3(signature = (path, config=None, set=None, backend="llvm", precision="float32"))]
    fn load(
        py: Python<'_>,
        path: PathBuf,
        config: Option<&Bound<'_, PyAny>>,
        set: Option<&Bound<'_, PyDict>>,
        backend: &str,
        precision: &str,
    ) -> PyResult<Program> {
        let backend = parse_backend(backend)?;
        let precision = parse_precision(precision)?;
        let set = settings_of(set)?;
        let driver = |e| errors::driver(py, e);
        let (lowered, settings) = match config {
            None => {
                let (p, s) = (path.clone(), set.clone());
                let lowered = py
                    .detach(move || tttc::lower_file(&p, precision, &s))
                    .map_err(driver)?;
                (lowered, set)
            }
            Some(config) => {
                let dict = config.cast::<PyDict>().ok();
                let file: Option<PathBuf> = match dict {
                    Some(_) => None,
                    None => Some(config.extract().map_err(|_| {
                        errors::type_error("config: expected a path to a config.json or a dict")
                    })?),
                };
                // The config's keys are matched against the program's names until applying
                // them brings no new ones (the library's rule, as `tttc --config` applies it).
                let read = |lowered: &IrProgram| match (&dict, &file) {
                    (Some(dict), _) => config_dict_settings(dict, lowered).map_err(LoadError::Py),
                    (None, Some(file)) => Ok(tttc::read_config_file(file, lowered)?),
                    (None, None) => Ok(Settings::new()),
                };
                tttc::lower_with_config(&path, precision, &set, read).map_err(|e| match e {
                    LoadError::Driver(e) => driver(e),
                    LoadError::Py(e) => e,
                })?
            }
        };
        if let Ok(untrained) = tttc::passes::autodiff::untrained_states(&lowered) {
            for state in untrained {
                let warning = py.get_type::<pyo3::exceptions::PyUserWarning>();
                PyErr::warn(py, &warning, &std::ffi::CString::new(state.to_string())?, 1)?;
            }
        }
        let program = {
            let l = lowered.clone();
            py.detach(move || tttc::driver::optimize(l, None, false))
                .map_err(driver)?
                .program
        };
        Ok(Program {
            path,
            lowered,
            program,
            settings,
            precision,
            backend,
            compiled: Mutex::new(HashMap::new()),
            vjps: VjpCache::default(),
            last_addresses: Mutex::new(BTreeMap::new()),
        })
    }

    /// The program's file.
    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// `"float32"` or `"float64"`.
    #[getter]
    fn precision(&self) -> &'static str {
        arrays::dtype_name(self.elem())
    }

    /// The backend's name.
    #[getter]
    fn backend(&self) -> &'static str {
        self.backend.name()
    }

    /// `(name, shape, dtype)` of every input, in order: shapes hold ints and symbol names,
    /// dtypes are the precision's, or `"int64"` for `int` inputs (int32 is accepted too).
    #[getter]
    fn inputs<'py>(&self, py: Python<'py>) -> PyResult<Vec<(String, Bound<'py, PyList>, String)>> {
        let g = &self.program.graph;
        let mut out = Vec::new();
        for &id in g.inputs() {
            let (Some(name), Some(ty)) = (g.input_name(id), g.tensor_type(id)) else {
                continue;
            };
            let dtype = if self.program.integer_inputs.iter().any(|i| i.name == name) {
                "int64"
            } else {
                arrays::dtype_name(self.elem())
            };
            out.push((name.to_string(), shape_list(py, &ty.shape.0)?, dtype.into()));
        }
        Ok(out)
    }

    /// The dimensions known before any input is seen: integer configs (given or default),
    /// dimensions given as settings, and the derived dimensions these determine.
    fn known_dims(&self) -> BTreeMap<String, usize> {
        let mut dims = self.program.int_configs();
        for (name, value) in &self.settings {
            let n = value.number().filter(|v| v.fract() == 0.0 && *v >= 1.0);
            if let Some(n) = n {
                dims.entry(name.clone()).or_insert(n as usize);
            }
        }
        // A derived dimension may use another: evaluate until nothing new is found.
        loop {
            let before = dims.len();
            for derived in &self.program.derived_dims {
                if !dims.contains_key(&derived.name) {
                    if let Ok(n) = derived.expr.eval(&dims) {
                        dims.insert(derived.name.clone(), n);
                    }
                }
            }
            if dims.len() == before {
                return dims;
            }
        }
    }

    /// `(name, shape, dtype)` of every output (intermediates too when asked), in order.
    #[pyo3(signature = (intermediates=false))]
    fn outputs<'py>(
        &self,
        py: Python<'py>,
        intermediates: bool,
    ) -> PyResult<Vec<(String, Bound<'py, PyList>, String)>> {
        let g = &self.program.graph;
        let mut out = Vec::new();
        for o in g.outputs() {
            if !self.keep(&o.name, intermediates) {
                continue;
            }
            let Some(ty) = g.tensor_type(o.node) else {
                continue;
            };
            out.push((
                o.name.clone(),
                shape_list(py, &ty.shape.0)?,
                arrays::dtype_name(self.elem()).into(),
            ));
        }
        Ok(out)
    }

    /// The shape of every output for inputs of `shapes` (name → shape), without running or
    /// compiling anything.
    fn output_shapes(&self, shapes: &Bound<'_, PyDict>) -> PyResult<BTreeMap<String, Vec<usize>>> {
        let shapes = shapes_of(shapes)?;
        let (specialized, _) =
            tttc::bind_shapes(&self.program, &shapes, &self.settings).map_err(errors::bind)?;
        let mut out = BTreeMap::new();
        for o in specialized.graph.outputs() {
            if !self.keep(&o.name, false) {
                continue;
            }
            if let Some(shape) = specialized
                .graph
                .tensor_type(o.node)
                .and_then(|t| t.shape.to_known())
            {
                out.insert(o.name.clone(), shape);
            }
        }
        Ok(out)
    }

    /// Runs the program on `tensors` (name → array) and returns its outputs as numpy arrays.
    #[pyo3(signature = (tensors, intermediates=false))]
    fn run<'py>(
        &self,
        py: Python<'py>,
        tensors: &Bound<'py, PyDict>,
        intermediates: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let args = self.arguments(tensors)?;
        let shapes: BTreeMap<String, Vec<usize>> = args
            .iter()
            .map(|(n, a)| (n.clone(), a.shape().to_vec()))
            .collect();
        let entry = self.entry(py, &shapes)?;
        let ints: BTreeMap<String, Tensor> = args
            .iter()
            .filter_map(|(n, a)| match a {
                Arg::Converted(t) => Some((n.clone(), t.clone())),
                Arg::Borrowed { .. } => None,
            })
            .collect();
        tttc::check_values(&self.program, &entry.specialized, &ints, &entry.dims)
            .map_err(errors::bind)?;
        let result = PyDict::new(py);
        let Some((raw_inputs, raw_outputs)) = &entry.raw else {
            // Backends that run on tensors only (the interpreter, the GPU): copies.
            let tensors: BTreeMap<String, Tensor> = args
                .iter()
                .map(|(n, a)| Ok((n.clone(), a.to_tensor(py)?)))
                .collect::<PyResult<_>>()?;
            let e = entry.clone();
            let outputs = py
                .detach(move || lock(&e.prepared).run(&tensors))
                .map_err(errors::exec)?;
            for (name, t) in &outputs {
                if self.keep(name, intermediates) {
                    result.set_item(name, arrays::to_numpy(py, t)?)?;
                }
            }
            return Ok(result);
        };
        let mut call = RawCall {
            inputs: Vec::with_capacity(raw_inputs.len()),
            outputs: Vec::with_capacity(raw_outputs.len()),
        };
        let mut addresses = BTreeMap::new();
        for (name, _) in raw_inputs {
            let arg = args
                .get(name)
                .ok_or_else(|| errors::internal(format!("no buffer for input `{name}`")))?;
            addresses.insert(name.clone(), arg.ptr() as usize);
            call.inputs.push(arg.ptr());
        }
        let mut arrays_out = Vec::with_capacity(raw_outputs.len());
        for (name, count) in raw_outputs {
            let shape = entry
                .output_shapes
                .get(name)
                .ok_or_else(|| errors::internal(format!("no shape for output `{name}`")))?;
            if shape.iter().product::<usize>() != *count {
                return Err(errors::internal(format!(
                    "output `{name}`: shape {shape:?} but {count} elements"
                )));
            }
            let (array, ptr) = arrays::empty(py, shape, self.elem())?;
            addresses.insert(name.clone(), ptr as usize);
            call.outputs.push(ptr);
            arrays_out.push((name, array));
        }
        *lock(&self.last_addresses) = addresses;
        let e = entry.clone();
        py.detach(move || {
            // The whole struct, not its fields (closures capture fields separately).
            let call = call;
            let prepared = lock(&e.prepared);
            // SAFETY: bind_shapes checked every input's shape against the program, so each
            // buffer holds its element count (run_raw checks the counts again); inputs are
            // C-contiguous buffers of the run's element type kept exported by `args` until
            // this returns; outputs are fresh numpy arrays of their shape, distinct from each
            // other and from every input.
            unsafe { prepared.run_raw(&call.inputs, &call.outputs) }
        })
        .map_err(errors::exec)?;
        drop(args);
        for (name, array) in arrays_out {
            if self.keep(name, intermediates) {
                result.set_item(name, array)?;
            }
        }
        Ok(result)
    }

    /// The addresses the last in-place run read its inputs from and wrote its outputs to (for
    /// tests showing that inputs are not copied).
    fn last_addresses(&self) -> BTreeMap<String, usize> {
        lock(&self.last_addresses).clone()
    }

    /// How many input-shape specializations are compiled.
    fn compiled_count(&self) -> usize {
        lock(&self.compiled).len()
    }

    /// The vector-Jacobian product: for every floating-point input, the gradient of
    /// `Σ_o ⟨cotangents[o], o⟩`.
    #[pyo3(signature = (inputs, cotangents, checkpoint_every=4))]
    fn vjp<'py>(
        &self,
        py: Python<'py>,
        inputs: &Bound<'py, PyDict>,
        cotangents: &Bound<'py, PyDict>,
        checkpoint_every: usize,
    ) -> PyResult<Bound<'py, PyDict>> {
        let tensors = self.every_input(py, inputs, false)?;
        let cts = self.float_tensors(py, cotangents, "cotangent")?;
        let setup = self.vjp_setup(checkpoint_every)?;
        let cache = &self.vjps;
        let grads = py
            .detach(|| vjp::vjp(&setup, cache, &tensors, &cts))
            .map_err(|e| errors::grad(py, e))?;
        arrays::to_dict(py, &grads)
    }

    /// A training step's forward: the outputs (as `run` returns them, a dict) and a list of
    /// residuals, the forward values `backward` needs to compute `vjp`'s result without a
    /// second forward.
    #[pyo3(signature = (inputs, checkpoint_every=4))]
    fn forward_keeping<'py>(
        &self,
        py: Python<'py>,
        inputs: &Bound<'py, PyDict>,
        checkpoint_every: usize,
    ) -> PyResult<(Bound<'py, PyDict>, Vec<Bound<'py, PyAny>>)> {
        let tensors = self.every_input(py, inputs, true)?;
        let setup = self.vjp_setup(checkpoint_every)?;
        let cache = &self.vjps;
        let (mut outputs, residuals) = py
            .detach(|| vjp::forward(&setup, cache, tensors))
            .map_err(|e| errors::grad(py, e))?;
        outputs.retain(|name, _| self.keep(name, false));
        // One at a time, each freed once copied: not twice the residuals at once.
        let residuals = residuals
            .into_iter()
            .map(|t| arrays::to_numpy(py, &t))
            .collect::<PyResult<Vec<_>>>()?;
        Ok((arrays::to_dict(py, &outputs)?, residuals))
    }

    /// `vjp`'s result from the residuals `forward_keeping` returned for the same inputs.
    #[pyo3(signature = (inputs, residuals, cotangents, checkpoint_every=4))]
    fn backward<'py>(
        &self,
        py: Python<'py>,
        inputs: &Bound<'py, PyDict>,
        residuals: Vec<Bound<'py, PyAny>>,
        cotangents: &Bound<'py, PyDict>,
        checkpoint_every: usize,
    ) -> PyResult<Bound<'py, PyDict>> {
        let tensors = self.every_input(py, inputs, true)?;
        let cts = self.float_tensors(py, cotangents, "cotangent")?;
        // Views of the caller's arrays, not copies: a training step's residuals are gigabytes.
        let kept = residuals
            .iter()
            .enumerate()
            .map(|(k, obj)| {
                arrays::borrow_float(&format!("residual {k}"), obj, self.elem())?.into_view(py)
            })
            .collect::<PyResult<Vec<_>>>()?;
        let setup = self.vjp_setup(checkpoint_every)?;
        let cache = &self.vjps;
        let grads = py
            .detach(|| vjp::backward(&setup, cache, tensors, kept, &cts))
            .map_err(|e| errors::grad(py, e))?;
        arrays::to_dict(py, &grads)
    }

    /// The shapes of the residuals `forward_keeping` returns for inputs of `shapes`, in order,
    /// without running anything.
    #[pyo3(signature = (shapes, checkpoint_every=4))]
    fn residual_shapes(
        &self,
        py: Python<'_>,
        shapes: &Bound<'_, PyDict>,
        checkpoint_every: usize,
    ) -> PyResult<Vec<Vec<usize>>> {
        let shapes = shapes_of(shapes)?;
        let setup = self.vjp_setup(checkpoint_every)?;
        let cache = &self.vjps;
        py.detach(|| vjp::residual_shapes(&setup, cache, &shapes))
            .map_err(|e| errors::grad(py, e))
    }

    /// `{"primal": {"flops", "bytes"}, "optimized": {...}}` for inputs of `shapes`.
    fn cost<'py>(
        &self,
        py: Python<'py>,
        shapes: &Bound<'py, PyDict>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let shapes = shapes_of(shapes)?;
        let primal = self.after_graph_stage(py, "primal")?;
        let result = PyDict::new(py);
        for (label, program) in [("primal", &primal), ("optimized", &self.program)] {
            let (bound, _) =
                tttc::bind_shapes(program, &shapes, &self.settings).map_err(errors::bind)?;
            let kernels =
                tttc::driver::kernel_program(&bound, Target::Cpu).map_err(errors::internal)?;
            let cost =
                tttc::passes::cost::cost_of(&bound, &kernels).map_err(|e| errors::internal(e.0))?;
            let d = PyDict::new(py);
            d.set_item("flops", cost.flops)?;
            d.set_item("bytes", cost.bytes)?;
            result.set_item(label, d)?;
        }
        Ok(result)
    }

    /// The program after `stage` (`None`: after every graph stage; `"parse"`; a graph stage;
    /// a kernel stage, which needs `shapes`) as `"text"`, `"json"` or `"dot"` (graph IR only).
    #[pyo3(signature = (stage=None, format="text", shapes=None))]
    fn inspect(
        &self,
        py: Python<'_>,
        stage: Option<&str>,
        format: &str,
        shapes: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<String> {
        let graph_stages = tttc::passes::pipeline::graph_stage_names();
        let every = Pipeline::every_stage();
        let ir = match stage {
            None => Ir::Graph(self.program.clone()),
            Some("parse") => Ir::Graph(self.lowered.clone()),
            Some(s) if graph_stages.contains(&s) => Ir::Graph(self.after_graph_stage(py, s)?),
            Some(s)
                if every
                    .stages()
                    .iter()
                    .any(|st| st.name == s && st.output() == IrForm::Kernel) =>
            {
                let Some(shapes) = shapes else {
                    return Err(errors::value(format!(
                        "the kernel stage `{s}` needs the input shapes: pass shapes={{name: shape}}"
                    )));
                };
                let shapes = shapes_of(shapes)?;
                let (bound, _) = tttc::bind_shapes(&self.program, &shapes, &self.settings)
                    .map_err(errors::bind)?;
                let target = if s == "gpu_schedule" {
                    Target::Gpu(Default::default())
                } else {
                    Target::Cpu
                };
                let stage = s.to_string();
                let lowered = py
                    .detach(move || {
                        tttc::driver::lower(bound, target, Some(&stage), false, &mut [])
                    })
                    .map_err(|e| errors::driver(py, e))?;
                Ir::Kernel(lowered.program)
            }
            Some(other) => {
                let names: Vec<&str> = std::iter::once("parse")
                    .chain(every.stage_names())
                    .collect();
                return Err(errors::value(format!(
                    "unknown stage `{other}`; the stages are: {}",
                    names.join(", ")
                )));
            }
        };
        match (format, &ir) {
            ("text", ir) => Ok(ir.to_text()),
            ("json", Ir::Graph(p)) => serde_json::to_string_pretty(p).map_err(errors::internal),
            ("json", Ir::Kernel(k)) => serde_json::to_string_pretty(k).map_err(errors::internal),
            ("dot", Ir::Graph(p)) => Ok(tttc::ir::dot::program_to_dot(p)),
            ("dot", Ir::Kernel(_)) => Err(errors::value(
                "format \"dot\" prints graph IR; the kernel stages print as \"text\" or \"json\"",
            )),
            (other, _) => Err(errors::value(format!(
                "unknown format `{other}`; use \"text\", \"json\" or \"dot\""
            ))),
        }
    }

    /// A streaming session with `weights` (every input that does not run along the sequence).
    fn session(&self, py: Python<'_>, weights: &Bound<'_, PyDict>) -> PyResult<Session> {
        let objects: BTreeMap<String, Bound<'_, PyAny>> = weights.extract()?;
        let tensors = arrays::to_tensors(py, &self.program, &objects, self.elem(), false)?;
        Session::new(
            self.backend,
            self.program.clone(),
            tensors,
            self.settings.clone(),
            self.precision,
        )
    }

    fn __repr__(&self) -> String {
        format!(
            "Program({:?}, backend={:?}, precision={:?})",
            self.path.display().to_string(),
            self.backend.name(),
            arrays::dtype_name(self.elem())
        )
    }
}

/// Why [`Program::load`] could not settle a config: the library's error or a Python one (a
/// config dict value of the wrong kind).
enum LoadError {
    Driver(tttc::DriverError),
    Py(PyErr),
}

impl From<tttc::DriverError> for LoadError {
    fn from(e: tttc::DriverError) -> Self {
        LoadError::Driver(e)
    }
}

/// The values of a config dict's keys that name one of `program`'s settings. Other keys are
/// ignored whatever their value (a Hugging Face config holds lists such as `architectures`).
fn config_dict_settings(dict: &Bound<'_, PyDict>, program: &IrProgram) -> PyResult<Settings> {
    let names = program.setting_names();
    let mut used = Settings::new();
    for (k, v) in dict.iter() {
        let name: String = k
            .extract()
            .map_err(|_| errors::type_error("config keys must be str"))?;
        if names.contains(&name) {
            let s = setting(&name, &v)?;
            used.insert(name, s);
        }
    }
    Ok(used)
}
