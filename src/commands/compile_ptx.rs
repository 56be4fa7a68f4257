//! `tttc compile --target sm_80|sm_90`: PTX for NVIDIA GPUs, and a JSON manifest of how to
//! launch it (kernels in order, grid and block sizes, buffers).

use super::Failure;
use std::path::Path;
use tttc::ir::Program;

/// Writes the PTX of `program` (bound) for `arch` (`sm_80`, `sm_90`), with matmuls on tensor
/// cores in format `tc` when given, to `output` (default `<program>.<arch>.ptx`) and its
/// manifest to `<output>.json`.
#[cfg(feature = "llvm")]
pub fn write_ptx(
    program: &Program,
    arch: &str,
    tc: Option<tttc::gpu::TensorCores>,
    output: Option<&Path>,
) -> Result<(), Failure> {
    let arch = tttc::gpu::PtxArch::parse(arch)
        .ok_or_else(|| Failure::internal(format!("unknown GPU architecture {arch}")))?;
    let m = tttc::gpu::emit_ptx_with(program, arch, tc).map_err(|e| match e {
        tttc::gpu::GpuError::Unsupported(_) => Failure::user(e),
        e => Failure::internal(e),
    })?;
    if let Some(tc) = tc {
        eprintln!(
            "tensor cores ({}): {} matmul loop(s) on mma.sync, the rest exact f32",
            tc.name(),
            m.tensor_core_loops
        );
    }
    let name = tttc::backends::aot::c_identifier(&program.name);
    let path = output
        .map(Path::to_path_buf)
        .unwrap_or_else(|| std::path::PathBuf::from(format!("{name}.{}.ptx", arch.name())));
    let mut manifest_name = path.clone().into_os_string();
    manifest_name.push(".json");
    let manifest = std::path::PathBuf::from(manifest_name);
    // Like the x86_64 target, create the output's folder.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| Failure::user(format!("cannot create {}: {e}", dir.display())))?;
    }
    let write = |p: &Path, text: &str| {
        std::fs::write(p, text)
            .map_err(|e| Failure::user(format!("cannot write {}: {e}", p.display())))
    };
    write(&path, &m.text)?;
    let json = serde_json::to_string_pretty(&tttc::gpu::launch_manifest(&program.name, &m))
        .map_err(Failure::internal)?;
    write(&manifest, &json)?;
    eprintln!(
        "wrote {} ({} kernel launch(es), {} bytes of PTX, {} bytes of shared memory per block at most) and {}",
        path.display(),
        m.launches.len(),
        m.text.len(),
        m.shared_bytes,
        manifest.display()
    );
    Ok(())
}

#[cfg(not(feature = "llvm"))]
pub fn write_ptx(
    _: &Program,
    _: &str,
    _: Option<tttc::gpu::TensorCores>,
    _: Option<&Path>,
) -> Result<(), Failure> {
    Err(Failure::user(tttc::ExecError::NotBuilt("llvm")))
}
