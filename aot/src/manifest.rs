//! What a session library holds besides its native code: the program, the shapes it was
//! compiled for, and every piece's key and signature. `tttc compile --session` writes it
//! (CBOR) into the library; the run time reads it back.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tttc_ir::{Program, Settings};

/// A tensor of the library's C API.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TensorSig {
    /// The program's name for it.
    pub name: String,
    /// Its shape for one token of one batch row (the sequence axis and the batch axis hold 1).
    pub shape: Vec<usize>,
    /// The sequence axis.
    pub axis: usize,
    /// The batch axis, when the tensor has one.
    pub batch_axis: Option<usize>,
}

impl TensorSig {
    /// The shape for `n` tokens of `batch` rows.
    pub fn shape_for(&self, batch: usize, n: usize) -> Vec<usize> {
        let mut s = self.shape.clone();
        s[self.axis] = n;
        if let Some(b) = self.batch_axis {
            s[b] = batch;
        }
        s
    }

    /// Elements per token and batch row.
    pub fn per_token(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A precompiled piece: its key and its kernel program's buffers in entry order.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PieceSig {
    /// The piece's program name (for messages).
    pub name: String,
    /// [`piece_key`] of the piece's program.
    pub key: Vec<u8>,
    /// Inputs, in entry order: name and shape.
    pub inputs: Vec<(String, Vec<usize>)>,
    /// Outputs, in entry order: name and shape.
    pub outputs: Vec<(String, Vec<usize>)>,
}

/// Everything the run time needs besides the native entries.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// The program after the pipeline (what the session is made from).
    pub program: Program,
    /// The settings it was compiled with.
    pub settings: Settings,
    /// Whether it computes in f64 (else f32).
    pub f64: bool,
    /// The mini-batch size: chunks run as pieces of this many tokens or one.
    pub mini_batch: usize,
    /// The batch sizes the pieces were compiled for; a session starts with the first.
    pub batch_sizes: Vec<usize>,
    /// The per-token inputs, in C API order.
    pub token_inputs: Vec<TensorSig>,
    /// The per-token outputs, in C API order.
    pub outputs: Vec<TensorSig>,
    /// The weights (every other input): name and shape, in C API order.
    pub weights: Vec<(String, Vec<usize>)>,
    /// The pieces, in the order of the library's entry table.
    pub pieces: Vec<PieceSig>,
}

/// The key of a piece: SHA-256 of its program's exact encoding (the session's piece table
/// compares programs by the same encoding).
pub fn piece_key(program: &Program) -> Vec<u8> {
    let mut bytes = Vec::new();
    // Encoding into memory cannot fail for these types; an empty key then matches nothing.
    let _ = ciborium::into_writer(program, &mut bytes);
    Sha256::digest(&bytes).to_vec()
}

impl Manifest {
    /// The manifest's encoding.
    pub fn to_bytes(&self) -> Result<Vec<u8>, String> {
        let mut bytes = Vec::new();
        ciborium::into_writer(self, &mut bytes).map_err(|e| e.to_string())?;
        Ok(bytes)
    }

    /// A manifest from its encoding.
    pub fn from_bytes(bytes: &[u8]) -> Result<Manifest, String> {
        ciborium::from_reader(bytes).map_err(|e| e.to_string())
    }
}
