//! `token_eta`'s two forms are told apart by its shape when a program is lowered: `[K]` per
//! position in the mini-batch, the shape of `lr` per token; anything else is a located error.
//! Programs serialized before the form existed load as per position.

use tttc_ir::syntax::compile;
use tttc_ir::{DType, Op, Program, TokenEtaForm, TttScan};

fn example(name: &str) -> String {
    let path = format!("{}/../examples/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn scan(p: &Program) -> &TttScan {
    p.graph
        .node_ids()
        .into_iter()
        .find_map(|id| match &p.graph.node(id).op {
            Op::Ttt(s) => Some(&**s),
            _ => None,
        })
        .expect("a scan")
}

#[test]
fn the_form_follows_the_shape() {
    let per_position = example("ttt_linear.ttt");
    let p = compile(
        "ttt_linear.ttt",
        &per_position,
        DType::F64,
        &Default::default(),
    )
    .unwrap();
    assert_eq!(scan(&p).token_eta, TokenEtaForm::PerPosition);
    assert!(!scan(&p).header().contains("token_eta"));

    let p = compile(
        "fla_ttt_linear.ttt",
        &example("fla_ttt_linear.ttt"),
        DType::F64,
        &Default::default(),
    )
    .unwrap();
    let s = scan(&p);
    assert_eq!(s.token_eta, TokenEtaForm::PerToken);
    assert!(s.header().contains("token_eta=per_token"));
    // token_eta is a sequence operand like lr; the states and params are not.
    let n = s.operand_count();
    assert!(s.is_sequence_operand(n - 2) && s.is_sequence_operand(n - 1));
    assert!(!s.is_sequence_operand(0));

    // The same per-token form on ttt_linear.ttt: token_eta shaped like ttt_lr_eta.
    let per_token = per_position.replacen(
        "input token_eta: [mini_batch_size]",
        "input token_eta: [B, H, L]",
        1,
    );
    let p = compile("per_token.ttt", &per_token, DType::F64, &Default::default()).unwrap();
    assert_eq!(scan(&p).token_eta, TokenEtaForm::PerToken);

    // Shared across heads ([B, L] per (B, H) slices to [L]) is per token too.
    let shared = per_position.replacen(
        "input token_eta: [mini_batch_size]",
        "input token_eta: [B, L]",
        1,
    );
    let p = compile("shared.ttt", &shared, DType::F64, &Default::default()).unwrap();
    assert_eq!(scan(&p).token_eta, TokenEtaForm::PerToken);

    let bad = per_position.replacen(
        "input token_eta: [mini_batch_size]",
        "input token_eta: [B, L, f]",
        1,
    );
    let e = compile("bad.ttt", &bad, DType::F64, &Default::default()).unwrap_err();
    let text = e.render(false);
    assert!(
        text.contains("bad.ttt:33:67") && text.contains("the shape of `lr`, [L]"),
        "{text}"
    );
}

#[test]
fn scans_serialized_without_the_form_are_per_position() {
    let p = compile(
        "fla_ttt_linear.ttt",
        &example("fla_ttt_linear.ttt"),
        DType::F64,
        &Default::default(),
    )
    .unwrap();
    let mut json = serde_json::to_value(scan(&p)).unwrap();
    assert_eq!(json["token_eta"], "PerToken");
    json.as_object_mut().unwrap().remove("token_eta");
    let old: TttScan = serde_json::from_value(json).unwrap();
    assert_eq!(old.token_eta, TokenEtaForm::PerPosition);
}
