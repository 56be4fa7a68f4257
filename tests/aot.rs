//! The ahead-of-time library and the C example, from a clean checkout: `tttc compile` writes a
//! shared library and header, the C example (examples/c/main.c) is built against them and run,
//! and what it writes equals `tttc run --backend interp` on the same inputs (f32, 1e-5 relative
//! to max |expected|: both compute in f32 with different summation orders and FMA contraction).
#![cfg(feature = "llvm")]

mod common;

use common::*;
use std::process::Command;

#[test]
fn c_example_runs_the_compiled_library() {
    if Command::new("cc").arg("--version").output().is_err() {
        eprintln!("skipped: no C compiler `cc`");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let sample = root().join("examples/data/ttt_linear_sample.safetensors");
    let lib = d.join("libttt_linear.so");
    let out = tttc(&[
        "compile",
        "examples/ttt_linear.ttt",
        "--target",
        "x86_64",
        "--inputs",
        sample.to_str().expect("utf-8"),
        "-o",
        lib.to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let header = std::fs::read_to_string(d.join("ttt_linear.h")).expect("the header is written");
    assert!(
        header.contains("XQ") && header.contains("[1, 2, 64, 16]"),
        "{header}"
    );

    // Inputs as raw f32 files for the C program.
    for (name, t) in load(&sample) {
        let bytes: Vec<u8> = t
            .to_f64_vec()
            .iter()
            .flat_map(|&x| (x as f32).to_le_bytes())
            .collect();
        std::fs::write(d.join(format!("{name}.f32")), bytes).expect("write input");
    }
    let exe = d.join("ttt_linear_c");
    let cc = Command::new("cc")
        .args(["-O2", "-I"])
        .arg(d)
        .arg(root().join("examples/c/main.c"))
        .arg("-L")
        .arg(d)
        .arg("-lttt_linear")
        .arg(format!("-Wl,-rpath,{}", d.display()))
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("cc runs");
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let run = Command::new(&exe)
        .arg(d)
        .output()
        .expect("the example runs");
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        stdout.contains("wrong shape: rc=2 (XQ: expected shape [1, 2, 64, 16], axis 2 is 32)"),
        "{stdout}"
    );

    let reference = d.join("reference.safetensors");
    let interp = tttc(&[
        "run",
        "examples/ttt_linear.ttt",
        "--inputs",
        sample.to_str().expect("utf-8"),
        "--out",
        reference.to_str().expect("utf-8"),
        "--backend",
        "interp",
    ]);
    assert!(interp.status.success(), "{}", text(&interp));
    for (name, want) in load(&reference) {
        let bytes = std::fs::read(d.join(format!("{name}.f32"))).expect("the C program wrote it");
        let got: Vec<f64> = bytes
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect();
        let got = tttc::runtime::Tensor::from_f64(want.shape().to_vec(), got).expect("size");
        let err = rel_error(&got, &want);
        assert!(err <= 1e-5, "{name}: {err:e}");
    }
}

#[test]
fn compile_takes_shapes_from_set_and_checks_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lib = dir.path().join("libttt_linear.so");
    let lib = lib.to_str().expect("utf-8");
    let base = ["compile", "examples/ttt_linear.ttt", "-o", lib];
    let with = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        tttc(&args)
    };
    let ok = with(&[
        "--set", "B=1", "--set", "H=2", "--set", "L=40", "--set", "f=8",
    ]);
    assert!(ok.status.success(), "{}", text(&ok));
    let header = std::fs::read_to_string(dir.path().join("ttt_linear.h")).expect("header");
    assert!(header.contains("[1, 2, 40, 8]"), "{header}");
    let missing = with(&["--set", "B=1", "--set", "H=2"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        text(&missing).contains("needs dimension `L`"),
        "{}",
        text(&missing)
    );
    let huge = with(&[
        "--set",
        "B=1",
        "--set",
        "H=2",
        "--set",
        "L=100000000000000",
        "--set",
        "f=16",
    ]);
    assert_eq!(huge.status.code(), Some(2), "{}", text(&huge));
    assert!(text(&huge).contains("`XQ`"), "{}", text(&huge));
}
