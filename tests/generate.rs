//! `tttc generate`: greedy generation through a streaming session equals argmax decoding of the
//! one-shot logits of the whole generated sequence — prefill and decode together reproduce
//! what one pass over the sequence predicts at every position — on both model goldens'
//! weights (both backbones), in f64 on the interpreter and in f32 on the native backends, also
//! with every layer's token step split over two threads (the copies of the step are shared by
//! the layers). Bad prompts are user errors.

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

/// Generated ids printed by `tttc generate`; with `split`, every token step runs split over
/// two threads (`TTTC_DECODE_SPLIT_MIN=0`: by default only large states split).
fn generate(stem: &str, prompt: &[i64], backend: &str, precision: &str, split: bool) -> Vec<i64> {
    let ids = prompt
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let new = NEW.to_string();
    let mut command = tttc_command();
    if split {
        command
            .env("TTTC_DECODE_SPLIT_MIN", "0")
            .env("TTTC_NUM_THREADS", "2");
    }
    let r = command.args([
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
    let r = r.output().expect("the tttc binary runs");
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
        let mut runs = vec![("interp", "f64", false)];
        for backend in backends() {
            if backend != "interp" {
                runs.push((backend, "f32", false));
                runs.push((backend, "f32", true));
            }
        }
        for (backend, precision, split) in runs {
            let generated = generate(stem, &prompt, backend, precision, split);
            assert_eq!(generated.len(), NEW, "{stem} {backend} split {split}");
            let mut seq = prompt.clone();
            seq.extend(&generated);
            let (logits, vocab) = one_shot_logits(stem, &seq, precision, dir.path());
            for i in PROMPT - 1..seq.len() - 1 {
                let row = &logits[i * vocab..(i + 1) * vocab];
                assert_eq!(
                    argmax(row),
                    seq[i + 1],
                    "{stem} {backend} {precision} split {split}: token {} of {seq:?}",
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
    // `=`: with a space clap would reject `-1` as an unknown option before the validator runs.
    let r = run(&["--prompt-ids", "1", "--temperature=-1"]);
    assert_eq!(r.status.code(), Some(2), "{}", text(&r));
    assert!(
        text(&r).contains("--temperature must be 0 or more, got -1"),
        "{}",
        text(&r)
    );
}

/// A tiny language model for the logits checks: one `ttt` scan over the token ids scaled,
/// logits `out * head` with `head: [1, V]` a weight (so V = 0 and NaN weights are easy).
const TINY_LM: &str = "config mini_batch_size = 2
inner M {
  state W: [1, 1]
  loss(k: [1, 1], v: [1, 1]) = 0.5 * sum((k @ W - v) ^ 2)
  out(q: [1, 1]) = q @ W
}
main {
  input input_ids: int[B, L]
  input W: [H, 1, 1]
  input eta: [mini_batch_size]
  input head: [1, V]
  let t = reshape(input_ids, [B, L, 1]) * 0.01
  let x = permute(reshape(t, [B, L, H, 1]), [0, 2, 1, 3])
  let lr = permute(reshape(t, [B, L, H]), [0, 2, 1]) * 0 + 0.1
  let r = ttt M(W = W, k = x, v = x, q = x) per (B, H)
    update minibatch_gd(size = mini_batch_size, token_eta = eta, lr = lr)
  output logits = reshape(permute(r.out, [0, 2, 1, 3]), [B, L, 1]) * head
}
";

/// `tttc generate` of [`TINY_LM`] with `head` as the logits weight, at `temperature`.
fn generate_tiny(head: Vec<f64>, temperature: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("tiny.ttt");
    std::fs::write(&program, TINY_LM).unwrap();
    let t = |shape: Vec<usize>, v: Vec<f64>| tttc::runtime::Tensor::from_f64(shape, v).unwrap();
    let weights = BTreeMap::from([
        ("W".to_string(), t(vec![1, 1, 1], vec![0.5])),
        ("eta".to_string(), t(vec![2], vec![1.0, 0.5])),
        ("head".to_string(), t(vec![1, head.len()], head)),
    ]);
    let file = dir.path().join("w.safetensors");
    tttc::runtime::write_safetensors(&file, &weights).unwrap();
    tttc(&[
        "generate",
        program.to_str().unwrap(),
        "--weights",
        file.to_str().unwrap(),
        "--prompt-ids",
        "1,2",
        "--max-new-tokens",
        "3",
        &format!("--temperature={temperature}"),
        "--backend",
        "interp",
    ])
}

/// R3, R4: an empty logits row and NaN logits are user errors naming the decode step, not a
/// panic or token 0 forever.
#[test]
fn empty_and_nan_logits_are_errors_naming_the_step() {
    for temperature in ["0", "1"] {
        let r = generate_tiny(vec![1.0, 3.0, 2.0], temperature);
        assert!(r.status.success(), "{}", text(&r));
        let r = generate_tiny(vec![], temperature);
        assert_eq!(r.status.code(), Some(2), "{}", text(&r));
        assert!(
            text(&r).contains("at decode step 0") && text(&r).contains("are empty"),
            "{}",
            text(&r)
        );
        let r = generate_tiny(vec![1.0, f64::NAN, 2.0], temperature);
        assert_eq!(r.status.code(), Some(2), "{}", text(&r));
        assert!(
            text(&r).contains("at decode step 0") && text(&r).contains("NaN at token id 1"),
            "{}",
            text(&r)
        );
    }
}
