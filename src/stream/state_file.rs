//! The saved form of a session's state: a safetensors file with the position, the program's
//! name and every scan's carried tensors.

use super::StreamError;
use std::collections::BTreeMap;
use std::path::Path;
use tttc_runtime::{read_safetensors, write_safetensors, Tensor};

/// The tensor holding the number of tokens fed, `[1]` (f64; exact below 2^53).
const POSITION: &str = "stream.position";
/// The tensor holding the program's name as bytes (f64 per byte), to refuse another program's
/// state.
const PROGRAM: &str = "stream.program";

/// The part holding a state at the start of the unfinished mini-batch.
pub(super) const START: &str = "start";
/// The part holding the partial gradient sum of a densely carried state.
pub(super) const PARTIAL: &str = "partial_sum";
/// The part holding the left factors `U` `[K, m]` of a state carried in factored form.
pub(super) const FACTOR_U: &str = "factor_u";
/// The part holding the right factors `D` `[K, n]` (scaled by their tokens' `lr`).
pub(super) const FACTOR_D: &str = "factor_d";

/// Name of `part` of scan `i`'s state `s`: `scan<i>.<s>.<part>`. Which parts a file holds
/// says which form the state was saved in.
pub(super) fn part_name(i: usize, s: &str, part: &str) -> String {
    format!("scan{i}.{s}.{part}")
}

/// Name of the history of the shift at main-graph node `node`.
pub(super) fn history_name(node: usize) -> String {
    format!("shift{node}.history")
}

/// Writes a state.
pub(super) fn write(
    path: &Path,
    program: &str,
    position: usize,
    mut tensors: BTreeMap<String, Tensor>,
) -> Result<(), StreamError> {
    let internal = |e: tttc_runtime::RuntimeError| StreamError::internal(e.to_string());
    tensors.insert(
        POSITION.into(),
        Tensor::from_f64(vec![1], vec![position as f64]).map_err(internal)?,
    );
    let bytes: Vec<f64> = program.bytes().map(f64::from).collect();
    tensors.insert(
        PROGRAM.into(),
        Tensor::from_f64(vec![bytes.len()], bytes).map_err(internal)?,
    );
    Ok(write_safetensors(path, &tensors)?)
}

/// Reads a state written for `program`: the position and the scans' tensors.
pub(super) fn read(
    path: &Path,
    program: &str,
) -> Result<(usize, BTreeMap<String, Tensor>), StreamError> {
    let bad = |message: String| StreamError::State {
        path: path.display().to_string(),
        message,
    };
    // Copied out of the file (a state is small): `--save-state` may rewrite the file it was
    // loaded from while the session still holds these tensors.
    let mut tensors: BTreeMap<String, Tensor> = read_safetensors(path)?
        .into_iter()
        .map(|(name, t)| (name, t.into_owned()))
        .collect();
    let name = tensors
        .remove(PROGRAM)
        .ok_or_else(|| bad(format!("`{PROGRAM}` is missing; not a tttc session state")))?;
    let name: String = name
        .to_f64_vec()
        .iter()
        .map(|&b| char::from(b.clamp(0.0, 255.0) as u8))
        .collect();
    if name != program {
        return Err(bad(format!(
            "it was saved by program `{name}`, not `{program}`"
        )));
    }
    let position = tensors
        .remove(POSITION)
        .ok_or_else(|| bad(format!("`{POSITION}` is missing")))?
        .to_f64_vec();
    let position = match position.as_slice() {
        [p] if *p >= 0.0 && p.fract() == 0.0 && *p < 9.0e15 => *p as usize,
        _ => return Err(bad(format!("`{POSITION}` must hold one whole number"))),
    };
    Ok((position, tensors))
}
