//! `gather(table, ids)` — rows of a table by integer ids, the token embedding — through the
//! whole pipeline: against the one-hot matrix product it replaced (`step(0.5 − d²) @ table`)
//! and against rows copied here by hand, on the graph interpreter, every built native backend,
//! the kernel executor and its GPU emulation (the mapped kernel IR), in f64 and f32; bad ids
//! from inputs are user errors naming the tensor; bad ids computed inside a program are an
//! interpreter error and a clamp in compiled code, never an out-of-bounds read. Also the
//! adjoint `scatter_add` on every backend and the GPU emulation, and the PTX of a gather (the
//! id's clamp; assembled when `ptxas` is installed).
//!
//! Tolerance: none. A gather copies, and the one-hot product is exact too (`1 · x` plus exact
//! zeros), so every backend must match bit for bit, consumers fused in included.

mod common;

use common::random::Lcg;
use common::*;
use std::collections::BTreeMap;
use tttc::backends::kernel_interp::{run_kernel_program, run_kernel_program_gpu, GpuEmulation};
use tttc::passes::gpu_schedule::{gpu_schedule, GpuConfig};
use tttc::passes::lower_kernel::lower_program;
use tttc::runtime::{write_safetensors_with_ints, IntTensor, Tensor};
use tttc::{Backend, Precision, Settings};

const BACKENDS: [Backend; 3] = [Backend::Interp, Backend::Llvm, Backend::Cranelift];

const SOURCE: &str = r#"
main {
  input ids: int[B, L] in 0..V
  input pos: int[N] in 0..V
  input table: [V, H]
  input cube: [V, P, Q]
  output rows = gather(table, ids)
  output one_hot = step(0.5 - (reshape(ids, [B, L, 1]) - iota(V)) ^ 2) @ table
  output fused = gather(table, ids) * 2 + 1
  output fused_one_hot = (step(0.5 - (reshape(ids, [B, L, 1]) - iota(V)) ^ 2) @ table) * 2 + 1
  output cubes = gather(cube, pos)
  output embedded = embedding(ids, table)
}
"#;

const DIMS: (usize, usize, usize, usize, usize, usize, usize) = (2, 5, 7, 3, 6, 2, 4);

/// Random tables and ids (with repeats: 10 + 6 ids over 7 rows).
fn inputs(seed: u64) -> BTreeMap<String, Tensor> {
    let (b, l, v, h, n, p, q) = DIMS;
    let mut r = Lcg(seed);
    let mut ids = |k: usize| -> Vec<f64> {
        (0..k)
            .map(|_| (r.next_u64() >> 33) as f64 % v as f64)
            .collect()
    };
    let (ids_bl, pos) = (ids(b * l), ids(n));
    let mut r = Lcg(seed ^ 0xABCD);
    let t = |shape: Vec<usize>, data: Vec<f64>| Tensor::from_f64(shape, data).expect("tensor");
    [
        ("ids".to_string(), t(vec![b, l], ids_bl)),
        ("pos".to_string(), t(vec![n], pos)),
        ("table".to_string(), t(vec![v, h], r.vec(v * h, 3.0))),
        ("cube".to_string(), t(vec![v, p, q], r.vec(v * p * q, 3.0))),
    ]
    .into()
}

/// The rows of `table` (`row` elements each) by `ids`, copied by hand.
fn rows_by_hand(table: &[f64], row: usize, ids: &[f64]) -> Vec<f64> {
    ids.iter()
        .flat_map(|&i| table[i as usize * row..(i as usize + 1) * row].to_vec())
        .collect()
}

fn bits(t: &Tensor) -> Vec<u64> {
    t.to_f64_vec().iter().map(|x| x.to_bits()).collect()
}

fn same(got: &Tensor, want: &[f64], what: &str) {
    let w: Vec<u64> = want.iter().map(|x| x.to_bits()).collect();
    assert_eq!(bits(got), w, "{what}");
}

#[test]
fn gather_matches_the_one_hot_product_and_the_rows_on_every_backend() {
    let settings = Settings::new();
    let (_, _, _, h, _, p, q) = DIMS;
    for precision in [Precision::F64, Precision::F32] {
        for seed in [1u64, 7, 42] {
            let tensors = inputs(seed);
            let program = tttc::compile_source("gather.ttt", SOURCE, precision, &settings)
                .unwrap_or_else(|e| panic!("compile: {e}"));
            let bound = tttc::bind(&program, &tensors, &settings, precision.elem())
                .unwrap_or_else(|e| panic!("bind: {e}"));
            // The expected rows, from the inputs rounded to the run's precision.
            let input = |n: &str| bound.inputs[n].to_f64_vec();
            let rows = rows_by_hand(&input("table"), h, &input("ids"));
            let cubes = rows_by_hand(&input("cube"), p * q, &input("pos"));
            let mut runs: Vec<(String, BTreeMap<String, Tensor>)> = BACKENDS
                .into_iter()
                .filter(|b| b.is_built())
                .map(|b| {
                    let prepared = tttc::prepare(b, &bound.program)
                        .unwrap_or_else(|e| panic!("{}: {e}", b.name()));
                    let out = prepared
                        .run(&bound.inputs)
                        .unwrap_or_else(|e| panic!("{}: {e}", b.name()));
                    (b.name().to_string(), out)
                })
                .collect();
            let k = lower_program(&bound.program).expect("lower_kernel");
            runs.push((
                "kernel executor".into(),
                run_kernel_program(&k, &bound.inputs).expect("kernel executor"),
            ));
            let cfg = GpuConfig::default();
            let mapped = gpu_schedule(&k, &cfg).expect("gpu_schedule");
            runs.push((
                "GPU emulation".into(),
                run_kernel_program_gpu(
                    &mapped,
                    &bound.inputs,
                    GpuEmulation {
                        threads: cfg.threads,
                    },
                )
                .expect("GPU emulation"),
            ));
            for (name, out) in &runs {
                let what = |o: &str| format!("{name} {precision:?} seed {seed}: {o}");
                same(&out["rows"], &rows, &what("rows"));
                same(&out["embedded"], &rows, &what("embedded"));
                same(&out["cubes"], &cubes, &what("cubes"));
                assert_eq!(out["cubes"].shape(), &[DIMS.4, p, q], "{}", what("shape"));
                assert_eq!(
                    bits(&out["one_hot"]),
                    bits(&out["rows"]),
                    "{}",
                    what("one-hot")
                );
                assert_eq!(
                    bits(&out["fused_one_hot"]),
                    bits(&out["fused"]),
                    "{}",
                    what("fused")
                );
            }
        }
    }
}

/// The embedding no longer builds a `[B, L, V]` one-hot temporary: the kernel program of the
/// prelude's `embedding` has no buffer of V elements per token, and its rows are read through a
/// data-dependent index.
#[test]
fn the_embedding_is_a_gather_without_a_one_hot_temporary() {
    let settings = Settings::new();
    let source = "main {\n  input ids: int[B, L] in 0..V\n  input table: [V, H]\n  \
                  output e = rms_norm(embedding(ids, table), 1, 1e-6)\n}\n";
    let program =
        tttc::compile_source("e.ttt", source, Precision::F32, &settings).expect("compile");
    let (b, l, v, h) = (2, 3, 50, 4);
    let tensors: BTreeMap<String, Tensor> = [
        (
            "ids".to_string(),
            Tensor::from_f64(vec![b, l], vec![0.0, 49.0, 3.0, 3.0, 7.0, 1.0]).expect("ids"),
        ),
        (
            "table".to_string(),
            Tensor::from_f64(vec![v, h], Lcg(3).vec(v * h, 1.0)).expect("table"),
        ),
    ]
    .into();
    let bound = tttc::bind(&program, &tensors, &settings, Precision::F32.elem()).expect("bind");
    let k = lower_program(&bound.program).expect("lower_kernel");
    for buf in &k.buffers {
        assert!(
            buf.layout.len() < b * l * v,
            "a one-hot sized buffer: {} {:?}",
            buf.name,
            buf.layout.shape
        );
    }
    let text = tttc::ir::kernel::print_kernel_program(&k);
    assert!(text.contains("int(b"), "no data-dependent index in\n{text}");
}

/// Writes `tensors` (and integer tensors `ints`) and runs `program` with `tttc run` on
/// `backend`; (exit code, output).
fn run_cli(
    dir: &std::path::Path,
    program: &str,
    tensors: &BTreeMap<String, Tensor>,
    ints: &BTreeMap<String, IntTensor>,
    backend: &str,
) -> (i32, String) {
    let prog = dir.join("g.ttt");
    std::fs::write(&prog, program).expect("program");
    let inputs = dir.join("in.safetensors");
    write_safetensors_with_ints(&inputs, tensors, ints).expect("inputs");
    let out = dir.join("out.safetensors");
    let o = tttc(&[
        "run",
        prog.to_str().expect("utf-8"),
        "--inputs",
        inputs.to_str().expect("utf-8"),
        "--out",
        out.to_str().expect("utf-8"),
        "--backend",
        backend,
    ]);
    (o.status.code().unwrap_or(-1), text(&o))
}

/// An id out of range or not an integer, whether the input is declared `int` (the range check)
/// or not (the gather check of binding), is a user error naming the tensor on every backend.
#[test]
fn bad_ids_are_user_errors_naming_the_tensor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let declared = "main {\n  input ids: int[L] in 0..V\n  input table: [V, H]\n  \
                    output e = gather(table, ids)\n}\n";
    let plain = "main {\n  input ids: [L]\n  input table: [V, H]\n  \
                 output e = gather(table, reshape(ids, [L, 1]))\n}\n";
    let table = Tensor::from_f64(vec![3, 2], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).expect("t");
    let cases: [(&str, &str, Vec<f64>, &str); 5] = [
        (declared, "int", vec![0.0, 3.0, 1.0], "3"),
        (declared, "int", vec![0.0, -1.0, 1.0], "-1"),
        (plain, "plain", vec![0.0, 3.0, 1.0], "3"),
        (plain, "plain", vec![0.0, -1.0, 1.0], "-1"),
        (plain, "plain", vec![0.0, 1.5, 1.0], "1.5"),
    ];
    for (program, what, ids, fragment) in cases {
        let mut tensors: BTreeMap<String, Tensor> = [("table".to_string(), table.clone())].into();
        let mut ints = BTreeMap::new();
        if what == "int" {
            let values = ids.iter().map(|&x| x as i64).collect();
            ints.insert(
                "ids".to_string(),
                IntTensor {
                    shape: vec![3],
                    values,
                    dtype: "I64",
                },
            );
        } else {
            tensors.insert(
                "ids".to_string(),
                Tensor::from_f64(vec![3], ids).expect("ids"),
            );
        }
        for backend in backends() {
            let (code, out) = run_cli(dir.path(), program, &tensors, &ints, backend);
            let case = format!("{what} ids, bad {fragment}, {backend}");
            assert_eq!(code, 2, "{case}: {out}");
            assert!(out.contains("`ids`"), "{case}: no tensor name in {out}");
            assert!(out.contains(fragment), "{case}: no value in {out}");
            assert!(!out.contains("panicked"), "{case}: {out}");
        }
    }
}

/// Ids computed inside the program escape the input checks: the graph interpreter rejects a
/// bad one with an error naming the gather and the ids, and compiled code clamps it into the
/// table (NaN and negatives to row 0, too large to the last row, fractions truncated) — a
/// read inside the table, never outside it.
#[test]
fn computed_bad_ids_are_an_interpreter_error_and_clamped_in_compiled_code() {
    let settings = Settings::new();
    let source = "main {\n  input x: [N]\n  input one: [N]\n  input table: [V, H]\n  \
                  output e = gather(table, x * one)\n}\n";
    for precision in [Precision::F64, Precision::F32] {
        computed_ids(source, precision, &settings);
    }
}

fn computed_ids(source: &str, precision: Precision, settings: &Settings) {
    let program = tttc::compile_source("c.ttt", source, precision, settings).expect("compile");
    // 1e300 is +inf in f32.
    let x = vec![0.0, 2.0, 9.0, -4.0, 1.7, f64::NAN, 1e300, -0.5];
    let table: Vec<f64> = (0..6).map(|i| i as f64 * 10.0).collect();
    let n = x.len();
    let tensors: BTreeMap<String, Tensor> = [
        ("x".to_string(), Tensor::from_f64(vec![n], x).expect("x")),
        (
            "one".to_string(),
            Tensor::from_f64(vec![n], vec![1.0; n]).expect("one"),
        ),
        (
            "table".to_string(),
            Tensor::from_f64(vec![3, 2], table.clone()).expect("table"),
        ),
    ]
    .into();
    // The ids are computed (`x * one`), so binding does not check them.
    let bound = tttc::bind(&program, &tensors, settings, precision.elem()).expect("bind");
    let err = tttc::prepare(Backend::Interp, &bound.program)
        .expect("prepare")
        .run(&bound.inputs)
        .expect_err("a bad id must fail the interpreter");
    let msg = format!("{err}: {:?}", std::error::Error::source(&err));
    assert!(msg.contains("bad id") && msg.contains("0..3"), "{msg}");
    // Clamped rows: 0, 2, 2 (9), 0 (-4), 1 (1.7), 0 (NaN), 2 (1e300), 0 (-0.5).
    let want = rows_by_hand(&table, 2, &[0.0, 2.0, 2.0, 0.0, 1.0, 0.0, 2.0, 0.0]);
    let k = lower_program(&bound.program).expect("lower_kernel");
    let mut runs = vec![(
        "kernel executor".to_string(),
        run_kernel_program(&k, &bound.inputs).expect("kernel executor"),
    )];
    for b in [Backend::Llvm, Backend::Cranelift] {
        if b.is_built() {
            let prepared = tttc::prepare(b, &bound.program).expect("prepare");
            runs.push((
                b.name().to_string(),
                prepared.run(&bound.inputs).expect("run"),
            ));
        }
    }
    for (name, out) in runs {
        same(&out["e"], &want, &format!("{name} {precision:?}"));
    }
}

/// Through the CLI, a computed id outside the table is a user error on the interpreter (exit 2,
/// naming the gather and its ids) and a clamped read on the compiled backends (exit 0).
#[test]
fn computed_bad_ids_through_the_cli() {
    let dir = tempfile::tempdir().expect("tempdir");
    let program = "main {\n  input x: [N]\n  input one: [N]\n  input table: [V, H]\n  \
                   output e = gather(table, x * one)\n}\n";
    let tensors: BTreeMap<String, Tensor> = [
        (
            "x".to_string(),
            Tensor::from_f64(vec![2], vec![1.0, 7.0]).expect("x"),
        ),
        (
            "one".to_string(),
            Tensor::from_f64(vec![2], vec![1.0, 1.0]).expect("one"),
        ),
        (
            "table".to_string(),
            Tensor::from_f64(vec![3, 1], vec![1.0, 2.0, 3.0]).expect("table"),
        ),
    ]
    .into();
    for backend in backends() {
        let (code, out) = run_cli(dir.path(), program, &tensors, &BTreeMap::new(), backend);
        assert!(!out.contains("panicked"), "{backend}: {out}");
        if backend == "interp" {
            assert_eq!(code, 2, "{backend}: {out}");
            assert!(
                out.contains("bad id") && out.contains("gather") && out.contains("0..3"),
                "{backend}: {out}"
            );
        } else {
            assert_eq!(code, 0, "{backend}: {out}");
        }
    }
}

/// The adjoint, `scatter_add`, lowered to kernel IR and run by the kernel executor, LLVM,
/// Cranelift and the GPU emulation of its mapping: its accumulation writes rows through
/// data-dependent indices, so the mapping must keep it free of races (the emulation reports any
/// element two threads touch between barriers), and every result must equal the graph
/// interpreter bit for bit (repeated ids add in the same order).
#[test]
fn scatter_add_is_mapped_to_the_gpu_without_races() {
    use tttc::ir::{DType, Dim, Graph, Op, Shape, TensorType};
    for dtype in [DType::F64, DType::F32] {
        let mut g = Graph::new();
        let ty = |dims: &[usize]| TensorType::new(dtype, Shape::known(dims));
        let grad = g.add_input("grad", ty(&[2, 5, 3])).expect("grad");
        let ids = g.add_input("ids", ty(&[2, 5])).expect("ids");
        let s = g
            .add(
                Op::ScatterAdd {
                    rows: Dim::Known(4),
                },
                &[grad, ids],
            )
            .expect("scatter_add");
        g.add_output("s", s);
        let elem = tttc::backends::interp::elem_type_of(dtype);
        let inputs: BTreeMap<String, Tensor> = [
            (
                "grad".to_string(),
                Tensor::from_f64(vec![2, 5, 3], Lcg(9).vec(30, 2.0))
                    .expect("grad")
                    .cast(elem),
            ),
            (
                "ids".to_string(),
                Tensor::from_f64(
                    vec![2, 5],
                    vec![3.0, 0.0, 3.0, 1.0, 3.0, 0.0, 0.0, 2.0, 3.0, 1.0],
                )
                .expect("ids")
                .cast(elem),
            ),
        ]
        .into();
        let want = tttc::backends::interp::eval_graph(&g, &inputs).expect("interpreter");
        let k = tttc::passes::lower_kernel::lower_graph("scatter", &g).expect("lower");
        let plain = run_kernel_program(&k, &inputs).expect("kernel executor");
        let cfg = GpuConfig::default();
        let mapped = gpu_schedule(&k, &cfg).expect("gpu_schedule");
        let gpu = run_kernel_program_gpu(
            &mapped,
            &inputs,
            GpuEmulation {
                threads: cfg.threads,
            },
        )
        .expect("GPU emulation (a race would be an error)");
        assert_eq!(
            bits(&plain["s"]),
            bits(&want["s"]),
            "{dtype}: kernel executor"
        );
        assert_eq!(bits(&gpu["s"]), bits(&want["s"]), "{dtype}: GPU emulation");
    }
}

/// The PTX of a gather (no GPU needed): the id is loaded, clamped as a float (`max`/`min`,
/// NaN-safe) and converted towards zero, then clamped as an integer below the table's rows,
/// before the row is read. With `ptxas` installed the PTX is assembled too.
#[cfg(feature = "llvm")]
#[test]
fn gather_ptx_clamps_the_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prog = dir.path().join("e.ttt");
    std::fs::write(
        &prog,
        "main {\n  input ids: int[B, L] in 0..V\n  input table: [V, H]\n  \
         output e = rms_norm(embedding(ids, table), 1, 1e-6)\n}\n",
    )
    .expect("program");
    for (precision, cvt) in [("f32", "cvt.rzi.s64.f32"), ("f64", "cvt.rzi.s64.f64")] {
        let ptx = dir.path().join(format!("e.{precision}.ptx"));
        let r = tttc(&[
            "compile",
            prog.to_str().expect("utf-8"),
            "--target",
            "sm_80",
            "--precision",
            precision,
            "--set",
            "B=2",
            "--set",
            "L=8",
            "--set",
            "V=100",
            "--set",
            "H=64",
            "-o",
            ptx.to_str().expect("utf-8"),
        ]);
        assert!(r.status.success(), "{precision}: {}", text(&r));
        let text = std::fs::read_to_string(&ptx).expect("ptx");
        assert!(text.contains(cvt), "{precision}: no {cvt} in\n{text}");
        assert!(
            text.contains("min.s64") || text.contains("selp.b64"),
            "{precision}: no integer clamp below 100 in\n{text}"
        );
        if let Ok(ptxas) = std::process::Command::new("ptxas")
            .arg("--version")
            .output()
        {
            if ptxas.status.success() {
                let out = dir.path().join("e.cubin");
                let run = std::process::Command::new("ptxas")
                    .args(["-arch=sm_80", "-o"])
                    .arg(&out)
                    .arg(&ptx)
                    .output()
                    .expect("ptxas");
                assert!(run.status.success(), "{precision}: ptxas: {run:?}");
            }
        }
    }
}
