//! Session libraries (`tttc compile --session`): the pieces a streaming session of a program
//! needs, found by feeding a recording session the two chunk lengths a library runs (one
//! mini-batch from a boundary, one token), and the C header and shim around them. The run time
//! is the `tttc-aot-runtime` crate (the same session code, without LLVM), linked in as a
//! static library.

use crate::driver::{Precision, Settings};
use crate::execute::Backend;
use crate::stream::{Class, Session, StreamError};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use tttc_aot_runtime::manifest::{Manifest, TensorSig};
use tttc_backends::aot::c_identifier;
use tttc_ir::{Dim, Program};
use tttc_runtime::Tensor;

/// What a session library is made of before code generation: the manifest (pieces without
/// their signatures yet) and the programs of the pieces, in entry-table order.
pub struct SessionPieces {
    /// The manifest; `pieces` is filled by the caller as each piece is compiled.
    pub manifest: Manifest,
    /// The pieces' programs (bound to the library's shapes).
    pub programs: Vec<Program>,
}

/// The dimensions only the per-token inputs have, besides the sequence's (a batch).
fn token_only_dims(program: &Program) -> Result<BTreeSet<String>, StreamError> {
    let plan = crate::stream::plan::plan(program)?;
    let g = &program.graph;
    let mut in_weights = BTreeSet::new();
    let mut in_tokens = BTreeSet::new();
    for &id in g.inputs() {
        let (Some(name), Some(ty)) = (g.input_name(id), g.tensor_type(id)) else {
            continue;
        };
        let set = if plan.token_inputs.contains_key(name) {
            &mut in_tokens
        } else {
            &mut in_weights
        };
        for d in &ty.shape.0 {
            if let Dim::Sym(s) = d {
                set.insert(s.clone());
            }
        }
    }
    in_tokens.remove(&plan.seq_dim);
    Ok(in_tokens.difference(&in_weights).cloned().collect())
}

/// The batch of a session library: the dimension only the per-token inputs have (when there
/// is exactly one) and the sizes its pieces are compiled for.
#[derive(Clone, Debug)]
struct Batch {
    dim: Option<String>,
    sizes: Vec<usize>,
}

impl Batch {
    /// `requested` (`--batch`), else the value `settings` give the batch dimension, else 1.
    fn choose(
        program: &Program,
        settings: &Settings,
        requested: &[usize],
    ) -> Result<Batch, StreamError> {
        let candidates = token_only_dims(program)?;
        let dim = (candidates.len() == 1)
            .then(|| candidates.iter().next().cloned())
            .flatten();
        if requested.is_empty() {
            let size = dim
                .as_ref()
                .and_then(|d| settings.get(d))
                .and_then(|v| v.number())
                .map_or(1, |v| v as usize);
            return Ok(Batch {
                dim,
                sizes: vec![size],
            });
        }
        let Some(d) = dim else {
            let why = if candidates.is_empty() {
                "this program has no batch dimension (one that only the per-token inputs have)"
                    .to_string()
            } else {
                format!(
                    "the batch is ambiguous: the per-token inputs have dimensions {} that no weight has; fix all but one with --set",
                    candidates.iter().cloned().collect::<Vec<_>>().join(", ")
                )
            };
            return Err(StreamError::Input(format!("--batch: {why}")));
        };
        if settings.contains_key(&d) {
            return Err(StreamError::Input(format!(
                "--batch and --set {d}=... both give the batch: give one"
            )));
        }
        let mut sizes: Vec<usize> = Vec::new();
        for &n in requested {
            if n == 0 {
                return Err(StreamError::Input(
                    "--batch: a batch size is at least 1".into(),
                ));
            }
            if !sizes.contains(&n) {
                sizes.push(n);
            }
        }
        Ok(Batch {
            dim: Some(d),
            sizes,
        })
    }

    /// The settings with the batch dimension fixed to `size`.
    fn settings(&self, settings: &Settings, size: usize) -> Settings {
        let mut s = settings.clone();
        if let Some(d) = &self.dim {
            s.insert(d.clone(), tttc_ir::Setting::Number(size as f64));
        }
        s
    }
}

/// Every input's shape with the sequence dimension `seq` = `len` and the other dimensions
/// from the program's integer configs and `settings`; a dimension that only per-token inputs
/// have (a batch) is 1 unless set.
fn input_shapes(
    program: &Program,
    settings: &Settings,
    known: &BTreeMap<String, Vec<usize>>,
    seq: &str,
    len: usize,
) -> Result<BTreeMap<String, Vec<usize>>, StreamError> {
    let mut dims: BTreeMap<String, usize> = program.int_configs();
    for (k, v) in settings {
        if let Some(v) = v.number() {
            dims.entry(k.clone()).or_insert(v as usize);
        }
    }
    dims.insert(seq.to_string(), len);
    // Dimensions of the weights given as a file.
    for &id in program.graph.inputs() {
        let (Some(name), Some(ty)) = (program.graph.input_name(id), program.graph.tensor_type(id))
        else {
            continue;
        };
        if let Some(shape) = known.get(name) {
            for (d, &n) in ty.shape.0.iter().zip(shape) {
                if let Dim::Sym(s) = d {
                    dims.entry(s.clone()).or_insert(n);
                }
            }
        }
    }
    for derived in &program.derived_dims {
        if let Ok(v) = derived.expr.eval(&dims) {
            dims.entry(derived.name.clone()).or_insert(v);
        }
    }
    // A dimension only the per-token inputs have (the batch) defaults to 1.
    for d in token_only_dims(program).unwrap_or_default() {
        dims.entry(d).or_insert(1);
    }
    program.graph.input_shapes(&dims).map_err(|(name, s)| {
        StreamError::Input(format!(
            "the shape of `{name}` needs dimension `{s}`: give it with --set {s}=N (a session library fixes every dimension but the sequence's and the batch's)"
        ))
    })
}

/// A recording session, the outputs of its last chunk, and the weights' shapes.
type Recorded = (
    Session,
    BTreeMap<String, Tensor>,
    BTreeMap<String, Vec<usize>>,
);

/// A recording session on the interpreter over zero weights, fed `lens` chunks in turn;
/// returns it, the outputs of the last chunk and the weights' shapes.
fn record(
    program: &Program,
    settings: &Settings,
    known: &BTreeMap<String, Vec<usize>>,
    precision: Precision,
    lens: &[usize],
) -> Result<Recorded, StreamError> {
    let plan = crate::stream::plan::plan(program)?;
    let elem = precision.elem();
    let weights_shapes: BTreeMap<String, Vec<usize>> =
        input_shapes(program, settings, known, &plan.seq_dim, 1)?
            .into_iter()
            .filter(|(n, _)| !plan.token_inputs.contains_key(n))
            .collect();
    let weights = weights_shapes
        .iter()
        .map(|(n, s)| Ok((n.clone(), Tensor::try_zeros(s.clone(), elem)?)))
        .collect::<Result<_, StreamError>>()?;
    let mut session = Session::new(
        Backend::Interp,
        program.clone(),
        weights,
        settings.clone(),
        precision,
    )?;
    session.set_final_outputs(false);
    session.record_programs();
    let mut out = BTreeMap::new();
    for &len in lens {
        let shapes = input_shapes(program, settings, known, &plan.seq_dim, len)?;
        let chunk = plan
            .token_inputs
            .keys()
            .map(|n| Ok((n.clone(), Tensor::try_zeros(shapes[n].clone(), elem)?)))
            .collect::<Result<_, StreamError>>()?;
        out = session.feed(&chunk)?;
    }
    Ok((session, out, weights_shapes))
}

/// The axis of `node`'s (symbolic) shape that is the dimension `dim`.
fn axis_of(program: &Program, node: tttc_ir::NodeId, dim: Option<&str>) -> Option<usize> {
    let ty = program.graph.tensor_type(node)?;
    let dim = dim?;
    ty.shape
        .0
        .iter()
        .position(|d| matches!(d, Dim::Sym(s) if s == dim))
}

/// `shape` (of one token at batch `size`) with its batch axis set to one row.
fn one_row(mut shape: Vec<usize>, batch_axis: Option<usize>) -> Vec<usize> {
    if let Some(b) = batch_axis {
        if b < shape.len() {
            shape[b] = 1;
        }
    }
    shape
}

/// The pieces of a session library for `program` (after the pipeline) with every dimension
/// but the sequence's and the batch's fixed by its configs and `settings`: for each batch size
/// in `batch` (`--batch`; empty: the one `settings` give, else 1) a session is fed one
/// mini-batch from a boundary and then one token, and every distinct program it compiles is a
/// piece.
pub fn session_pieces(
    program: &Program,
    settings: &Settings,
    known: &BTreeMap<String, Vec<usize>>,
    precision: Precision,
    batch: &[usize],
) -> Result<SessionPieces, StreamError> {
    let batch = Batch::choose(program, settings, batch)?;
    let first = batch.settings(settings, batch.sizes[0]);
    // One token fixes the dimensions and tells the mini-batch size ...
    let (probe, _, _) = record(program, &first, known, precision, &[1])?;
    let k = probe.mini_batch().ok_or_else(|| {
        StreamError::not_streamable(
            program.name.clone(),
            "a session library needs at least one scan, and one mini-batch size for all of them",
        )
    })?;
    let plan = probe.plan().clone();
    let dim = batch.dim.as_deref();
    let input_ids: BTreeMap<&str, tttc_ir::NodeId> = program
        .graph
        .inputs()
        .iter()
        .filter_map(|&id| Some((program.graph.input_name(id)?, id)))
        .collect();
    let mut programs: Vec<Program> = Vec::new();
    let mut keys = BTreeSet::new();
    let mut token_inputs: Vec<TensorSig> = Vec::new();
    let mut outputs: Vec<TensorSig> = Vec::new();
    let mut weights = BTreeMap::new();
    for (i, &size) in batch.sizes.iter().enumerate() {
        let at = batch.settings(settings, size);
        // ... then a fresh session sees both lengths: the whole mini-batch and the single token.
        let (session, last, w) = record(program, &at, known, precision, &[k, 1])?;
        for p in session.recorded_programs() {
            if keys.insert(tttc_aot_runtime::manifest::piece_key(p)) {
                programs.push(p.clone());
            }
        }
        let shapes = input_shapes(program, &at, known, &plan.seq_dim, 1)?;
        let mut inputs_now = Vec::new();
        for (n, &axis) in &plan.token_inputs {
            let batch_axis = input_ids
                .get(n.as_str())
                .and_then(|&id| axis_of(program, id, dim));
            inputs_now.push(TensorSig {
                name: n.clone(),
                shape: one_row(shapes[n].clone(), batch_axis),
                axis,
                batch_axis,
            });
        }
        let mut outputs_now = Vec::new();
        for o in &plan.outputs {
            if let Class::Token(axis) = o.class {
                let t = last.get(&o.name).ok_or_else(|| {
                    StreamError::internal(format!("the recording gave no output `{}`", o.name))
                })?;
                let batch_axis = axis_of(program, o.node, dim);
                let sig = TensorSig {
                    name: o.name.clone(),
                    shape: one_row(t.shape().to_vec(), batch_axis),
                    axis,
                    batch_axis,
                };
                // The output's batch axis read off its symbolic shape must be the axis that
                // holds the batch in the recording.
                if sig.shape_for(size, 1) != t.shape() {
                    return Err(StreamError::Input(format!(
                        "output `{}` has shape {:?} at batch {size}: its batch axis cannot be told, so the library cannot run other batch sizes (drop --batch, or fix the batch with --set)",
                        o.name,
                        t.shape()
                    )));
                }
                outputs_now.push(sig);
            }
        }
        if i == 0 {
            token_inputs = inputs_now;
            outputs = outputs_now;
            weights = w;
        } else if w != weights
            || outputs_now
                .iter()
                .map(|s| &s.shape)
                .ne(outputs.iter().map(|s| &s.shape))
            || inputs_now
                .iter()
                .map(|s| &s.shape)
                .ne(token_inputs.iter().map(|s| &s.shape))
        {
            return Err(StreamError::internal(format!(
                "the shapes of one batch row differ between batch {} and {size}",
                batch.sizes[0]
            )));
        }
    }
    Ok(SessionPieces {
        manifest: Manifest {
            program: program.clone(),
            settings: settings.clone(),
            f64: precision == Precision::F64,
            mini_batch: k,
            batch_sizes: batch.sizes,
            token_inputs,
            outputs,
            weights: weights.into_iter().collect(),
            pieces: Vec::new(),
        },
        programs,
    })
}

fn c_type(m: &Manifest) -> &'static str {
    if m.f64 {
        "double"
    } else {
        "float"
    }
}

/// The symbol of piece `i`'s native entry.
pub fn piece_symbol(i: usize) -> String {
    format!("tttc_piece_{i}")
}

/// The C header of a session library: every function, shape, ownership rule and error code.
pub fn session_header(m: &Manifest) -> String {
    let t = c_type(m);
    let name = &m.program.name;
    let guard = format!("TTTC_{}_H", c_identifier(name).to_uppercase());
    let mut s = String::new();
    let _ = writeln!(
        s,
        "/* Generated by tttc (`tttc compile --session`) for program `{name}`. Do not edit. */"
    );
    let _ = writeln!(s, "#ifndef {guard}\n#define {guard}\n\n#include <stddef.h>\n#include <stdint.h>\n\n#ifdef __cplusplus\nextern \"C\" {{\n#endif\n");
    let _ = writeln!(
        s,
        "/* A streaming session of `{name}`: feed the sequence in chunks of any length (a prompt,\n * then one token at a time); the outputs equal one pass over the whole sequence. Every\n * tensor is row-major {t} (an `int` input holds whole numbers as {t}). Every dimension\n * but the sequence's and the batch's was fixed when the library was compiled; a session's\n * batch is one of tttc_batch_sizes (tttc_session_set_batch, before the first token); a chunk of\n * n tokens runs as whole mini-batches of TTTC_MINI_BATCH tokens (from a mini-batch\n * boundary) and single tokens, as `tttc run --chunks` does.\n *\n * Thread safety: separate sessions may be used from separate threads at once; one session\n * is locked for the length of each call (calls on it from several threads are serialized).\n * tttc_last_error() is per thread. The pieces' parallel loops use a worker pool of\n * TTTC_NUM_THREADS threads (default: every CPU), shared by the sessions.\n */\n"
    );
    let _ = writeln!(s, "typedef {t} tttc_real;");
    let _ = writeln!(s, "#define TTTC_MINI_BATCH {}", m.mini_batch);
    let _ = writeln!(s, "#define TTTC_N_WEIGHTS {}", m.weights.len());
    let _ = writeln!(s, "#define TTTC_N_INPUTS {}", m.token_inputs.len());
    let _ = writeln!(s, "#define TTTC_N_OUTPUTS {}", m.outputs.len());
    let _ = writeln!(s, "#define TTTC_N_BATCH_SIZES {}\n", m.batch_sizes.len());
    let _ = writeln!(
        s,
        "/* The batch sizes the library runs (a session starts with the first). */\nstatic const int64_t tttc_batch_sizes[TTTC_N_BATCH_SIZES] = {{{}}};\n",
        m.batch_sizes
            .iter()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(s, "/* Error codes (every function returns one or sets one; the message is tttc_last_error()). */");
    for (code, n, what) in [
        (0, "TTTC_OK", "success"),
        (1, "TTTC_ERR_ARGUMENT", "a NULL pointer, n_tokens < 1, or a batch set after the first token"),
        (2, "TTTC_ERR_SHAPE", "a buffer's length does not match its tensor's shape for n_tokens, a token id is out of range, or a batch size the library was not compiled for"),
        (3, "TTTC_ERR_WEIGHTS", "the weights do not fit this model: a missing tensor or a wrong shape"),
        (4, "TTTC_ERR_STATE", "a saved state from another program or of other shapes"),
        (5, "TTTC_ERR_IO", "a file that cannot be read or written"),
        (6, "TTTC_ERR_INTERNAL", "a bug in tttc (reported, never an abort)"),
    ] {
        let _ = writeln!(s, "#define {n} {code} /* {what} */");
    }
    let _ = writeln!(s, "\n/* Per-token inputs, in the order of tttc_session_feed's `inputs` (shape for n tokens of a\n * session of batch b; the sequence axis is n, the batch axis b):");
    let dims = |sig: &TensorSig| {
        sig.shape
            .iter()
            .enumerate()
            .map(|(i, d)| {
                if i == sig.axis {
                    "n".to_string()
                } else if Some(i) == sig.batch_axis {
                    "b".to_string()
                } else {
                    d.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (i, sig) in m.token_inputs.iter().enumerate() {
        let _ = writeln!(s, " *   [{i}] {:<28} [{}]", sig.name, dims(sig));
    }
    let _ = writeln!(s, " * Per-token outputs, in the order of `outputs`:");
    for (i, sig) in m.outputs.iter().enumerate() {
        let _ = writeln!(s, " *   [{i}] {:<28} [{}]", sig.name, dims(sig));
    }
    let _ = writeln!(
        s,
        " * Elements per token and batch row of each (a buffer for n tokens of a session of batch b\n * holds n * b times as many): */"
    );
    let per = |v: &[TensorSig]| {
        v.iter()
            .map(|sig| sig.per_token().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        s,
        "static const int64_t tttc_input_per_token[TTTC_N_INPUTS] = {{{}}};",
        per(&m.token_inputs)
    );
    let _ = writeln!(
        s,
        "static const int64_t tttc_output_per_token[TTTC_N_OUTPUTS] = {{{}}};",
        per(&m.outputs)
    );
    let names = |v: &[TensorSig]| {
        v.iter()
            .map(|sig| format!("{:?}", sig.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        s,
        "static const char* const tttc_input_names[TTTC_N_INPUTS] = {{{}}};",
        names(&m.token_inputs)
    );
    let _ = writeln!(
        s,
        "static const char* const tttc_output_names[TTTC_N_OUTPUTS] = {{{}}};\n",
        names(&m.outputs)
    );
    let _ = writeln!(
        s,
        "/* Weights, in the order of tttc_session_new_from_buffers and\n * tttc_session_new_borrowing_buffers (name, shape):"
    );
    for (i, (n, shape)) in m.weights.iter().enumerate() {
        let _ = writeln!(s, " *   [{i}] {n} {shape:?}");
    }
    let _ = writeln!(s, " */\n");
    s.push_str(SESSION_API);
    let _ = writeln!(s, "\n#ifdef __cplusplus\n}}\n#endif\n\n#endif");
    s
}

const SESSION_API: &str = r#"/* An opaque session. */
typedef struct tttc_session tttc_session;

/* Creates a session from a safetensors file holding every weight above under its name (other
 * tensors in the file are ignored; f64 weights are rounded for an f32 library). The file is
 * read in place (memory-mapped) and may be deleted after the call. Returns NULL on failure
 * and sets *error (when error is not NULL): TTTC_ERR_IO (cannot read the file),
 * TTTC_ERR_WEIGHTS (a weight missing or of another shape), TTTC_ERR_ARGUMENT (NULL path). */
tttc_session* tttc_session_new(const char* weights_path, int* error);

/* Creates a session from caller-owned buffers: weights[i] holds weight i (order above) with
 * lens[i] elements. The elements are copied; the buffers may be freed after the call.
 * Errors as tttc_session_new (TTTC_ERR_WEIGHTS for a wrong length). */
tttc_session* tttc_session_new_from_buffers(const tttc_real* const weights[], const int64_t lens[], int* error);

/* As tttc_session_new_from_buffers, but zero-copy: the session reads the buffers in place, so
 * they must stay valid and unchanged until tttc_session_free (the caller keeps ownership and
 * frees them after the session). A buffer not aligned to sizeof(tttc_real) is copied instead.
 * Errors as tttc_session_new_from_buffers. */
tttc_session* tttc_session_new_borrowing_buffers(const tttc_real* const weights[], const int64_t lens[], int* error);

/* Feeds the next n_tokens >= 1 tokens (a prompt of any length, or one token) of every batch
 * row: inputs[i] holds per-token input i for n_tokens tokens with input_lens[i] elements
 * (n_tokens * batch * tttc_input_per_token[i]); outputs[i] receives per-token output i for
 * these tokens and has output_lens[i] elements. Buffers are the
 * caller's: read (inputs) or written (outputs) during the call only. Lengths are checked
 * and the values of `int` inputs (token ids) against their declared range before anything
 * runs (TTTC_ERR_SHAPE, TTTC_ERR_ARGUMENT; the session is unchanged then). After
 * TTTC_ERR_INTERNAL the session may have taken some of the tokens: free it.
 * Returns TTTC_OK or an error code. */
int tttc_session_feed(tttc_session* s, int64_t n_tokens,
                      const tttc_real* const inputs[], const int64_t input_lens[],
                      tttc_real* const outputs[], const int64_t output_lens[]);

/* Sets the session's batch (rows fed side by side, each its own sequence) to one of
 * tttc_batch_sizes; a session starts with tttc_batch_sizes[0]. Only before the first token
 * (and before tttc_session_load, which then expects a state of this batch): TTTC_ERR_ARGUMENT
 * after it, TTTC_ERR_SHAPE for a batch size the library was not compiled for. */
int tttc_session_set_batch(tttc_session* s, int64_t batch);

/* The session's batch (-1 for NULL). */
int64_t tttc_session_batch(tttc_session* s);

/* Tokens fed so far (-1 for NULL). */
int64_t tttc_session_position(tttc_session* s);

/* Writes the session's state (position, every scan's fast weights and partial sums) to path:
 * the safetensors file `tttc run --save-state` writes. TTTC_ERR_IO when it cannot be written. */
int tttc_session_save(tttc_session* s, const char* path);

/* Continues from a state written by tttc_session_save or `tttc run --save-state` for this
 * program and shapes. TTTC_ERR_STATE for another program's state or other shapes (checked at
 * the call when the session has been fed, else at the first feed), TTTC_ERR_IO for an
 * unreadable file. */
int tttc_session_load(tttc_session* s, const char* path);

/* Frees a session (NULL is a no-op). */
void tttc_session_free(tttc_session* s);

/* The message of this thread's last failed call ("" after a success); valid until its next call. */
const char* tttc_last_error(void);
"#;

/// The C shim of a session library: the manifest, the pieces' entry table, the public
/// functions (wrapping the run time's), `tttc_parallel_for` and `tttc_gemm_f32`/`_f64`.
pub fn session_shim(header_name: &str, pieces: usize, manifest: &[u8]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "/* Generated by tttc. Do not edit. */\n#include \"{header_name}\"\n"
    );
    let _ = writeln!(
        s,
        "typedef void (*tttc_entry)(const void* const*, void* const*);"
    );
    for i in 0..pieces {
        let _ = writeln!(
            s,
            "extern void {}(const void* const*, void* const*);",
            piece_symbol(i)
        );
    }
    let table: Vec<String> = (0..pieces).map(piece_symbol).collect();
    let _ = writeln!(
        s,
        "static const tttc_entry tttc_pieces[] = {{{}}};",
        table.join(", ")
    );
    let _ = write!(s, "static const unsigned char tttc_manifest[] = {{");
    for (i, b) in manifest.iter().enumerate() {
        if i % 24 == 0 {
            s.push_str("\n ");
        }
        let _ = write!(s, "{b},");
    }
    let _ = writeln!(s, "\n}};\n");
    s.push_str(
        r#"extern tttc_session* tttc_rt_session_new(const unsigned char*, size_t, const tttc_entry*, size_t, const char*, int*);
extern tttc_session* tttc_rt_session_new_from_buffers(const unsigned char*, size_t, const tttc_entry*, size_t, const tttc_real* const*, const int64_t*, int, int*);
extern int tttc_rt_session_feed(tttc_session*, int64_t, const tttc_real* const*, const int64_t*, tttc_real* const*, const int64_t*);
extern int64_t tttc_rt_session_position(tttc_session*);
extern int tttc_rt_session_set_batch(tttc_session*, int64_t);
extern int64_t tttc_rt_session_batch(tttc_session*);
extern int tttc_rt_session_save(tttc_session*, const char*);
extern int tttc_rt_session_load(tttc_session*, const char*);
extern void tttc_rt_session_free(tttc_session*);
extern const char* tttc_rt_last_error(void);
extern void tttc_rt_parallel_for(void (*)(char*, int64_t, int64_t), char*, int64_t);
extern void tttc_rt_gemm_f32(const int64_t*, const float*, const float*, float*);
extern void tttc_rt_gemm_f64(const int64_t*, const double*, const double*, double*);

#define TTTC_LIBRARY tttc_manifest, sizeof tttc_manifest, tttc_pieces, sizeof tttc_pieces / sizeof tttc_pieces[0]

tttc_session* tttc_session_new(const char* weights_path, int* error) {
    return tttc_rt_session_new(TTTC_LIBRARY, weights_path, error);
}
tttc_session* tttc_session_new_from_buffers(const tttc_real* const weights[], const int64_t lens[], int* error) {
    return tttc_rt_session_new_from_buffers(TTTC_LIBRARY, weights, lens, 0, error);
}
tttc_session* tttc_session_new_borrowing_buffers(const tttc_real* const weights[], const int64_t lens[], int* error) {
    return tttc_rt_session_new_from_buffers(TTTC_LIBRARY, weights, lens, 1, error);
}
int tttc_session_feed(tttc_session* s, int64_t n_tokens, const tttc_real* const inputs[], const int64_t input_lens[],
                      tttc_real* const outputs[], const int64_t output_lens[]) {
    return tttc_rt_session_feed(s, n_tokens, inputs, input_lens, outputs, output_lens);
}
int64_t tttc_session_position(tttc_session* s) { return tttc_rt_session_position(s); }
int tttc_session_set_batch(tttc_session* s, int64_t batch) { return tttc_rt_session_set_batch(s, batch); }
int64_t tttc_session_batch(tttc_session* s) { return tttc_rt_session_batch(s); }
int tttc_session_save(tttc_session* s, const char* path) { return tttc_rt_session_save(s, path); }
int tttc_session_load(tttc_session* s, const char* path) { return tttc_rt_session_load(s, path); }
void tttc_session_free(tttc_session* s) { tttc_rt_session_free(s); }
const char* tttc_last_error(void) { return tttc_rt_last_error(); }
/* The pieces' parallel loops run on the run time's worker pool. */
void tttc_parallel_for(void (*f)(char*, int64_t, int64_t), char* ctx, int64_t n) { tttc_rt_parallel_for(f, ctx, n); }
/* ... and their matrix products on its matrix library. */
void tttc_gemm_f32(const int64_t* d, const float* a, const float* b, float* c) { tttc_rt_gemm_f32(d, a, b, c); }
void tttc_gemm_f64(const int64_t* d, const double* a, const double* b, double* c) { tttc_rt_gemm_f64(d, a, b, c); }
"#,
    );
    s
}
