//! PTX for NVIDIA GPUs without a GPU: `tttc compile --target sm_80|sm_90` on every example
//! (small shapes from --set, both precisions for the inner models, and the benchmark's
//! TTT-Linear/TTT-MLP shapes), each assembled by NVIDIA's `ptxas` when it is installed
//! (`scripts/install-ptxas.sh`, or `$TTTC_PTXAS`). Without ptxas the assembly is skipped with a
//! message — except under CI (`CI=true`), where a missing ptxas fails the test. Also insta
//! snapshots of the PTX of TTT-Linear and TTT-MLP at small shapes, and the clean error of
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
    let out = dir.join(format!("case{tag}.{arch}.{precision}.ptx"));
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
