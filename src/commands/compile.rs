//! `tttc compile`: an ahead-of-time shared library with a C ABI and a generated C header.

use super::{
    compile, load_inputs, tensor_cores, Failure, PrecisionArg, SettingArgs, TensorCoresArg,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tttc::ir::Program;
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
    /// x86_64: a session library (prefill any number of tokens, then decode, save and load the
    /// state) instead of one whole-sequence call: every dimension but the sequence's is fixed
    /// (`--config`, `--set B=1`), the sequence length is free. See docs/backends.md.
    #[arg(long)]
    session: bool,
    /// With --session: take the weights' dimensions from this safetensors file (what a
    /// config does not say, such as an inner MLP's width).
    #[arg(long, requires = "session")]
    weights: Option<PathBuf>,
    /// With --session: the batch sizes the library runs, comma-separated (e.g. 1,2,4,8): a
    /// session picks one of them (`tttc_session_set_batch`). Each size adds its own pieces.
    /// Default: the batch `--set` gives, else 1.
    #[arg(long, requires = "session", value_delimiter = ',', num_args = 1..)]
    batch: Vec<usize>,
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
    program.graph.input_shapes(&dims).map_err(|(name, s)| {
        Failure::user(format!(
            "the shape of `{name}` needs dimension `{s}`: give --inputs FILE or --set {s}=N"
        ))
    })
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
        Some(path) => {
            let file = tttc::runtime::read_safetensors_with_ints(path)
                .map_err(|e| Failure::user(format!("reading {}: {e}", path.display())))?;
            let floats = file
                .floats
                .iter()
                .map(|(n, t)| (n.clone(), t.shape().to_vec()));
            let ints = file.ints.iter().map(|(n, t)| (n.clone(), t.shape.clone()));
            floats.chain(ints).collect()
        }
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
    if args.session {
        if !matches!(args.target, Target::X86_64) {
            return Err(Failure::user("--session applies to --target x86_64 only"));
        }
        if args.inputs.is_some() {
            return Err(Failure::user(
                "--session takes its shapes from --config/--set (the sequence length stays free), not --inputs",
            ));
        }
        let known = match &args.weights {
            Some(path) => tttc::runtime::read_safetensors_with_ints(path)
                .map_err(|e| Failure::user(format!("reading {}: {e}", path.display())))?
                .floats
                .iter()
                .map(|(n, t)| (n.clone(), t.shape().to_vec()))
                .collect(),
            None => BTreeMap::new(),
        };
        return build_session_library(
            &compiled.program,
            &settings,
            &known,
            precision,
            &args.batch,
            args.output.as_deref(),
        );
    }
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

/// Where a library goes: the library (`-o`, else `lib<name>.so`), its folder, and the header's
/// name and path beside it.
#[cfg(feature = "llvm")]
struct LibraryPaths {
    library: PathBuf,
    dir: PathBuf,
    header_name: String,
    header: PathBuf,
}

#[cfg(feature = "llvm")]
fn library_paths(name: &str, output: Option<&Path>) -> LibraryPaths {
    let library = output
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(format!("lib{name}.so")));
    let dir = library
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let header_name = format!("{name}.h");
    let header = dir.join(&header_name);
    LibraryPaths {
        library,
        dir,
        header_name,
        header,
    }
}

#[cfg(feature = "llvm")]
fn build_library(program: &Program, output: Option<&Path>) -> Result<(), Failure> {
    use tttc::backends::aot;
    let name = aot::c_identifier(&program.name);
    let LibraryPaths {
        library,
        dir,
        header_name,
        header,
    } = library_paths(&name, output);
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

/// Writes a session library for `program` (after the pipeline): its pieces compiled to
/// objects, its header and shim, linked with the run-time static library.
#[cfg(feature = "llvm")]
fn build_session_library(
    program: &Program,
    settings: &tttc::Settings,
    known: &BTreeMap<String, Vec<usize>>,
    precision: Precision,
    batch: &[usize],
    output: Option<&Path>,
) -> Result<(), Failure> {
    use tttc::aot_session::{piece_symbol, session_header, session_pieces, session_shim};
    use tttc::backends::aot;
    let runtime = runtime_library()?;
    let name = aot::c_identifier(&program.name);
    let LibraryPaths {
        library,
        dir,
        header_name,
        header,
    } = library_paths(&name, output);
    let recording = super::progress::Progress::spinner("recording the session's pieces");
    let recorded = session_pieces(program, settings, known, precision, batch);
    recording.finish();
    let mut pieces = recorded.map_err(|e| {
        if e.is_user_error() {
            Failure::user(e)
        } else {
            Failure::internal(e)
        }
    })?;
    let work = tempfile_dir(&dir)?;
    let result = (|| {
        let mut objects = Vec::new();
        let bar = super::progress::Progress::bar("compiling pieces");
        let total = pieces.programs.len();
        for (i, piece) in pieces.programs.iter().enumerate() {
            bar.set(i, total);
            let object = work.join(format!("piece{i}.o"));
            let sig = tttc::driver::generate_code(
                piece,
                tttc::passes::pipeline::Target::Cpu,
                &|kernels| {
                    tttc::backends::llvm::emit_object_calling_gemm(
                        kernels,
                        &object,
                        &piece_symbol(i),
                    )
                    .map(|()| {
                        let list = |v: Vec<(tttc::ir::kernel::BufId, &str)>| {
                            v.into_iter()
                                .map(|(id, n)| {
                                    let shape = kernels
                                        .buffer(id)
                                        .map(|b| b.layout.shape.clone())
                                        .unwrap_or_default();
                                    (n.to_string(), shape)
                                })
                                .collect::<Vec<_>>()
                        };
                        (list(kernels.inputs()), list(kernels.outputs()))
                    })
                },
            )
            .map_err(Failure::internal)?
            .map_err(Failure::internal)?;
            pieces
                .manifest
                .pieces
                .push(tttc_aot_runtime::manifest::PieceSig {
                    name: piece.name.clone(),
                    key: tttc_aot_runtime::manifest::piece_key(piece),
                    inputs: sig.0,
                    outputs: sig.1,
                });
            objects.push(object);
        }
        let blob = pieces.manifest.to_bytes().map_err(Failure::internal)?;
        let shim = work.join(format!("{name}_session.c"));
        let write = |path: &Path, text: String| {
            std::fs::write(path, text)
                .map_err(|e| Failure::user(format!("cannot write {}: {e}", path.display())))
        };
        write(&header, session_header(&pieces.manifest))?;
        write(&shim, session_shim(&header_name, objects.len(), &blob))?;
        let status =
            std::process::Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
                .args(["-shared", "-fPIC", "-O1", "-I"])
                .arg(&dir)
                .arg("-o")
                .arg(&library)
                .arg(&shim)
                .args(&objects)
                .arg(&runtime)
                // Only the C API is exported: the run time's own symbols (Rust's std included)
                // stay inside the library.
                .args(["-Wl,--gc-sections", "-Wl,--exclude-libs,ALL", "-Wl,-s"])
                .args(["-lpthread", "-ldl", "-lm", "-lgcc_s", "-lc"])
                .status()
                .map_err(|e| {
                    Failure::user(format!(
                        "cannot run the C compiler `cc` (needed to link the library): {e}"
                    ))
                })?;
        if !status.success() {
            return Err(Failure::internal(format!(
                "linking {} failed ({status})",
                library.display()
            )));
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&work);
    result?;
    eprintln!(
        "wrote {} ({} pieces, mini-batch {}) and {}",
        library.display(),
        pieces.programs.len(),
        pieces.manifest.mini_batch,
        header.display()
    );
    Ok(())
}

/// The run time's static library (`libtttc_aot_runtime.a`): `$TTTC_AOT_RUNTIME`, else beside
/// the `tttc` executable (as cargo builds it: `target/<profile>/`, or its `deps/`).
#[cfg(feature = "llvm")]
fn runtime_library() -> Result<PathBuf, Failure> {
    if let Some(p) = std::env::var_os("TTTC_AOT_RUNTIME") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()
        .map_err(|e| Failure::internal(format!("cannot find the tttc executable: {e}")))?;
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    let beside = dir.join("libtttc_aot_runtime.a");
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
    for d in [dir.clone(), dir.join("deps")] {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let f = e.file_name().to_string_lossy().into_owned();
            if f.starts_with("libtttc_aot_runtime") && f.ends_with(".a") {
                if let Ok(t) = e.metadata().and_then(|m| m.modified()) {
                    found.push((t, e.path()));
                }
            }
        }
    }
    found.sort();
    found.pop().map(|(_, p)| p).ok_or_else(|| {
        Failure::user(format!(
            "the session run time {} is missing: build it (`cargo build -p tttc-aot-runtime`) or set TTTC_AOT_RUNTIME",
            beside.display()
        ))
    })
}

#[cfg(not(feature = "llvm"))]
fn build_session_library(
    _: &Program,
    _: &tttc::Settings,
    _: &BTreeMap<String, Vec<usize>>,
    _: Precision,
    _: &[usize],
    _: Option<&Path>,
) -> Result<(), Failure> {
    Err(Failure::user(tttc::ExecError::NotBuilt("llvm")))
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
