//! Hugging Face style model folders (`--model DIR`, docs/models.md): a folder the test writes
//! from a model golden case — `config.json` and the weights in one file or in three shards
//! with an index — computes exactly what `--config` and `--inputs` compute on the same tensors;
//! broken folders exit 2 naming the file and are left untouched; `generate` encodes and
//! decodes with a tokenizer.json (built here with the `tokenizers` crate).

mod common;

use common::{assert_tensor_close, load, root, text, tttc};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tttc::runtime::{read_safetensors_with_ints, write_safetensors_with_ints, Tensor, TensorFile};

const LM: &str = "examples/ttt_lm.ttt";
const STEM: &str = "model_linear_T";

fn golden(suffix: &str) -> PathBuf {
    root().join(format!("tests/golden/{STEM}{suffix}"))
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8")
}

/// The golden case's tensors: the weights (every float tensor) and the token ids.
fn golden_tensors() -> TensorFile {
    read_safetensors_with_ints(&golden(".inputs.safetensors")).expect("golden inputs")
}

/// Writes a model folder in `dir`: config.json and the weights, in `shards` files (1: a single
/// model.safetensors); returns the file with the remaining inputs (the token ids).
fn write_folder(dir: &Path, shards: usize) -> PathBuf {
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::copy(golden(".config.json"), dir.join("config.json")).expect("config");
    let file = golden_tensors();
    let ids = dir.parent().expect("parent").join("ids.safetensors");
    write_safetensors_with_ints(&ids, &BTreeMap::new(), &file.ints).expect("ids");
    if shards == 1 {
        write_safetensors_with_ints(
            &dir.join("model.safetensors"),
            &file.floats,
            &BTreeMap::new(),
        )
        .expect("weights");
        return ids;
    }
    let name = |i: usize| format!("model-{:05}-of-{shards:05}.safetensors", i + 1);
    let mut parts: Vec<BTreeMap<String, Tensor>> = vec![BTreeMap::new(); shards];
    let mut weight_map = serde_json::Map::new();
    for (i, (tensor, t)) in file.floats.into_iter().enumerate() {
        weight_map.insert(tensor.clone(), name(i % shards).into());
        parts[i % shards].insert(tensor, t);
    }
    for (i, part) in parts.iter().enumerate() {
        write_safetensors_with_ints(&dir.join(name(i)), part, &BTreeMap::new()).expect("shard");
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).expect("index");
    ids
}

/// `tttc run` with `args` and `--out out`, asserting success; the outputs.
fn run_ok(args: &[&str], out: &Path) -> BTreeMap<String, Tensor> {
    let mut all = args.to_vec();
    all.extend(["--out", s(out)]);
    let r = tttc(&all);
    assert!(r.status.success(), "{args:?}: {}", text(&r));
    load(out)
}

/// What `--config` + `--inputs` compute on the golden case.
fn reference(tmp: &Path) -> BTreeMap<String, Tensor> {
    run_ok(
        &[
            "run",
            LM,
            "--config",
            s(&golden(".config.json")),
            "--inputs",
            s(&golden(".inputs.safetensors")),
        ],
        &tmp.join("reference.safetensors"),
    )
}

/// Same tensors, same program, same code: the same bits.
fn assert_identical(got: &BTreeMap<String, Tensor>, want: &BTreeMap<String, Tensor>, what: &str) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (name, t) in want {
        assert_tensor_close(&format!("{what}: {name}"), &got[name], t, 0.0);
    }
}

#[test]
fn single_file_and_sharded_folders_compute_what_config_and_inputs_compute() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let want = reference(tmp.path());
    for shards in [1, 3] {
        let dir = tmp.path().join(format!("model{shards}"));
        let ids = write_folder(&dir, shards);
        // The native backend this build has (the reference ran on the default one).
        let native = if cfg!(feature = "llvm") {
            "llvm"
        } else {
            "cranelift"
        };
        for backend in [native, "interp"] {
            let got = run_ok(
                &[
                    "run",
                    LM,
                    "--model",
                    s(&dir),
                    "--inputs",
                    s(&ids),
                    "--backend",
                    backend,
                ],
                &tmp.path().join(format!("{shards}-{backend}.safetensors")),
            );
            if backend == native {
                assert_identical(&got, &want, &format!("{shards} shard(s)"));
            } else {
                // The interpreter against native code: the f32 golden tolerance.
                for (name, t) in &want {
                    assert_tensor_close(name, &got[name], t, common::golden::TOL_F32);
                }
            }
        }
    }
}

#[test]
fn model_and_config_together_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("model");
    let ids = write_folder(&dir, 1);
    let r = tttc(&[
        "run",
        LM,
        "--model",
        s(&dir),
        "--config",
        s(&golden(".config.json")),
        "--inputs",
        s(&ids),
        "--out",
        s(&tmp.path().join("o.safetensors")),
    ]);
    assert_eq!(r.status.code(), Some(2), "{}", text(&r));
}

/// Every file in `dir` with its size and modification time.
fn listing(dir: &Path) -> BTreeMap<PathBuf, (u64, std::time::SystemTime)> {
    std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| {
            let e = e.expect("entry");
            let m = e.metadata().expect("metadata");
            (e.path(), (m.len(), m.modified().expect("mtime")))
        })
        .collect()
}

#[test]
fn broken_folders_exit_2_naming_the_file_and_stay_untouched() {
    let tmp = tempfile::tempdir().expect("tempdir");
    type Break = fn(&Path) -> PathBuf;
    let cases: [(&str, usize, Break); 5] = [
        ("missing shard", 3, |d| {
            let f = d.join("model-00002-of-00003.safetensors");
            std::fs::remove_file(&f).expect("rm");
            f
        }),
        ("shard lacks a tensor", 3, |d| {
            // Shard 1 loses its tensors: an empty safetensors file.
            let f = d.join("model-00001-of-00003.safetensors");
            write_safetensors_with_ints(&f, &BTreeMap::new(), &BTreeMap::new()).expect("write");
            f
        }),
        ("index does not parse", 3, |d| {
            let f = d.join("model.safetensors.index.json");
            std::fs::write(&f, "{\"weight_map\": {").expect("write");
            f
        }),
        ("index names a path outside", 3, |d| {
            let f = d.join("model.safetensors.index.json");
            std::fs::write(
                &f,
                r#"{"weight_map": {"lm_head.weight": "../ids.safetensors"}}"#,
            )
            .expect("write");
            f
        }),
        ("missing config.json", 1, |d| {
            let f = d.join("config.json");
            std::fs::remove_file(&f).expect("rm");
            f
        }),
    ];
    for (i, (what, shards, damage)) in cases.into_iter().enumerate() {
        let dir = tmp.path().join(format!("case{i}"));
        let ids = write_folder(&dir, shards);
        let named = damage(&dir);
        let before = listing(&dir);
        let out = tmp.path().join(format!("out{i}.safetensors"));
        for cmd in ["run", "bench"] {
            let mut args = vec![cmd, LM, "--model", s(&dir), "--inputs", s(&ids)];
            if cmd == "run" {
                args.extend(["--out", s(&out)]);
            }
            let r = tttc(&args);
            let err = String::from_utf8_lossy(&r.stderr);
            assert_eq!(r.status.code(), Some(2), "{what} ({cmd}): {}", text(&r));
            assert!(
                err.contains(&named.display().to_string()),
                "{what} ({cmd}): the message names {}:\n{err}",
                named.display()
            );
            assert!(!err.contains("panicked"), "{err}");
        }
        assert_eq!(listing(&dir), before, "{what}: the folder is untouched");
        assert!(!out.exists());
    }
}

/// `file` rewritten with `pad` spaces after its JSON header (still a valid safetensors file
/// with the same tensors): with `pad` not a multiple of 4 no f32 tensor's bytes are aligned.
fn pad_header(file: &Path, pad: usize) {
    let bytes = std::fs::read(file).expect("read");
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let mut out = ((n + pad) as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&bytes[8..8 + n]);
    out.resize(out.len() + pad, b' ');
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(file, out).expect("write");
}

/// Every file in `dir` with its contents.
fn contents(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    listing(dir)
        .into_keys()
        .map(|p| {
            let c = std::fs::read(&p).expect("read");
            (p, c)
        })
        .collect()
}

#[test]
fn weights_read_in_place_compute_the_bits_of_weights_copied_and_leave_the_files_alone() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mapped = tmp.path().join("mapped");
    let ids = write_folder(&mapped, 1);
    let copied = tmp.path().join("copied");
    write_folder(&copied, 1);
    pad_header(&copied.join("model.safetensors"), 2);

    // In process: the aligned file's tensors view the mapping, the padded file's are copies
    // (every one named), and the elements are the same.
    let a = read_safetensors_with_ints(&mapped.join("model.safetensors")).expect("mapped");
    let b = read_safetensors_with_ints(&copied.join("model.safetensors")).expect("copied");
    assert!(a.copied.is_empty(), "{:?}", a.copied);
    assert!(a.floats.values().all(|t| t.data().is_mapped()));
    assert_eq!(b.copied, b.floats.keys().cloned().collect::<Vec<_>>());
    assert!(b.floats.values().all(|t| !t.data().is_mapped()));
    assert_eq!(a.floats, b.floats);
    drop((a, b));

    let before = [contents(&mapped), contents(&copied)];
    let times = [listing(&mapped), listing(&copied)];
    let run = |dir: &Path, tag: &str| {
        let out = tmp.path().join(format!("{tag}.safetensors"));
        let args = [
            "run",
            LM,
            "--model",
            s(dir),
            "--inputs",
            s(&ids),
            "--out",
            s(&out),
        ];
        let r = tttc(&args);
        assert!(r.status.success(), "{tag}: {}", text(&r));
        (load(&out), String::from_utf8_lossy(&r.stderr).into_owned())
    };
    let (got, quiet) = run(&mapped, "mapped");
    let (want, note) = run(&copied, "copied");
    assert_identical(&got, &want, "mapped against copied weights");
    assert!(!quiet.contains("not aligned"), "{quiet}");
    assert!(
        note.contains("not aligned") && note.contains(&copied.display().to_string()),
        "the copies are reported:\n{note}"
    );
    assert_eq!(
        [contents(&mapped), contents(&copied)],
        before,
        "files unchanged"
    );
    assert_eq!(
        [listing(&mapped), listing(&copied)],
        times,
        "mtimes unchanged"
    );
}

/// A word-level tokenizer over the golden model's vocabulary: token id n is the word `wN`.
fn write_tokenizer(path: &Path, vocab: usize) {
    use tokenizers::models::wordlevel::WordLevel;
    use tokenizers::pre_tokenizers::whitespace::Whitespace;
    let words = (0..vocab).map(|i| (format!("w{i}"), i as u32)).collect();
    let model = WordLevel::builder()
        .vocab(words)
        .unk_token("w0".into())
        .build()
        .expect("word level model");
    let mut tokenizer = tokenizers::Tokenizer::new(model);
    tokenizer.with_pre_tokenizer(Some(Whitespace {}));
    tokenizer.save(path, false).expect("save tokenizer");
}

#[test]
fn generate_encodes_and_decodes_with_the_folders_tokenizer() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("model");
    write_folder(&dir, 2);
    write_tokenizer(&dir.join("tokenizer.json"), 97);
    let prompt_ids = [5u32, 17, 3, 42, 8];
    let ids_arg = prompt_ids.map(|i| i.to_string()).join(",");
    let by_ids = tttc(&[
        "generate",
        LM,
        "--weights",
        s(&golden(".inputs.safetensors")),
        "--config",
        s(&golden(".config.json")),
        "--prompt-ids",
        &ids_arg,
        "--max-new-tokens",
        "12",
    ]);
    assert!(by_ids.status.success(), "{}", text(&by_ids));
    let expected: Vec<String> = String::from_utf8_lossy(&by_ids.stdout)
        .split_whitespace()
        .map(|id| format!("w{id}"))
        .collect();
    assert_eq!(expected.len(), 12);

    let prompt = prompt_ids.map(|i| format!("w{i}")).join(" ");
    let by_text = tttc(&[
        "generate",
        LM,
        "--model",
        s(&dir),
        "--prompt",
        &prompt,
        "--max-new-tokens",
        "12",
    ]);
    assert!(by_text.status.success(), "{}", text(&by_text));
    let words: Vec<String> = String::from_utf8_lossy(&by_text.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(words, expected, "the same tokens, decoded");

    // A tokenizer file that does not parse: exit 2 naming it.
    let bad = tmp.path().join("bad_tokenizer.json");
    std::fs::write(&bad, "{\"model\": 3}").expect("write");
    let r = tttc(&[
        "generate",
        LM,
        "--model",
        s(&dir),
        "--tokenizer",
        s(&bad),
        "--prompt",
        "w1 w2",
    ]);
    assert_eq!(r.status.code(), Some(2), "{}", text(&r));
    assert!(
        text(&r).contains(&bad.display().to_string()),
        "{}",
        text(&r)
    );
}
