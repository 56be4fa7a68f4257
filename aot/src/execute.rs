//! Pieces: what the session code asks tttc's executor for, answered from the library's
//! precompiled entries (looked up by the program's key) instead of compiled.

use crate::manifest::{piece_key, PieceSig};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};
use tttc_ir::Program;
use tttc_runtime::{ElemType, Tensor, TensorData};

/// A piece's native entry: one pointer per input, one per output, in its kernel program's
/// order (the JIT's calling convention).
pub type EntryFn = unsafe extern "C" fn(*const *const u8, *const *mut u8);

/// Where pieces come from. A library has only [`Backend::Aot`]; the others exist for the
/// session code's checks (the JIT's native backends) and are never made here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The library's precompiled pieces.
    Aot,
    /// The LLVM JIT (not in a library).
    Llvm,
    /// The Cranelift JIT (not in a library).
    Cranelift,
}

impl Backend {
    /// Whether pieces can be had.
    pub fn is_built(self) -> bool {
        self == Backend::Aot
    }

    /// The backend's name.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Aot => "aot",
            Backend::Llvm => "llvm",
            Backend::Cranelift => "cranelift",
        }
    }
}

/// Why a piece cannot be had or run.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The backend is not in this build.
    #[error("the `{0}` backend is not in an ahead-of-time library")]
    NotBuilt(&'static str),
    /// The session asked for a program the library was not compiled with: shapes other than
    /// the compiled ones.
    #[error(
        "this library holds no piece `{0}` for these shapes (it was compiled for other dimensions)"
    )]
    NoPiece(String),
    /// A piece's inputs do not fit it.
    #[error("piece `{piece}`: {message}")]
    Run {
        /// The piece's program.
        piece: String,
        /// What is wrong.
        message: String,
    },
}

/// Names and element counts of a piece's buffers (as tttc's backends list them).
pub type BufferList = Vec<(String, usize)>;

/// One precompiled piece.
#[derive(Debug)]
pub struct Piece {
    entry: EntryFn,
    sig: PieceSig,
    elem: ElemType,
}

/// Every piece of the library, by key; set once when the library is first used.
struct Registry {
    pieces: HashMap<Vec<u8>, Arc<Piece>>,
}

static REGISTRY: OnceLock<Registry> = OnceLock::new();

/// Registers the library's pieces (the first call wins; a library has one set).
pub(crate) fn register(sigs: &[PieceSig], entries: &[EntryFn], elem: ElemType) {
    REGISTRY.get_or_init(|| Registry {
        pieces: sigs
            .iter()
            .zip(entries)
            .map(|(sig, &entry)| {
                (
                    sig.key.clone(),
                    Arc::new(Piece {
                        entry,
                        sig: sig.clone(),
                        elem,
                    }),
                )
            })
            .collect(),
    });
}

/// A piece ready to run (cheap to clone).
#[derive(Clone, Debug)]
pub struct Prepared {
    piece: Arc<Piece>,
}

/// The library's piece for `program` (which must be bound to the compiled shapes).
pub fn prepare(backend: Backend, program: &Program) -> Result<Prepared, ExecError> {
    if backend != Backend::Aot {
        return Err(ExecError::NotBuilt(backend.name()));
    }
    let key = piece_key(program);
    REGISTRY
        .get()
        .and_then(|r| r.pieces.get(&key))
        .map(|p| Prepared { piece: p.clone() })
        .ok_or_else(|| ExecError::NoPiece(program.name.clone()))
}

impl Prepared {
    /// Runs the piece on `inputs` (by name; each checked against the piece's shape and
    /// element type before native code runs) and returns its outputs by name.
    pub fn run(
        &self,
        inputs: &BTreeMap<String, Tensor>,
    ) -> Result<BTreeMap<String, Tensor>, ExecError> {
        let p = &self.piece;
        let bad = |message: String| ExecError::Run {
            piece: p.sig.name.clone(),
            message,
        };
        let mut ins: Vec<*const u8> = Vec::with_capacity(p.sig.inputs.len());
        for (name, shape) in &p.sig.inputs {
            let t = inputs
                .get(name)
                .ok_or_else(|| bad(format!("input `{name}` is missing")))?;
            if t.shape() != shape.as_slice() || t.elem_type() != p.elem {
                return Err(bad(format!(
                    "input `{name}` is {} {:?}, the piece takes {} {shape:?}",
                    t.elem_type(),
                    t.shape(),
                    p.elem
                )));
            }
            ins.push(match t.data() {
                TensorData::F32(v) => v.as_ptr().cast(),
                TensorData::F64(v) => v.as_ptr().cast(),
            });
        }
        let mut outs: Vec<TensorData> = p
            .sig
            .outputs
            .iter()
            .map(|(_, shape)| {
                let n: usize = shape.iter().product();
                match p.elem {
                    ElemType::F32 => TensorData::F32(vec![f32::NAN; n].into()),
                    ElemType::F64 => TensorData::F64(vec![f64::NAN; n].into()),
                }
            })
            .collect();
        let ptrs: Vec<*mut u8> = outs
            .iter_mut()
            .map(|d| match d {
                TensorData::F32(v) => v.as_mut_ptr().cast(),
                TensorData::F64(v) => v.as_mut_ptr().cast(),
            })
            .collect();
        // SAFETY: the entry was compiled from the piece's kernel program, whose buffers are
        // exactly `sig` (checked above for the inputs, allocated here for the outputs); its
        // accesses were proven in bounds when it was compiled.
        unsafe { (p.entry)(ins.as_ptr(), ptrs.as_ptr()) };
        let mut out = BTreeMap::new();
        for ((name, shape), data) in p.sig.outputs.iter().zip(outs) {
            let t = Tensor::new(shape.clone(), data).map_err(|e| bad(e.to_string()))?;
            out.insert(name.clone(), t);
        }
        Ok(out)
    }

    /// [`Prepared::run`] (the outputs are fresh; `spare` is left alone).
    pub fn run_reusing(
        &self,
        inputs: &BTreeMap<String, Tensor>,
        spare: &mut BTreeMap<String, Tensor>,
    ) -> Result<BTreeMap<String, Tensor>, ExecError> {
        let _ = spare;
        self.run(inputs)
    }

    /// Raw-storage runs are not offered (the session then never splits a token step over
    /// threads; the pieces' own parallel loops still use every core).
    pub fn raw_buffers(&self) -> Option<(BufferList, BufferList)> {
        None
    }

    /// Never called: [`Prepared::raw_buffers`] is `None`.
    ///
    /// # Safety
    ///
    /// None needed; it does nothing but fail.
    pub unsafe fn run_raw(&self, _: &[*const u8], _: &[*mut u8]) -> Result<(), ExecError> {
        Err(ExecError::Run {
            piece: self.piece.sig.name.clone(),
            message: "raw runs are not offered".into(),
        })
    }
}
