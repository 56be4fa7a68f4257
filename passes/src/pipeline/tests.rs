//! Tests of the runner: instrument nesting, spans, code generation as the last stage, stage
//! errors and dumps.

use super::*;
use std::cell::RefCell;
use std::rc::Rc;

/// A program with no scan: `Y = exp(X * w) + 3` over `[N, M]`, bound to 2 × 3 when `bound`.
fn program(bound: bool) -> Program {
    let src = "main {\n  input X: [N, M]\n  input w: [M]\n  output Y = exp(X * w) + 3\n}\n";
    let settings = tttc_ir::Settings::new();
    let p =
        tttc_ir::syntax::compile("t.ttt", src, tttc_ir::DType::F64, &settings).expect("compiles");
    if bound {
        let dims = [("N".to_string(), 2), ("M".to_string(), 3)].into();
        p.specialize(&dims)
    } else {
        p
    }
}

/// Logs every hook call as `before:STAGE` / `after:STAGE` with its own tag.
struct Log(&'static str, Rc<RefCell<Vec<String>>>);

impl Instrument for Log {
    fn before(&mut self, stage: &'static str, _: &Ir) -> Result<(), PassError> {
        self.1
            .borrow_mut()
            .push(format!("{} before {stage}", self.0));
        Ok(())
    }
    fn after(&mut self, stage: &'static str, _: StageOutput<'_>) -> Result<(), PassError> {
        self.1
            .borrow_mut()
            .push(format!("{} after {stage}", self.0));
        Ok(())
    }
}

#[test]
fn instruments_nest_around_every_stage_of_the_span() {
    let log = Rc::new(RefCell::new(Vec::new()));
    let (mut outer, mut inner) = (Log("outer", log.clone()), Log("inner", log.clone()));
    let pipeline = Pipeline::new(Target::Cpu);
    let span = Span {
        after: Some("primal"),
        until: Some("simplify"),
    };
    let ir = pipeline
        .run(
            Ir::Graph(program(false)),
            span,
            &mut [&mut outer, &mut inner],
        )
        .expect("runs");
    assert_eq!(ir.form(), IrForm::Graph);
    assert_eq!(
        *log.borrow(),
        [
            "outer before dual_form",
            "inner before dual_form",
            "inner after dual_form",
            "outer after dual_form",
            "outer before simplify",
            "inner before simplify",
            "inner after simplify",
            "outer after simplify",
        ]
    );
}

#[test]
fn kernel_stages_then_codegen_run_under_the_same_instruments() {
    let pipeline = Pipeline::new(Target::Gpu(Default::default()));
    let mut timer = Timer::default();
    let mut snapshots = Snapshots::default();
    let codegen = Codegen {
        name: CODEGEN,
        generate: &|k: &KernelProgram| Ok::<_, String>(k.buffers.len()),
    };
    let code = pipeline
        .generate(
            Ir::Graph(program(true)),
            pipeline.last_graph_stage(),
            &codegen,
            &mut [&mut snapshots, &mut timer],
        )
        .expect("stages run");
    assert_eq!(code, Ok(3), "X, w and Y");
    let timed: Vec<&str> = timer.times.iter().map(|(n, _)| *n).collect();
    assert_eq!(timed, ["lower_kernel", "gpu_schedule", CODEGEN]);
    let snapped: Vec<(&str, IrForm)> = snapshots
        .after
        .iter()
        .map(|(n, ir)| (*n, ir.form()))
        .collect();
    assert_eq!(
        snapped,
        [
            ("lower_kernel", IrForm::Kernel),
            ("gpu_schedule", IrForm::Kernel)
        ]
    );
    // The code generator's error comes back as it is, inside a successful pipeline.
    let failing = Codegen {
        name: CODEGEN,
        generate: &|_: &KernelProgram| Err::<(), _>("no target".to_string()),
    };
    let out = pipeline.generate(
        Ir::Graph(program(true)),
        Some("simplify"),
        &failing,
        &mut [],
    );
    assert_eq!(out.expect("stages run"), Err("no target".to_string()));
}

#[test]
fn stage_errors_name_the_stage() {
    let pipeline = Pipeline::new(Target::Cpu);
    // Unbound dimensions: the lowering fails, naming itself.
    let err = pipeline
        .run(
            Ir::Graph(program(false)),
            Span::after_graph(&pipeline),
            &mut [],
        )
        .expect_err("unbound");
    assert!(
        matches!(
            err,
            PassError::Failed {
                pass: "lower_kernel",
                ..
            }
        ),
        "{err}"
    );
    let err = pipeline
        .run(Ir::Graph(program(false)), Span::until("magic"), &mut [])
        .expect_err("no such stage");
    assert!(err.to_string().contains("dual_form"), "{err}");
    // Kernel IR given to a graph stage.
    let kernels = crate::lower_kernel::lower_program(&program(true)).expect("lowers");
    let err = pipeline
        .run(Ir::Kernel(kernels), Span::until("autodiff"), &mut [])
        .expect_err("wrong IR");
    assert!(
        matches!(
            err,
            PassError::WrongIr {
                stage: "autodiff",
                expected: IrForm::Graph,
                found: IrForm::Kernel
            }
        ),
        "{err}"
    );
}

#[test]
fn dump_writes_one_numbered_file_per_stage() {
    let dir = std::env::temp_dir().join(format!("tttc-dump-test-{}", std::process::id()));
    let mut dump = Dump::new(&dir);
    let pipeline = Pipeline::new(Target::Cpu);
    pipeline
        .run(Ir::Graph(program(true)), Span::all(), &mut [&mut dump])
        .expect("runs");
    let names: Vec<String> = dump
        .written()
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    assert_eq!(
        names,
        [
            "01-autodiff.txt",
            "02-primal.txt",
            "03-dual_form.txt",
            "04-simplify.txt",
            "05-lower_kernel.txt",
            "06-outline.txt",
            "07-cpu_parallel.txt",
            "08-sibling_products.txt",
            "09-register_tile.txt",
            "10-reduce_jam.txt",
            "11-vector_loops.txt",
            "12-memory_plan.txt"
        ]
    );
    let kernel_text = std::fs::read_to_string(&dump.written()[4]).expect("written");
    assert!(
        kernel_text.starts_with("kernel program t (f64)"),
        "{kernel_text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
