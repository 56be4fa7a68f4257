//! `tttc generate`: greedy generation through a streaming session equals argmax decoding of the
//! one-shot logits of the whole generated sequence — prefill and decode together reproduce
//! what one pass over the sequence predicts at every position — on both model goldens'
//! weights (both backbones), in f64 on the interpreter and in f32 on the native backends.
//! Bad prompts are user errors.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::path::Path;
use tttc::runtime::{read_safetensors_with_ints, write_safetensors_with_ints, IntTensor};

const PROGRAM: &str = "examples/ttt_lm.ttt";
const PROMPT: usize = 7;
const NEW: usize = 20;

fn golden(stem: &str, suffix: &str) -> String {
    root()
        .join(format!("tests/golden/{stem}{suffix}"))
        .display()
        .to_string()
}

/// Generated ids printed by `tttc generate`.
fn generate(stem: &str, prompt: &[i64], backend: &str, precision: &str) -> Vec<i64> {
    let ids = prompt
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let new = NEW.to_string();
    let r = tttc(&[
        "generate",
        PROGRAM,
        "--weights",
        &golden(stem, ".inputs.safetensors"),
        "--config",
        &golden(stem, ".config.json"),
        "--prompt-ids",
        &ids,
        "--max-new-tokens",
        &new,
        "--backend",
        backend,
        "--precision",
        precision,
    ]);
    assert!(r.status.success(), "{stem} {backend}: {}", text(&r));
    assert!(text(&r).contains("tokens/s"), "{}", text(&r));
    String::from_utf8_lossy(&r.stdout)
        .split_whitespace()
        .map(|t| t.parse().expect("a token id"))
        .collect()
}

/// The one-shot logits `[1, L, vocab]` of `ids` with the golden's weights.
fn one_shot_logits(stem: &str, ids: &[i64], precision: &str, dir: &Path) -> (Vec<f64>, usize) {
    let file = read_safetensors_with_ints(Path::new(&golden(stem, ".inputs.safetensors"))).unwrap();
    let ints = BTreeMap::from([(
        "input_ids".to_string(),
        IntTensor {
            shape: vec![1, ids.len()],
            values: ids.to_vec(),
            dtype: "I64",
        },
    )]);
    let inputs = dir.join(format!("{stem}.seq.safetensors"));
    write_safetensors_with_ints(&inputs, &file.floats, &ints).unwrap();
    let out = dir.join(format!("{stem}.out.safetensors"));
    let r = tttc(&[
        "run",
        PROGRAM,
        "--config",
        &golden(stem, ".config.json"),
        "--inputs",
        inputs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--backend",
        "interp",
        "--precision",
        precision,
    ]);
    assert!(r.status.success(), "{}", text(&r));
    let logits = &load(&out)["logits"];
    let vocab = *logits.shape().last().unwrap();
    (logits.to_f64_vec(), vocab)
}

fn argmax(row: &[f64]) -> i64 {
    row.iter()
        .enumerate()
        .fold(0, |b, (i, &x)| if x > row[b] { i } else { b }) as i64
}

#[test]
fn greedy_generation_is_argmax_decoding_of_one_shot_logits() {
    let dir = tempfile::tempdir().unwrap();
    for stem in ["model_linear_T", "model_mlp_M"] {
        let file =
            read_safetensors_with_ints(Path::new(&golden(stem, ".inputs.safetensors"))).unwrap();
        let prompt: Vec<i64> = file.ints["input_ids"].values[..PROMPT].to_vec();
        let mut runs = vec![("interp", "f64")];
        for backend in backends() {
            if backend != "interp" {
                runs.push((backend, "f32"));
            }
        }
        for (backend, precision) in runs {
            let generated = generate(stem, &prompt, backend, precision);
            assert_eq!(generated.len(), NEW, "{stem} {backend}");
            let mut seq = prompt.clone();
            seq.extend(&generated);
            let (logits, vocab) = one_shot_logits(stem, &seq, precision, dir.path());
            for i in PROMPT - 1..seq.len() - 1 {
                let row = &logits[i * vocab..(i + 1) * vocab];
                assert_eq!(
                    argmax(row),
                    seq[i + 1],
                    "{stem} {backend} {precision}: token {} of {seq:?}",
                    i + 1
                );
            }
        }
    }
}

#[test]
fn sampling_is_reproducible_by_seed_and_bad_prompts_are_user_errors() {
    let stem = "model_linear_T";
    let run = |extra: &[&str]| {
        let weights = golden(stem, ".inputs.safetensors");
        let config = golden(stem, ".config.json");
        let mut args = vec![
            "generate",
            PROGRAM,
            "--weights",
            &weights,
            "--config",
            &config,
            "--backend",
            "interp",
            "--max-new-tokens",
            "8",
        ];
        args.extend(extra);
        tttc(&args)
    };
    let a = run(&[
        "--prompt-ids",
        "1,2,3",
        "--temperature",
        "1.5",
        "--seed",
        "7",
    ]);
    let b = run(&[
        "--prompt-ids",
        "1,2,3",
        "--temperature",
        "1.5",
        "--seed",
        "7",
    ]);
    assert!(a.status.success(), "{}", text(&a));
    assert_eq!(a.stdout, b.stdout, "the same seed samples the same tokens");

    // Byte-level prompt: 'h' is 104, outside this model's vocabulary of 97.
    let r = run(&["--prompt", "hello"]);
    assert_eq!(r.status.code(), Some(2), "{}", text(&r));
    assert!(text(&r).contains("input_ids"), "{}", text(&r));
    let r = run(&["--prompt-ids", "1,x"]);
    assert_eq!(r.status.code(), Some(2), "{}", text(&r));
    let r = run(&["--prompt-ids", "1", "--temperature", "-1"]);
    assert_eq!(r.status.code(), Some(2), "{}", text(&r));
}
