//! `tttc compile`: an ahead-of-time shared library with a C ABI and a generated C header.

use super::{
    compile, load_inputs, tensor_cores, Failure, PrecisionArg, SettingArgs, TensorCoresArg,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tttc::ir::{Dim, Program};
use tttc::Precision;

/// Targets `tttc compile` can write.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Target {
    /// x86-64 CPUs (this machine's features), a shared library with a C ABI.
    #[value(name = "x86_64")]
    X86_64,
    /// NVIDIA Ampere (A100) GPUs: PTX text, and a JSON manifest of its launches.
    #[value(name = "sm_80")]
    Sm80,
    /// NVIDIA Hopper (H100, H200) GPUs: PTX text, and a JSON manifest of its launches.
    #[value(name = "sm_90")]
    Sm90,
}

/// Arguments of `tttc compile`.
#[derive(clap::Args)]
pub struct Args {
    /// The .ttt program.
    file: PathBuf,
    /// What to compile for.
    #[arg(long, value_enum, default_value_t = Target::X86_64)]
    target: Target,
    /// The shared library to write (default: lib<program>.so); the header is written beside
    /// it as <program>.h. For GPU targets: the PTX file (default: <program>.<target>.ptx),
    /// with its launch manifest beside it as <file>.json.
    #[arg(short = 'o', long = "output")]
    output: Option<PathBuf>,
    /// Take the shapes the library is compiled for from this safetensors file (else every
    /// dimension must be given with --set).
    #[arg(long)]
    inputs: Option<PathBuf>,
    /// Element type of the library's tensors.
    #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
    precision: PrecisionArg,
    /// GPU targets: run matmuls that fit whole tiles on tensor cores (`mma.sync`) with these
    /// input operands and f32 accumulation (f32 only; default: exact f32). See
    /// docs/backends.md for the tolerance.
    #[arg(long, value_enum)]
    tensor_cores: Option<TensorCoresArg>,
    #[command(flatten)]
    settings: SettingArgs,
}

/// Every input's shape, from the dimensions given with --set and the integer configs.
fn shapes_from_settings(
    program: &Program,
    settings: &tttc::Settings,
) -> Result<BTreeMap<String, Vec<usize>>, Failure> {
    let mut dims: BTreeMap<String, usize> = program.int_configs();
    for (k, v) in settings {
        if let Some(v) = v.number() {
            dims.entry(k.clone()).or_insert(v as usize);
        }
    }
    let g = &program.graph;
    let mut out = BTreeMap::new();
    for &id in g.inputs() {
        let (Some(name), Some(ty)) = (g.input_name(id), g.tensor_type(id)) else {
            continue;
        };
        let mut shape = Vec::new();
        for d in &ty.shape.0 {
            match d.substitute(&dims) {
                Dim::Known(n) => shape.push(n),
                Dim::Sym(s) => {
                    return Err(Failure::user(format!(
                        "the shape of `{name}` needs dimension `{s}`: give --inputs FILE or --set {s}=N"
                    )))
                }
            }
        }
        out.insert(name.to_string(), shape);
    }
    Ok(out)
}

/// `program` bound to the shapes of the tensors in `inputs`, or else to the dimensions given
/// with `--set` (a user error naming the first one missing).
pub(super) fn bind_program(
    program: &Program,
    inputs: Option<&Path>,
    settings: &tttc::Settings,
    precision: Precision,
) -> Result<Program, Failure> {
    Ok(match inputs {
        Some(path) => load_inputs(program, path, settings, precision)?.program,
        None => {
            let shapes = shapes_from_settings(program, settings)?;
            tttc::bind_shapes(program, &shapes, settings)
                .map_err(Failure::user)?
                .0
        }
    })
}

/// The gradient program `grad` of `forward` for cotangents of every output, specialized to the
/// shapes of the tensors in `inputs` (the forward program's inputs; each cotangent has its
/// output's shape), or to the dimensions given by `--set` when there is no file.
pub(super) fn bind_gradient(
    forward: &Program,
    grad: &Program,
    inputs: Option<&Path>,
    settings: &tttc::Settings,
) -> Result<Program, Failure> {
    let mut shapes: BTreeMap<String, Vec<usize>> = match inputs {
        Some(path) => tttc::runtime::read_safetensors(path)
            .map_err(|e| Failure::user(format!("reading {}: {e}", path.display())))?
            .iter()
            .map(|(name, t)| (name.clone(), t.shape().to_vec()))
            .collect(),
        None => shapes_from_settings(forward, settings)?,
    };
    let (bound, _) = tttc::bind_shapes(forward, &shapes, settings).map_err(Failure::user)?;
    let outputs: Vec<String> = forward
        .graph
        .outputs()
        .iter()
        .map(|o| o.name.clone())
        .collect();
    let cts = tttc::passes::autodiff::cotangent_input_names(forward, &outputs);
    for (name, ct) in outputs.iter().zip(cts) {
        let shape = bound
            .graph
            .output_by_name(name)
            .and_then(|id| bound.graph.tensor_type(id))
            .and_then(|t| t.shape.to_known())
            .ok_or_else(|| Failure::internal(format!("output `{name}` has no known shape")))?;
        shapes.insert(ct, shape);
    }
    Ok(tttc::bind_shapes(grad, &shapes, settings)
        .map_err(Failure::user)?
        .0)
}

/// Runs `tttc compile`.
pub fn main(args: &Args) -> Result<(), Failure> {
    let precision: Precision = args.precision.into();
    let tc = tensor_cores(args.tensor_cores, precision)?;
    if tc.is_some() && matches!(args.target, Target::X86_64) {
        return Err(Failure::user(
            "--tensor-cores applies to GPU targets (--target sm_80 or sm_90) only",
        ));
    }
    if let Some(out) = &args.output {
        let mut reads = vec![args.file.as_path()];
        reads.extend(args.inputs.as_deref());
        reads.extend(args.settings.config_file());
        super::check_output_path(out, "-o", &reads)?;
    }
    let (compiled, settings) = compile(&args.file, precision, &args.settings, None, false)?;
    let specialized = bind_program(
        &compiled.program,
        args.inputs.as_deref(),
        &settings,
        precision,
    )?;
    match args.target {
        Target::X86_64 => build_library(&specialized, args.output.as_deref()),
        Target::Sm80 => {
            super::compile_ptx::write_ptx(&specialized, "sm_80", tc, args.output.as_deref())
        }
        Target::Sm90 => {
            super::compile_ptx::write_ptx(&specialized, "sm_90", tc, args.output.as_deref())
        }
    }
}

#[cfg(feature = "llvm")]
fn build_library(program: &Program, output: Option<&Path>) -> Result<(), Failure> {
    use tttc::backends::aot;
    let name = aot::c_identifier(&program.name);
    let library = output
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(format!("lib{name}.so")));
    let dir = library
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let header_name = format!("{name}.h");
    let header = dir.join(&header_name);
    let work = tempfile_dir(&dir)?;
    let object = work.join(format!("{name}.o"));
    let shim = work.join(format!("{name}_entry.c"));
    // Code generation is the pipeline's last stage: the object file, and the C header and
    // entry shim of the same kernel program.
    let (header_text, shim_text) =
        tttc::driver::generate_code(program, tttc::passes::pipeline::Target::Cpu, &|kernels| {
            tttc::backends::llvm::emit_object(kernels, &object, &aot::kernel_symbol(kernels))
                .map(|()| (aot::header(kernels), aot::shim(kernels, &header_name)))
        })
        .map_err(Failure::internal)?
        .map_err(Failure::internal)?;
    let write = |path: &Path, text: String| {
        std::fs::write(path, text)
            .map_err(|e| Failure::user(format!("cannot write {}: {e}", path.display())))
    };
    write(&header, header_text)?;
    write(&shim, shim_text)?;
    let status = std::process::Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-shared", "-fPIC", "-O2", "-I"])
        .arg(&dir)
        .arg("-o")
        .arg(&library)
        .arg(&shim)
        .arg(&object)
        .args(["-lpthread", "-lm"])
        .status()
        .map_err(|e| {
            Failure::user(format!(
                "cannot run the C compiler `cc` (needed to link the library): {e}"
            ))
        })?;
    let _ = std::fs::remove_dir_all(&work);
    if !status.success() {
        return Err(Failure::internal(format!(
            "linking {} failed ({status})",
            library.display()
        )));
    }
    eprintln!("wrote {} and {}", library.display(), header.display());
    Ok(())
}

#[cfg(feature = "llvm")]
fn tempfile_dir(near: &Path) -> Result<PathBuf, Failure> {
    let dir = near.join(format!(".tttc-build-{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| Failure::user(format!("cannot create {}: {e}", dir.display())))?;
    Ok(dir)
}

#[cfg(not(feature = "llvm"))]
fn build_library(_: &Program, _: Option<&Path>) -> Result<(), Failure> {
    Err(Failure::user(tttc::ExecError::NotBuilt("llvm")))
}
