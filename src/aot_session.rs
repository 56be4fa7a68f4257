//! Session libraries (`tttc compile --session`): the pieces a streaming session of a program
//! needs, found by feeding a recording session the two chunk lengths a library runs (one
//! mini-batch from a boundary, one token), and the C header and shim around them. The run time
//! is the `tttc-aot-runtime` crate (the same session code, without LLVM), linked in as a
//! static library.

use crate::driver::{Precision, Settings};
use crate::execute::Backend;
use crate::stream::{Class, Session, StreamError};
use std::collections::BTreeMap;
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
    let g = &program.graph;
    // A dimension only the per-token inputs have (the batch) defaults to 1.
    if let Ok(plan) = crate::stream::plan::plan(program) {
        let mut in_weights = std::collections::BTreeSet::new();
        let mut in_tokens = std::collections::BTreeSet::new();
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
        for d in in_tokens.difference(&in_weights) {
            dims.entry(d.clone()).or_insert(1);
        }
    }
    g.input_shapes(&dims).map_err(|(name, s)| {
        StreamError::Input(format!(
            "the shape of `{name}` needs dimension `{s}`: give it with --set {s}=N (a session library fixes every dimension but the sequence's)"
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

/// The pieces of a session library for `program` (after the pipeline) with every dimension
/// but the sequence's fixed by its configs and `settings`: a session is fed one mini-batch
/// from a boundary and then one token, and every distinct program it compiles is a piece.
pub fn session_pieces(
    program: &Program,
    settings: &Settings,
    known: &BTreeMap<String, Vec<usize>>,
    precision: Precision,
) -> Result<SessionPieces, StreamError> {
    // One token fixes the dimensions and tells the mini-batch size ...
    let (probe, _, _) = record(program, settings, known, precision, &[1])?;
    let k = probe.mini_batch().ok_or_else(|| {
        StreamError::not_streamable(
            program.name.clone(),
            "a session library needs at least one scan, and one mini-batch size for all of them",
        )
    })?;
    // ... then a fresh session sees both lengths: the whole mini-batch and the single token.
    let (session, last, weights) = record(program, settings, known, precision, &[k, 1])?;
    let plan = session.plan();
    let shapes = input_shapes(program, settings, known, &plan.seq_dim, 1)?;
    let token_inputs = plan
        .token_inputs
        .iter()
        .map(|(n, &axis)| TensorSig {
            name: n.clone(),
            shape: shapes[n].clone(),
            axis,
        })
        .collect();
    let mut outputs = Vec::new();
    for o in &plan.outputs {
        if let Class::Token(axis) = o.class {
            let t = last.get(&o.name).ok_or_else(|| {
                StreamError::internal(format!("the recording gave no output `{}`", o.name))
            })?;
            outputs.push(TensorSig {
                name: o.name.clone(),
                shape: t.shape().to_vec(),
                axis,
            });
        }
    }
    Ok(SessionPieces {
        manifest: Manifest {
            program: program.clone(),
            settings: settings.clone(),
            f64: precision == Precision::F64,
            mini_batch: k,
            token_inputs,
            outputs,
            weights: weights.into_iter().collect(),
            pieces: Vec::new(),
        },
        programs: session.recorded_programs().to_vec(),
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
        "/* A streaming session of `{name}`: feed the sequence in chunks of any length (a prompt,\n * then one token at a time); the outputs equal one pass over the whole sequence. Every\n * tensor is row-major {t} (an `int` input holds whole numbers as {t}). Every dimension\n * but the sequence's was fixed when the library was compiled (the batch too); a chunk of\n * n tokens runs as whole mini-batches of TTTC_MINI_BATCH tokens (from a mini-batch\n * boundary) and single tokens, as `tttc run --chunks` does.\n *\n * Thread safety: separate sessions may be used from separate threads at once; one session\n * is locked for the length of each call (calls on it from several threads are serialized).\n * tttc_last_error() is per thread. The pieces' parallel loops use a worker pool of\n * TTTC_NUM_THREADS threads (default: every CPU), shared by the sessions.\n */\n"
    );
    let _ = writeln!(s, "typedef {t} tttc_real;");
    let _ = writeln!(s, "#define TTTC_MINI_BATCH {}", m.mini_batch);
    let _ = writeln!(s, "#define TTTC_N_WEIGHTS {}", m.weights.len());
    let _ = writeln!(s, "#define TTTC_N_INPUTS {}", m.token_inputs.len());
    let _ = writeln!(s, "#define TTTC_N_OUTPUTS {}\n", m.outputs.len());
    let _ = writeln!(s, "/* Error codes (every function returns one or sets one; the message is tttc_last_error()). */");
    for (code, n, what) in [
        (0, "TTTC_OK", "success"),
        (1, "TTTC_ERR_ARGUMENT", "a NULL pointer, or n_tokens < 1"),
        (2, "TTTC_ERR_SHAPE", "a buffer's length does not match its tensor's shape for n_tokens, or a token id is out of range"),
        (3, "TTTC_ERR_WEIGHTS", "the weights do not fit this model: a missing tensor or a wrong shape"),
        (4, "TTTC_ERR_STATE", "a saved state from another program or of other shapes"),
        (5, "TTTC_ERR_IO", "a file that cannot be read or written"),
        (6, "TTTC_ERR_INTERNAL", "a bug in tttc (reported, never an abort)"),
    ] {
        let _ = writeln!(s, "#define {n} {code} /* {what} */");
    }
    let _ = writeln!(s, "\n/* Per-token inputs, in the order of tttc_session_feed's `inputs` (shape for n tokens; the\n * sequence axis is n):");
    let dims = |sig: &TensorSig| {
        sig.shape
            .iter()
            .enumerate()
            .map(|(i, d)| {
                if i == sig.axis {
                    "n".to_string()
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
        " * Elements per token of each (a buffer for n tokens holds n times as many): */"
    );
    let per = |v: &[TensorSig]| {
        v.iter()
            .map(|sig| sig.shape.iter().product::<usize>().to_string())
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

/* Feeds the next n_tokens >= 1 tokens (a prompt of any length, or one token): inputs[i] holds
 * per-token input i for n_tokens tokens with input_lens[i] elements; outputs[i] receives
 * per-token output i for these tokens and has output_lens[i] elements. Buffers are the
 * caller's: read (inputs) or written (outputs) during the call only. Lengths are checked
 * and the values of `int` inputs (token ids) against their declared range before anything
 * runs (TTTC_ERR_SHAPE, TTTC_ERR_ARGUMENT; the session is unchanged then). After
 * TTTC_ERR_INTERNAL the session may have taken some of the tokens: free it.
 * Returns TTTC_OK or an error code. */
int tttc_session_feed(tttc_session* s, int64_t n_tokens,
                      const tttc_real* const inputs[], const int64_t input_lens[],
                      tttc_real* const outputs[], const int64_t output_lens[]);

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
