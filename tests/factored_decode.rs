//! The factored form of an unfinished mini-batch (docs/streaming.md, "What a session holds"):
//! which states take it, what a saved state holds, that a session saved in it resumes bit for
//! bit, that a state saved in the dense form (every file written before the factored form
//! existed) still loads and continues, and that an inner model no other test names gets it.
//! Its results against the goldens and random models, in random chunkings on every backend,
//! are checked in tests/streaming.rs.

mod common;

use common::golden::inner_cases;
use common::*;
use std::collections::BTreeMap;
use tttc::runtime::{read_safetensors, Tensor};
use tttc::stream::{split_chunks, DecodeState, Session, StateForm};
use tttc::{bind, Backend, Precision};

/// A compiled program, its bound weights and its token inputs cut into chunks.
struct Streamed {
    program: tttc::ir::Program,
    settings: tttc::Settings,
    weights: BTreeMap<String, Tensor>,
    chunks: Vec<BTreeMap<String, Tensor>>,
    /// The one-shot outputs (interpreter).
    one_shot: BTreeMap<String, Tensor>,
    /// The per-token output `[B, H, L, f]` compared.
    output: &'static str,
}

fn streamed(
    (file, output): (&str, &'static str),
    settings: tttc::Settings,
    inputs: BTreeMap<String, Tensor>,
    sizes: &[usize],
) -> Streamed {
    let program = tttc::compile_file(&root().join(file), Precision::F64, &settings).unwrap();
    let bound = bind(&program, &inputs, &settings, Precision::F64.elem()).unwrap();
    let one_shot = tttc::prepare(Backend::Interp, &bound.program)
        .and_then(|p| p.run(&bound.inputs))
        .unwrap();
    let plan = tttc::stream::plan::plan(&program).unwrap();
    let (tokens, weights): (BTreeMap<_, _>, BTreeMap<_, _>) = bound
        .inputs
        .into_iter()
        .partition(|(k, _)| plan.token_inputs.contains_key(k));
    let chunks = split_chunks(&tokens, &plan.token_inputs, sizes).unwrap();
    Streamed {
        program,
        settings,
        weights,
        chunks,
        one_shot,
        output,
    }
}

impl Streamed {
    fn session(&self, backend: Backend, form: DecodeState) -> Session {
        let mut s = Session::new(
            backend,
            self.program.clone(),
            self.weights.clone(),
            self.settings.clone(),
            Precision::F64,
        )
        .unwrap();
        s.set_decode_state(form);
        s
    }

    /// The per-token output of `outs` (consecutive chunks), joined, against the one-shot run's
    /// tokens `start..` (f64; 1e-10 relative to its max: the forms differ from the dual form
    /// only in how a mini-batch's terms are grouped, i.e. in rounding).
    fn check_tail(&self, outs: &[BTreeMap<String, Tensor>], start: usize, what: &str) {
        let got: Vec<f64> = outs
            .iter()
            .flat_map(|o| per_token(&o[self.output]))
            .flatten()
            .collect();
        let want: Vec<f64> = per_token(&self.one_shot[self.output])
            .into_iter()
            .skip(start)
            .flatten()
            .collect();
        let got = Tensor::from_f64(vec![got.len()], got).unwrap();
        let want = Tensor::from_f64(vec![want.len()], want).unwrap();
        let err = rel_error(&got, &want);
        assert!(err <= 1e-10, "{what}: {err:e}");
    }
}

/// `z [B, H, L, f]` as one vector per token (every batch and head of it).
fn per_token(z: &Tensor) -> Vec<Vec<f64>> {
    let s = z.shape().to_vec();
    let (outer, l, f) = (s[0] * s[1], s[2], s[3]);
    let v = z.to_f64_vec();
    (0..l)
        .map(|t| {
            (0..outer)
                .flat_map(|o| v[(o * l + t) * f..(o * l + t + 1) * f].to_vec())
                .collect()
        })
        .collect()
}

fn mlp_case() -> (tttc::Settings, BTreeMap<String, Tensor>) {
    let case = inner_cases()
        .into_iter()
        .find(|c| c.program.ends_with("ttt_mlp.ttt") && c.stem.contains("L40"))
        .expect("the TTT-MLP L40 golden");
    (case.settings.clone(), case.inputs())
}

#[test]
fn weights_go_factored_biases_stay_dense_and_the_saved_state_says_so() {
    let (settings, inputs) = mlp_case();
    // 21 tokens: 16 (a whole mini-batch), then 5 token by token; then the rest.
    let s = streamed(
        ("examples/ttt_mlp.ttt", "Z"),
        settings,
        inputs,
        &[16, 3, 2, 19],
    );
    let dir = tempfile::tempdir().unwrap();
    for backend in session_backends() {
        let mut session = s.session(backend, DecodeState::Auto);
        let mut outs = Vec::new();
        for chunk in &s.chunks[..3] {
            outs.push(session.feed(chunk).unwrap());
        }
        // W1 [16, 64] and W2 [64, 16] factored; b1 [1, 64] and b2 [1, 16] dense (f = 16, K = 16).
        use StateForm::{Dense, Factored};
        assert_eq!(
            session.state_forms(),
            vec![vec![Factored, Dense, Factored, Dense]],
            "{}",
            backend.name()
        );
        let path = dir.path().join(format!("{}.safetensors", backend.name()));
        session.save(&path).unwrap();
        let saved = read_safetensors(&path).unwrap();
        let names: Vec<&str> = saved.keys().map(String::as_str).collect();
        for want in [
            "scan0.W1.start",
            "scan0.W1.factor_u",
            "scan0.W1.factor_d",
            "scan0.b1.partial_sum",
        ] {
            assert!(names.contains(&want), "{want} not in {names:?}");
        }
        assert!(!names.contains(&"scan0.W1.partial_sum"), "{names:?}");
        // Uᵀ [B, H, m, K], D [B, H, K, n]: five tokens in, the other columns and rows zero.
        let (u, d) = (&saved["scan0.W1.factor_u"], &saved["scan0.W1.factor_d"]);
        assert_eq!(u.shape(), &[2, 2, 16, 16]);
        assert_eq!(d.shape(), &[2, 2, 16, 64]);
        let zero_past = |t: &Tensor, column: bool| {
            let shape = t.shape().to_vec();
            let (rows, cols) = (shape[2], shape[3]);
            t.to_f64_vec().chunks(rows * cols).all(|m| {
                (0..rows).all(|r| {
                    (0..cols).all(|c| {
                        let token = if column { c } else { r };
                        token < 5 || m[r * cols + c] == 0.0
                    })
                })
            })
        };
        assert!(zero_past(u, true) && zero_past(d, false));
        assert!(u.to_f64_vec().iter().any(|&x| x != 0.0));
        // The rest, in the saved session and in one loaded from it: bit for bit equal, and the
        // one-shot run's values.
        let tail = s.chunks[3].clone();
        let mut loaded = s.session(backend, DecodeState::Auto);
        loaded.load(&path).unwrap();
        let a = session.feed(&tail).unwrap();
        let b = loaded.feed(&tail).unwrap();
        assert_tensor_close("resumed Z", &b["Z"], &a["Z"], 0.0);
        outs.push(a);
        s.check_tail(&outs, 0, backend.name());
    }
}

#[test]
fn a_dense_state_loads_into_a_factored_session_and_switches_at_the_boundary() {
    let (settings, inputs) = mlp_case();
    // Saved at token 21 (position 5 of the second mini-batch); then 11 tokens to the next
    // boundary one by one, and 8 more.
    let mut sizes = vec![16, 5];
    sizes.extend([1; 11]);
    sizes.push(8);
    let s = streamed(("examples/ttt_mlp.ttt", "Z"), settings, inputs, &sizes);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dense.safetensors");
    let mut dense = s.session(Backend::Interp, DecodeState::Dense);
    for chunk in &s.chunks[..2] {
        dense.feed(chunk).unwrap();
    }
    dense.save(&path).unwrap();
    assert!(read_safetensors(&path)
        .unwrap()
        .contains_key("scan0.W1.partial_sum"));
    for backend in session_backends() {
        let mut session = s.session(backend, DecodeState::Factored);
        session.load(&path).unwrap();
        let mut outs = Vec::new();
        for (i, chunk) in s.chunks[2..].iter().enumerate() {
            outs.push(session.feed(chunk).unwrap());
            // Dense until the mini-batch the file was saved in ends (with the 11th token).
            let factored = session.state_forms()[0][0] == StateForm::Factored;
            assert_eq!(factored, i >= 10, "{} chunk {i}", backend.name());
        }
        s.check_tail(&outs, 21, backend.name());
    }
}

#[test]
fn a_held_out_inner_model_gets_the_factored_form() {
    // examples/mlp3_silu.ttt: three weights, no biases, SiLU; named by no other decode test.
    let (b, h, l, d) = (1usize, 2usize, 37usize, 8usize);
    let mut rng = random::Lcg(7);
    let mut t = |shape: Vec<usize>, scale: f64| {
        let n = shape.iter().product();
        Tensor::from_f64(shape, rng.vec(n, scale)).unwrap()
    };
    let inputs: BTreeMap<String, Tensor> = [
        ("Q", t(vec![b, h, l, d], 1.0)),
        ("K", t(vec![b, h, l, d], 1.0)),
        ("V", t(vec![b, h, l, d], 1.0)),
        ("W1", t(vec![h, d, 2 * d], 0.3)),
        ("W2", t(vec![h, 2 * d, 2 * d], 0.3)),
        ("W3", t(vec![h, 2 * d, d], 0.3)),
        ("position_scale", t(vec![8], 1.0)),
        ("lr", t(vec![b, h, l], 0.01)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let mut settings = tttc::Settings::new();
    settings.insert("mini_batch_size".into(), 8.0.into());
    let sizes = [3, 1, 1, 9, 8, 2, 13];
    let s = streamed(("examples/mlp3_silu.ttt", "O"), settings, inputs, &sizes);
    for backend in session_backends() {
        let mut session = s.session(backend, DecodeState::Factored);
        let outs: Vec<_> = s.chunks.iter().map(|c| session.feed(c).unwrap()).collect();
        assert_eq!(
            session.state_forms(),
            vec![vec![StateForm::Factored; 3]],
            "{}",
            backend.name()
        );
        s.check_tail(&outs, 0, backend.name());
    }
}
