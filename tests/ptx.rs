//! PTX for NVIDIA GPUs without a GPU: `tttc compile --target sm_80|sm_90` on every example
//! (small shapes from --set, both precisions for the inner models, and the benchmark's
//! TTT-Linear/TTT-MLP shapes), each assembled by NVIDIA's `ptxas` when it is installed
//! (`scripts/install-ptxas.sh`, or `$TTTC_PTXAS`). Without ptxas the assembly is skipped with a
//! message — except under CI (`CI=true`), where a missing ptxas fails the test. Also insta
//! snapshots of the PTX of TTT-Linear and TTT-MLP at small shapes (and of TTT-Linear with
//! `--tensor-cores tf32`), the tensor-core PTX of both (it must contain the `mma.sync` of its
//! format, fenced by barriers, and assemble), the refusals of the option, and the clean error of
//! `--backend ptx` on a machine without a CUDA driver.
//!
//! Nothing here runs on a GPU: what the PTX computes is checked by the GPU emulation of the
//! same mapped kernel IR (tests/gpu_mapping.rs); `scripts/gpu_check.sh` runs it on a GPU.
//! PTX needs LLVM (feature `llvm`); the no-driver check needs the runtime (feature `cuda`).

#![cfg(feature = "llvm")]

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `ptxas`: `$TTTC_PTXAS`, else the one `scripts/install-ptxas.sh` installs, else on `PATH`.
fn ptxas() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TTTC_PTXAS") {
        return Some(PathBuf::from(p));
    }
    let venv = root().join(".venv-ptxas/lib");
    if let Ok(entries) = std::fs::read_dir(&venv) {
        for e in entries.flatten() {
            let p = e.path().join("site-packages/nvidia/cuda_nvcc/bin/ptxas");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    Command::new("ptxas")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| PathBuf::from("ptxas"))
}

/// The ptxas to use, or `None` (skip) outside CI; under CI a missing ptxas is a failure.
fn ptxas_or_skip() -> Option<PathBuf> {
    let found = ptxas();
    if found.is_none() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(
            !ci,
            "CI=true but ptxas was not found: run scripts/install-ptxas.sh or set TTTC_PTXAS"
        );
        eprintln!(
            "ptxas not found (run scripts/install-ptxas.sh): PTX is emitted but not assembled"
        );
    }
    found
}

/// One example with small shapes.
struct Case {
    file: &'static str,
    set: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        file: "examples/ttt_linear.ttt",
        set: &["B=1", "H=2", "L=40", "f=16"],
    },
    Case {
        file: "examples/ttt_mlp.ttt",
        set: &["B=1", "H=2", "L=40", "f=16", "h=64"],
    },
    Case {
        file: "examples/ttt_linear_layer.ttt",
        set: &["B=1", "L=48", "hidden_size=64", "f=16", "half=8"],
    },
    Case {
        file: "examples/ttt_mlp_layer.ttt",
        set: &["B=1", "L=48", "hidden_size=64", "f=16", "half=8", "h=64"],
    },
    Case {
        file: "examples/delta_rule.ttt",
        set: &["B=1", "H=2", "L=40", "dk=16", "dv=16"],
    },
    Case {
        file: "examples/mlp3_silu.ttt",
        set: &["B=1", "H=2", "L=40", "d=8", "h=16"],
    },
    // The benchmark's shapes (gpu_check.sh): 12 heads, f = 64, K = 16.
    Case {
        file: "examples/ttt_linear.ttt",
        set: &["B=16", "H=12", "L=2048", "f=64"],
    },
    Case {
        file: "examples/ttt_mlp.ttt",
        set: &["B=16", "H=12", "L=2048", "f=64", "h=256"],
    },
];

/// `tttc compile --target <arch>` of `file`; returns the PTX path.
fn compile(dir: &Path, case: &Case, arch: &str, precision: &str, tag: usize) -> PathBuf {
    compile_with(dir, case, arch, precision, tag, None)
}

/// [`compile`], with `--tensor-cores <tc>` when given.
fn compile_with(
    dir: &Path,
    case: &Case,
    arch: &str,
    precision: &str,
    tag: usize,
    tensor_cores: Option<&str>,
) -> PathBuf {
    let tc = tensor_cores.unwrap_or("exact");
    let out = dir.join(format!("case{tag}.{arch}.{precision}.{tc}.ptx"));
    let mut args: Vec<String> = vec![
        "compile".into(),
        case.file.into(),
        "--target".into(),
        arch.into(),
        "--precision".into(),
        precision.into(),
        "-o".into(),
        out.display().to_string(),
    ];
    for s in case.set {
        args.extend(["--set".to_string(), s.to_string()]);
    }
    if let Some(tc) = tensor_cores {
        args.extend(["--tensor-cores".to_string(), tc.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = tttc(&args);
    assert!(
        r.status.success(),
        "{} {arch} {precision}: {}",
        case.file,
        text(&r)
    );
    out
}

#[test]
fn every_example_assembles_for_sm80_and_sm90() {
    let ptxas = ptxas_or_skip();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut assembled = 0;
    for (i, case) in CASES.iter().enumerate() {
        // f64 too for the small inner models (the math library's f64 paths, f64 shared memory).
        let precisions: &[&str] = if i < 2 || i == 4 {
            &["f32", "f64"]
        } else {
            &["f32"]
        };
        for arch in ["sm_80", "sm_90"] {
            for precision in precisions {
                let ptx = compile(dir.path(), case, arch, precision, i);
                let text = std::fs::read_to_string(&ptx).expect("ptx written");
                let version = if arch == "sm_80" { "7.0" } else { "7.8" };
                assert!(text.contains(&format!(".target {arch}")), "{}", case.file);
                assert!(
                    text.contains(&format!(".version {version}")),
                    "{}",
                    case.file
                );
                assert!(text.contains(".entry "), "{}: no kernel", case.file);
                let manifest = std::fs::read_to_string(ptx.with_extension("ptx.json"))
                    .expect("manifest written");
                let m: serde_json::Value = serde_json::from_str(&manifest).expect("json");
                assert!(m["launches"].as_array().is_some_and(|l| !l.is_empty()));
                let Some(ptxas) = &ptxas else { continue };
                let run = Command::new(ptxas)
                    .args(["-arch", arch])
                    .arg(&ptx)
                    .args(["-o", "/dev/null"])
                    .output()
                    .expect("ptxas runs");
                assert!(
                    run.status.success(),
                    "ptxas -arch={arch} rejects the PTX of {} ({precision}): {}",
                    case.file,
                    String::from_utf8_lossy(&run.stderr)
                );
                assembled += 1;
            }
        }
    }
    if ptxas.is_some() {
        eprintln!("ptxas assembled {assembled} PTX files");
    }
}

/// Assembles `ptx` for `arch` with ptxas.
fn assemble(ptxas: &Path, arch: &str, ptx: &Path, what: &str) {
    let run = Command::new(ptxas)
        .args(["-arch", arch])
        .arg(ptx)
        .args(["-o", "/dev/null"])
        .output()
        .expect("ptxas runs");
    assert!(
        run.status.success(),
        "ptxas -arch={arch} rejects the PTX of {what}: {}",
        String::from_utf8_lossy(&run.stderr)
    );
}

/// `--tensor-cores tf32|bf16` on TTT-Linear and TTT-MLP (small and benchmark shapes): the PTX
/// really contains the warp-level `mma.sync` of the format with its operand conversion (the
/// opt-in is not silently ignored), the manifest counts the loops on tensor cores, and ptxas
/// assembles it for sm_80 and sm_90.
#[test]
fn tensor_core_ptx_uses_mma_and_assembles() {
    let ptxas = ptxas_or_skip();
    let dir = tempfile::tempdir().expect("tempdir");
    let formats = [
        (
            "tf32",
            "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32",
            "cvt.rna.tf32.f32",
        ),
        (
            "bf16",
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32",
            "cvt.rn.bf16x2.f32",
        ),
    ];
    for i in [0, 1, 6, 7] {
        let case = &CASES[i];
        // Without the option: no tensor cores.
        let ptx = compile(dir.path(), case, "sm_80", "f32", i);
        let exact = std::fs::read_to_string(&ptx).expect("ptx written");
        assert!(
            !exact.contains("mma.sync"),
            "{}: mma without the opt-in",
            case.file
        );
        let exact_barriers = exact.matches("bar.sync").count();
        for (tc, mma, cvt) in formats {
            for arch in ["sm_80", "sm_90"] {
                let what = format!("{} ({:?}) {arch} {tc}", case.file, case.set);
                let ptx = compile_with(dir.path(), case, arch, "f32", i, Some(tc));
                let text = std::fs::read_to_string(&ptx).expect("ptx written");
                assert!(text.contains(mma), "{what}: no `{mma}`");
                assert!(text.contains(cvt), "{what}: no `{cvt}`");
                let manifest = std::fs::read_to_string(ptx.with_extension("ptx.json"))
                    .expect("manifest written");
                let m: serde_json::Value = serde_json::from_str(&manifest).expect("json");
                assert_eq!(m["tensor_cores"], tc, "{what}");
                let loops = m["tensor_core_loops"].as_u64().unwrap_or(0) as usize;
                assert!(loops > 0, "{what}: no loop on tensor cores");
                // Each such loop is fenced by a barrier on both sides (its outputs change
                // threads).
                if arch == "sm_80" {
                    let barriers = text.matches("bar.sync").count();
                    assert!(
                        barriers >= exact_barriers + 2 * loops,
                        "{what}: {barriers} barriers, {exact_barriers} without tensor cores"
                    );
                }
                if let Some(ptxas) = &ptxas {
                    assemble(ptxas, arch, &ptx, &what);
                }
            }
        }
    }
}

/// The opt-in is refused, as a user error (exit 2), for f64 programs and CPU targets, and for
/// backends other than ptx.
#[test]
fn tensor_cores_are_refused_where_they_do_not_apply() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("x.ptx").display().to_string();
    let base = [
        "compile",
        "examples/ttt_linear.ttt",
        "--set",
        "B=1",
        "--set",
        "H=2",
        "--set",
        "L=40",
        "--set",
        "f=16",
        "-o",
        out.as_str(),
        "--tensor-cores",
        "tf32",
    ];
    let cases: [(&[&str], &str); 2] = [
        (
            &["--target", "sm_80", "--precision", "f64"],
            "--precision f64",
        ),
        (&["--target", "x86_64"], "GPU targets"),
    ];
    for (extra, message) in cases {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        let r = tttc(&args);
        let t = text(&r);
        assert_eq!(r.status.code(), Some(2), "{extra:?}: {t}");
        assert!(t.contains(message), "{extra:?}: {t}");
    }
    let o = dir.path().join("out.safetensors").display().to_string();
    let r = tttc(&[
        "run",
        "examples/ttt_linear.ttt",
        "--inputs",
        "examples/data/ttt_linear_sample.safetensors",
        "--out",
        o.as_str(),
        "--backend",
        "interp",
        "--tensor-cores",
        "bf16",
    ]);
    let t = text(&r);
    assert_eq!(r.status.code(), Some(2), "{t}");
    assert!(t.contains("--backend ptx only"), "{t}");
}

/// Snapshots of the emitted PTX (sm_80, f32, small shapes). A change in the mapping or the
/// code generator shows here as a diff to review (`cargo insta review`).
#[test]
fn ptx_snapshots() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (i, name) in [(0, "ttt_linear"), (1, "ttt_mlp")] {
        let ptx = compile(dir.path(), &CASES[i], "sm_80", "f32", i);
        let text = std::fs::read_to_string(&ptx).expect("ptx written");
        insta::assert_snapshot!(format!("ptx_{name}_sm80_f32"), text);
    }
    // One tensor-core kernel program: TTT-Linear with tf32 operands.
    let ptx = compile_with(dir.path(), &CASES[0], "sm_80", "f32", 0, Some("tf32"));
    let text = std::fs::read_to_string(&ptx).expect("ptx written");
    insta::assert_snapshot!("ptx_ttt_linear_sm80_f32_tf32", text);
}

/// Without a CUDA driver, `--backend ptx` is a user error with a clear message, not a panic.
#[cfg(feature = "cuda")]
#[test]
fn ptx_backend_without_a_driver_is_a_clean_error() {
    let has_driver = [
        "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
        "/usr/lib64/libcuda.so.1",
    ]
    .iter()
    .any(|p| Path::new(p).exists());
    if has_driver {
        eprintln!("a CUDA driver is installed: the no-driver path cannot be checked here");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out.safetensors");
    for cmd in ["run", "bench"] {
        let mut args = vec![
            cmd,
            "examples/ttt_linear.ttt",
            "--inputs",
            "examples/data/ttt_linear_sample.safetensors",
            "--backend",
            "ptx",
        ];
        let o = out.display().to_string();
        if cmd == "run" {
            args.extend(["--out", o.as_str()]);
        }
        let r = tttc(&args);
        let t = text(&r);
        assert_eq!(r.status.code(), Some(2), "{cmd}: {t}");
        assert!(t.contains("no CUDA driver found"), "{cmd}: {t}");
        assert!(!t.contains("panicked"), "{cmd}: {t}");
    }
}
