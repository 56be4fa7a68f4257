//! The compile cache on disk (docs/cache.md): a second run loads what the first stored and
//! computes the same; anything that changes the machine code gives a new entry; damaged
//! entries are recompiled; an unusable cache directory is a clear error. Each test has its own
//! `TTTC_CACHE_DIR` in a temporary directory. Three kinds of entries: machine code (`llvm-*`),
//! optimized programs (`graph-*`) and kernel programs (`kernel-*`). Hits are told by
//! `--cache-stats` and by the entry files (their inode and modification time), never by timing.

#![cfg(feature = "llvm")]

mod common;

use common::golden::TOL_F32;
use common::{assert_tensor_close, load, root, text};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use tttc::runtime::Tensor;

const LM: &str = "examples/ttt_lm.ttt";
const INNER: &str = "examples/ttt_linear.ttt";

fn golden(name: &str) -> String {
    root()
        .join("tests/golden")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// `tttc ARGS --out OUT --cache-stats` with the cache in `cache`.
fn run(cache: &Path, args: &[&str], out: &Path) -> Output {
    run_env(cache, args, out, &[])
}

/// [`run`] with environment variables `env` set.
fn run_env(cache: &Path, args: &[&str], out: &Path, env: &[(&str, &str)]) -> Output {
    common::tttc_command()
        .env("TTTC_CACHE_DIR", cache)
        .envs(env.iter().copied())
        .args(args)
        .args(["--out", out.to_str().expect("utf-8"), "--cache-stats"])
        .output()
        .expect("tttc runs")
}

/// Like [`run`], failing the test when the run fails; returns stderr and the outputs.
fn run_ok(cache: &Path, args: &[&str], out: &Path) -> (String, BTreeMap<String, Tensor>) {
    let r = run(cache, args, out);
    assert!(r.status.success(), "{args:?}: {}", text(&r));
    (String::from_utf8_lossy(&r.stderr).into_owned(), load(out))
}

/// The cache's entry files with (inode, mtime): a stored-again entry is a new file.
fn entries(cache: &Path) -> BTreeMap<PathBuf, (u64, std::time::SystemTime)> {
    let Ok(dir) = std::fs::read_dir(cache) else {
        return BTreeMap::new();
    };
    dir.map(|e| {
        let e = e.expect("entry");
        let m = e.metadata().expect("metadata");
        #[cfg(unix)]
        let ino = std::os::unix::fs::MetadataExt::ino(&m);
        #[cfg(not(unix))]
        let ino = 0;
        (e.path(), (ino, m.modified().expect("mtime")))
    })
    .collect()
}

/// The `--cache-stats` line's counts: machine code loaded and stored, optimized programs
/// loaded and stored, damaged entries, kernel programs loaded and stored.
fn stats(stderr: &str) -> [usize; 7] {
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("compile cache: "))
        .unwrap_or_else(|| panic!("no cache statistics in:\n{stderr}"));
    let n: Vec<usize> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .take(7)
        .map(|s| s.parse().expect("a count"))
        .collect();
    n.try_into().expect("seven counts")
}

/// The machine code entries (`llvm-KEY.obj`) among `entries`.
fn code_entries(cache: &Path) -> Vec<PathBuf> {
    kind_entries(cache, "llvm-")
}

/// The entries whose file name starts with `prefix` (`llvm-`, `graph-`, `kernel-`).
fn kind_entries(cache: &Path, prefix: &str) -> Vec<PathBuf> {
    entries(cache)
        .into_keys()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect()
}

/// Outputs equal bit for bit (the same machine code on the same inputs).
fn assert_identical(a: &BTreeMap<String, Tensor>, b: &BTreeMap<String, Tensor>, what: &str) {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, t) in a {
        assert_tensor_close(&format!("{what}: {name}"), t, &b[name], 0.0);
    }
}

fn lm_args() -> Vec<String> {
    vec![
        "run".into(),
        LM.into(),
        "--config".into(),
        golden("model_linear_T.config.json"),
        "--inputs".into(),
        golden("model_linear_T.inputs.safetensors"),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn a_second_run_loads_the_code_and_computes_the_same() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = tmp.path().join("cache");
    let args = lm_args();
    let (err1, first) = run_ok(&cache, &strs(&args), &tmp.path().join("1.safetensors"));
    let [loaded, stored, programs_loaded, programs_stored, _, kernels_loaded, kernels_stored] =
        stats(&err1);
    assert_eq!(
        (loaded, programs_loaded, kernels_loaded),
        (0, 0, 0),
        "{err1}"
    );
    assert!(stored >= 1, "{err1}");
    assert_eq!(programs_stored, 1, "{err1}");
    assert_eq!(
        kernels_stored, stored,
        "one kernel program per code entry: {err1}"
    );
    let before = entries(&cache);
    assert_eq!(
        before.len(),
        stored + programs_stored + kernels_stored,
        "one file per entry, no temporary left"
    );

    // The second run skips the graph stages, the kernel stages and code generation.
    let (err2, second) = run_ok(&cache, &strs(&args), &tmp.path().join("2.safetensors"));
    assert_eq!(stats(&err2), [stored, 0, 1, 0, 0, stored, 0], "{err2}");
    assert_eq!(entries(&cache), before, "a hit rewrites nothing");
    assert_identical(&first, &second, "cached run");

    // The cached code is right, not just repeatable: the golden logits at the f32 tolerance
    // of the golden tests (tests/common/golden.rs).
    let expected = load(Path::new(&golden(
        "model_linear_T.expected_f32.safetensors",
    )));
    assert_tensor_close("logits", &second["logits"], &expected["logits"], TOL_F32);

    // --no-cache neither reads nor writes it, and computes the same as the MCJIT path.
    let mut uncached = args.clone();
    uncached.push("--no-cache".into());
    let (err3, third) = run_ok(&cache, &strs(&uncached), &tmp.path().join("3.safetensors"));
    assert!(err3.contains("compile cache: off"), "{err3}");
    assert_eq!(entries(&cache), before);
    // Same optimized IR through a different code model and linker: equal up to rounding.
    for (name, t) in &third {
        assert_tensor_close(name, t, &second[name], 1e-6);
    }
}

/// A run whose cache statistics say it compiled everything and loaded nothing, adding entries,
/// and that computes what the same run without the cache computes.
fn assert_recompiles(cache: &Path, args: &[String], tmp: &Path, what: &str) {
    let before = entries(cache).len();
    let (err, got) = run_ok(cache, &strs(args), &tmp.join(format!("{what}.safetensors")));
    let [loaded, stored, _, programs_stored, _, kernels_loaded, kernels_stored] = stats(&err);
    assert_eq!(
        (loaded, kernels_loaded),
        (0, 0),
        "{what}: nothing may come from another program's entry\n{err}"
    );
    assert!(stored >= 1, "{what}: {err}");
    assert_eq!(
        entries(cache).len(),
        before + stored + programs_stored + kernels_stored,
        "{what}: new entries"
    );
    let mut uncached = args.to_vec();
    uncached.push("--no-cache".into());
    let (_, want) = run_ok(
        cache,
        &strs(&uncached),
        &tmp.join(format!("{what}-uncached.safetensors")),
    );
    for (name, t) in &want {
        assert_tensor_close(&format!("{what}: {name}"), &got[name], t, 1e-6);
    }
}

#[test]
fn anything_that_changes_the_code_gives_a_new_entry() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = tmp.path().join("cache");
    let inputs = golden("inner_linear_B1_nh2_f16_K16_L64.inputs.safetensors");
    let base: Vec<String> = ["run", INNER, "--inputs", &inputs]
        .iter()
        .map(|s| s.to_string())
        .collect();
    run_ok(&cache, &strs(&base), &tmp.path().join("base.safetensors"));

    // Shapes: another batch size and sequence length.
    let other = golden("inner_linear_B2_nh2_f16_K16_L40.inputs.safetensors");
    let shapes: Vec<String> = ["run", INNER, "--inputs", &other]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_recompiles(&cache, &shapes, tmp.path(), "shapes");

    // The program text: half the inner loss (another gradient, other code). The optimized
    // program is computed again too (the shapes above reused the base's).
    let programs_before = kind_entries(&cache, "graph-").len();
    let source = std::fs::read_to_string(root().join(INNER)).expect("read");
    assert!(source.contains("0.5 * sum"));
    let changed = tmp.path().join("changed.ttt");
    std::fs::write(&changed, source.replace("0.5 * sum", "0.25 * sum")).expect("write");
    let text: Vec<String> = ["run", changed.to_str().expect("utf-8"), "--inputs", &inputs]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_recompiles(&cache, &text, tmp.path(), "text");
    assert_eq!(kind_entries(&cache, "graph-").len(), programs_before + 1);

    // The precision.
    let mut f64 = base.clone();
    f64.extend(["--precision".into(), "f64".into()]);
    assert_recompiles(&cache, &f64, tmp.path(), "f64");

    // A config value from a config file (the language model).
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(golden("model_linear_T.config.json")).expect("read"),
    )
    .expect("json");
    let mut lm = lm_args();
    run_ok(&cache, &strs(&lm), &tmp.path().join("lm.safetensors"));
    let mut changed_config = config.clone();
    changed_config["ttt_base_lr"] = serde_json::json!(0.5);
    assert_ne!(config["ttt_base_lr"], changed_config["ttt_base_lr"]);
    let config_file = tmp.path().join("config.json");
    std::fs::write(&config_file, changed_config.to_string()).expect("write");
    lm[3] = config_file.to_string_lossy().into_owned();
    assert_recompiles(&cache, &lm, tmp.path(), "config_file");

    // A setting of the kernel stages from the environment (no matrix library: loops only):
    // the same optimized program, another kernel program, so neither the kernel program's nor
    // the code's entry is reused.
    let before = entries(&cache).len();
    let r = run_env(
        &cache,
        &strs(&lm),
        &tmp.path().join("gemm.safetensors"),
        &[("TTTC_GEMM_MIN_MNK", "off")],
    );
    assert!(r.status.success(), "{}", common::text(&r));
    let err = String::from_utf8_lossy(&r.stderr);
    let [loaded, stored, programs_loaded, _, _, kernels_loaded, kernels_stored] = stats(&err);
    assert_eq!(
        (loaded, programs_loaded, kernels_loaded, kernels_stored),
        (0, 1, 0, 1),
        "{err}"
    );
    assert!(stored >= 1, "{err}");
    assert_eq!(
        entries(&cache).len(),
        before + kernels_stored + stored,
        "{err}"
    );

    // Another backend takes nothing from the LLVM entries (Cranelift compiles in
    // milliseconds and is not cached).
    if cfg!(feature = "cranelift") {
        let before = entries(&cache);
        let mut cl = base.clone();
        cl.extend(["--backend".into(), "cranelift".into()]);
        let (err, _) = run_ok(&cache, &strs(&cl), &tmp.path().join("cl.safetensors"));
        assert_eq!(stats(&err)[..2], [0, 0], "{err}");
        assert_eq!(entries(&cache), before);
    }
}

#[test]
fn damaged_entries_are_reported_and_compiled_again() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = tmp.path().join("cache");
    let inputs = golden("inner_linear_B1_nh2_f16_K16_L64.inputs.safetensors");
    let args = ["run", INNER, "--inputs", &inputs];
    let (_, want) = run_ok(&cache, &args, &tmp.path().join("want.safetensors"));
    let files = code_entries(&cache);
    assert_eq!(files.len(), 1, "one kernel program, one entry");
    let entry = &files[0];
    let good = std::fs::read(entry).expect("read");

    let key = entry
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.strip_prefix("llvm-"))
        .expect("llvm-KEY.obj")
        .to_string();
    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x40;
    type Damage = Box<dyn Fn()>;
    let damages: [(&str, Damage); 4] = [
        ("truncated", {
            let (e, g) = (entry.clone(), good.clone());
            Box::new(move || std::fs::write(&e, &g[..g.len() / 3]).expect("write"))
        }),
        ("flipped", {
            let e = entry.clone();
            Box::new(move || std::fs::write(&e, &flipped).expect("write"))
        }),
        ("empty", {
            let e = entry.clone();
            Box::new(move || std::fs::write(&e, b"").expect("write"))
        }),
        // A well-formed entry (right key, right checksum) whose object is not an object: the
        // linker refuses it.
        ("not an object", {
            let e = entry.clone();
            Box::new(move || tttc::cache::store(&e, &key, b"not an object file").expect("store"))
        }),
    ];
    for (what, damage) in &damages {
        damage();
        let (err, got) = run_ok(&cache, &args, &tmp.path().join("got.safetensors"));
        assert!(
            err.contains("warning: ignoring the damaged compile cache entry")
                && err.contains(&entry.display().to_string()),
            "{what}: {err}"
        );
        assert_eq!(stats(&err), [0, 1, 1, 0, 1, 1, 0], "{what}: {err}");
        assert_identical(&got, &want, what);
        assert_eq!(
            std::fs::read(entry).expect("read"),
            good,
            "{what}: repaired"
        );
    }

    // A damaged optimized program: computed again.
    let program_entry = kind_entries(&cache, "graph-")
        .pop()
        .expect("the optimized program's entry");
    let bytes = std::fs::read(&program_entry).expect("read");
    std::fs::write(&program_entry, &bytes[..bytes.len() - 1]).expect("write");
    let (err, got) = run_ok(&cache, &args, &tmp.path().join("got.safetensors"));
    assert!(err.contains(&program_entry.display().to_string()), "{err}");
    assert_eq!(stats(&err), [1, 0, 0, 1, 1, 1, 0], "{err}");
    assert_identical(&got, &want, "damaged program");
    assert_eq!(std::fs::read(&program_entry).expect("read"), bytes);

    // A damaged kernel program (truncated, or a well-formed entry that does not decode):
    // computed again, the same bytes; the machine code still loads.
    let kernel_entry = kind_entries(&cache, "kernel-")
        .pop()
        .expect("the kernel program's entry");
    let bytes = std::fs::read(&kernel_entry).expect("read");
    let kernel_key = kernel_entry
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.strip_prefix("kernel-"))
        .expect("kernel-KEY.obj")
        .to_string();
    let damages: [(&str, Damage); 2] = [
        ("truncated", {
            let (e, b) = (kernel_entry.clone(), bytes.clone());
            Box::new(move || std::fs::write(&e, &b[..b.len() / 2]).expect("write"))
        }),
        ("not a kernel program", {
            let e = kernel_entry.clone();
            Box::new(move || tttc::cache::store(&e, &kernel_key, b"\xff\x00").expect("store"))
        }),
    ];
    for (what, damage) in &damages {
        damage();
        let (err, got) = run_ok(&cache, &args, &tmp.path().join("got.safetensors"));
        assert!(
            err.contains(&kernel_entry.display().to_string()),
            "{what}: {err}"
        );
        assert_eq!(stats(&err), [1, 0, 1, 0, 1, 0, 1], "{what}: {err}");
        assert_identical(&got, &want, what);
        assert_eq!(
            std::fs::read(&kernel_entry).expect("read"),
            bytes,
            "{what}: repaired"
        );
    }
}

#[test]
fn an_unusable_cache_directory_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // A directory below a regular file cannot be created (whoever runs the test, root too).
    let file = tmp.path().join("a_file");
    std::fs::write(&file, b"not a directory").expect("write");
    let cache = file.join("cache");
    let inputs = golden("inner_linear_B1_nh2_f16_K16_L64.inputs.safetensors");
    let args = ["run", INNER, "--inputs", &inputs];
    let out = tmp.path().join("out.safetensors");
    let r = run(&cache, &args, &out);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(2), "{err}");
    assert!(
        err.contains("compile cache directory") && err.contains(&cache.display().to_string()),
        "{err}"
    );
    assert!(!out.exists(), "nothing written after the error");
    assert_eq!(std::fs::read(&file).expect("read"), b"not a directory");

    // --no-cache runs there.
    let mut uncached = args.to_vec();
    uncached.push("--no-cache");
    run_ok(&cache, &uncached, &out);
}

#[test]
fn concurrent_runs_share_a_cache_safely() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = tmp.path().join("cache");
    let inputs = golden("inner_linear_B1_nh2_f16_K16_L64.inputs.safetensors");
    let children: Vec<_> = (0..3)
        .map(|i| {
            let out = tmp.path().join(format!("{i}.safetensors"));
            let child = common::tttc_command()
                .env("TTTC_CACHE_DIR", &cache)
                .args(["run", INNER, "--inputs", &inputs, "--out"])
                .arg(&out)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("tttc starts");
            (child, out)
        })
        .collect();
    let mut results = Vec::new();
    for (child, out) in children {
        let r = child.wait_with_output().expect("tttc runs");
        assert!(r.status.success(), "{}", text(&r));
        results.push(load(&out));
    }
    for r in &results[1..] {
        assert_identical(r, &results[0], "concurrent");
    }
    let files = entries(&cache);
    assert_eq!(
        files.len(),
        3,
        "one optimized program, one kernel program, one code entry, no temporary file left: \
         {files:?}"
    );
    // And it is a good one.
    let (err, again) = run_ok(
        &cache,
        &["run", INNER, "--inputs", &inputs],
        &tmp.path().join("again.safetensors"),
    );
    assert_eq!(stats(&err), [1, 0, 1, 0, 0, 1, 0], "{err}");
    assert_identical(&again, &results[0], "after concurrent runs");
}
