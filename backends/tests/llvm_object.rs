//! LLVM backend, ahead of time: an object file linked with `cc -shared` and a C shim that
//! provides `tttc_parallel_for`, driven by a small C program. Skipped (with a message) where
//! there is no `cc`.
#![cfg(feature = "llvm")]

mod native_common;

use native_common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use tttc_backends::llvm::emit_object;
use tttc_ir::kernel::{Index, KernelProgram, Value};
use tttc_ir::{DType, UnaryOp};

const SHIM: &str = r#"
#include <stdint.h>
/* Serial stand-in for the runtime: three chunks, in order, counted. */
int tttc_shim_calls = 0;
void tttc_parallel_for(void (*worker)(void *, int64_t, int64_t), void *ctx, int64_t n) {
    tttc_shim_calls++;
    int64_t parts = 3;
    for (int64_t k = 0; k < parts; k++) {
        int64_t b = n * k / parts, e = n * (k + 1) / parts;
        if (b < e) worker(ctx, b, e);
    }
}
"#;

const DRIVER: &str = r#"
#include <stdio.h>
#include <stdint.h>
extern void my_kernel(float **inputs, float **outputs);
extern int tttc_shim_calls;
#define R 5
#define N 12
int main(void) {
    float x[R * N], w[N], y[R * N], s[R];
    for (int i = 0; i < R * N; i++) x[i] = (float)(i % 7) * 0.25f - 0.75f;
    for (int i = 0; i < N; i++) w[i] = (float)i * 0.125f;
    float *in[2] = {x, w};
    float *out[2] = {y, s};
    my_kernel(in, out);
    for (int i = 0; i < R * N; i++) printf("%.9g\n", y[i]);
    for (int i = 0; i < R; i++) printf("%.9g\n", s[i]);
    printf("calls %d\n", tttc_shim_calls);
    return 0;
}
"#;

const R: usize = 5;
const N: usize = 12;

/// `y[r, i] = tanh(x[r, i] * w[i]) + exp(-|i|)`, `s[r] = Σ_i y[r, i]` with a local scratch,
/// the rows in a parallel loop.
fn program() -> KernelProgram {
    let mut g = Prog::new("aot", DType::F32);
    let x = g.input("x", &[R, N]);
    let w = g.input("w", &[N]);
    let y = g.output("y", &[R, N]);
    let s = g.output("s", &[R]);
    let acc = g.local("acc", &[1]);
    let (r, i, j) = (g.var(), g.var(), g.var());
    let yi = |i| affine(v(r), N as i64, v(i));
    g.push(parallel(
        r,
        R,
        vec![
            store(acc, c(0), k(0.0)),
            serial(
                i,
                N,
                vec![store(
                    y,
                    yi(i),
                    add(
                        un(UnaryOp::Tanh, mul(ld(x, yi(i)), ld(w, v(i)))),
                        un(
                            UnaryOp::Exp,
                            un(UnaryOp::Neg, Value::FromIndex(Index::Var(i))),
                        ),
                    ),
                )],
            ),
            serial(
                j,
                N,
                vec![store(acc, c(0), add(ld(acc, c(0)), ld(y, yi(j))))],
            ),
            store(s, v(r), ld(acc, c(0))),
        ],
    ));
    g.p
}

fn have_cc() -> bool {
    Command::new("cc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn workdir() -> PathBuf {
    let d =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("llvm_object_{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn object_links_into_a_shared_library_and_runs() {
    if !have_cc() {
        eprintln!("skipping object_links_into_a_shared_library_and_runs: no `cc` on PATH");
        return;
    }
    let dir = workdir();
    let obj = dir.join("kernel.o");
    emit_object(&program(), &obj, "my_kernel").expect("emits");
    std::fs::write(dir.join("shim.c"), SHIM).unwrap();
    std::fs::write(dir.join("driver.c"), DRIVER).unwrap();
    let lib = dir.join("libtttckernel.so");
    run(Command::new("cc")
        .arg("-shared")
        .arg("-fPIC")
        .arg("-o")
        .arg(&lib)
        .arg(&obj)
        .arg(dir.join("shim.c"))
        .arg("-lm"));
    // The entry is exported; the internals are not.
    if let Ok(o) = Command::new("nm")
        .arg("-D")
        .arg("--defined-only")
        .arg(&lib)
        .output()
    {
        let syms = String::from_utf8_lossy(&o.stdout);
        assert!(syms.contains(" T my_kernel"), "{syms}");
        assert!(!syms.contains("tttc.body"), "{syms}");
    }
    let exe = dir.join("driver");
    run(Command::new("cc")
        .arg("-o")
        .arg(&exe)
        .arg(dir.join("driver.c"))
        .arg(format!("-L{}", dir.display()))
        .arg("-ltttckernel")
        .arg(format!("-Wl,-rpath,{}", dir.display()))
        .arg("-lm"));
    let stdout = run(&mut Command::new(&exe));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), R * N + R + 1, "{stdout}");
    assert_eq!(
        lines[R * N + R],
        "calls 1",
        "the parallel loop goes through the shim"
    );

    // The same computation in Rust (the C driver's inputs).
    let x: Vec<f32> = (0..R * N).map(|i| (i % 7) as f32 * 0.25 - 0.75).collect();
    let w: Vec<f32> = (0..N).map(|i| i as f32 * 0.125).collect();
    for r in 0..R {
        let mut acc = 0.0f32;
        for i in 0..N {
            let want = (x[r * N + i] * w[i]).tanh() + (-(i as f32)).exp();
            let got: f32 = lines[r * N + i].parse().unwrap();
            // tanh is an inline rational approximation in f32 (≤ 1e-6 relative, see
            // llvm_elementwise.rs), exp comes from libm.
            let close = ulps32(got, want) <= 4 || (got - want).abs() <= 1e-6 * want.abs().max(1e-3);
            assert!(close, "y[{r}, {i}] = {got} vs {want}");
            acc += got;
        }
        let got: f32 = lines[R * N + r].parse().unwrap();
        assert_eq!(got, acc, "s[{r}]");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
