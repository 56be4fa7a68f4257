//! A whole sequence fed through one session in consecutive chunks of given sizes: what
//! `tttc run --chunks` does, and what tests compare with a one-shot run.

use super::layout::{concat_axis, slice_axis};
use super::{DecodeState, Session, StreamError};
use crate::driver::{Precision, Settings};
use crate::execute::Backend;
use std::collections::BTreeMap;
use tttc_ir::Program;
use tttc_runtime::Tensor;

/// Runs `program` on `inputs` (every input, the whole sequence) by feeding consecutive chunks
/// of `sizes` tokens through one [`Session`]; their sum must be the sequence length. Returns
/// the same outputs as a one-shot run: per-token outputs joined along the sequence, the others
/// as they stand after the last chunk.
pub fn run_chunked(
    backend: Backend,
    program: &Program,
    inputs: &BTreeMap<String, Tensor>,
    settings: &Settings,
    precision: Precision,
    sizes: &[usize],
) -> Result<BTreeMap<String, Tensor>, StreamError> {
    run_chunked_with_state(
        backend,
        program,
        inputs,
        settings,
        precision,
        sizes,
        None,
        None,
        DecodeState::Auto,
    )
}

/// [`run_chunked`], continuing from the session state in `resume` (written by
/// [`Session::save`]) when given, and saving the state after the last chunk to `save` when
/// given: the inputs are then the tokens that follow the saved ones. `decode_state` says in
/// which form the session carries an unfinished mini-batch ([`Session::set_decode_state`]).
#[allow(clippy::too_many_arguments)]
pub fn run_chunked_with_state(
    backend: Backend,
    program: &Program,
    inputs: &BTreeMap<String, Tensor>,
    settings: &Settings,
    precision: Precision,
    sizes: &[usize],
    resume: Option<&std::path::Path>,
    save: Option<&std::path::Path>,
    decode_state: DecodeState,
) -> Result<BTreeMap<String, Tensor>, StreamError> {
    let token_inputs = super::plan::plan(program)?.token_inputs;
    let (tokens, weights): (BTreeMap<_, _>, BTreeMap<_, _>) = inputs
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .partition(|(k, _)| token_inputs.contains_key(k));
    let mut session = Session::new(
        backend,
        program.clone(),
        weights,
        settings.clone(),
        precision,
    )?;
    session.set_decode_state(decode_state);
    if let Some(path) = resume {
        session.load(path)?;
    }
    let chunks = split_chunks(&tokens, &token_inputs, sizes)?;
    let mut parts: BTreeMap<String, Vec<Tensor>> = BTreeMap::new();
    let mut last = BTreeMap::new();
    for chunk in &chunks {
        let out = session.feed(chunk)?;
        for (name, t) in out {
            if session.output_axis(&name).is_some() {
                parts.entry(name).or_default().push(t);
            } else {
                last.insert(name, t);
            }
        }
    }
    if let Some(path) = save {
        session.save(path)?;
    }
    for (name, pieces) in parts {
        let axis = session
            .output_axis(&name)
            .ok_or_else(|| StreamError::internal("output axis"))?;
        last.insert(name, concat_axis(pieces, axis)?);
    }
    Ok(last)
}

/// The per-token inputs `tokens` (whole sequences; `token_inputs` gives each one's sequence
/// axis) cut into consecutive chunks of `sizes` tokens, which must add up to the sequence
/// length.
pub fn split_chunks(
    tokens: &BTreeMap<String, Tensor>,
    token_inputs: &BTreeMap<String, usize>,
    sizes: &[usize],
) -> Result<Vec<BTreeMap<String, Tensor>>, StreamError> {
    let mut len: Option<usize> = None;
    for (name, &axis) in token_inputs {
        let t = tokens
            .get(name)
            .ok_or_else(|| StreamError::Input(format!("`{name}`: missing from the inputs")))?;
        let n = t.shape().get(axis).copied().unwrap_or(0);
        if len.is_some_and(|l| l != n) {
            return Err(StreamError::Input(format!(
                "`{name}` holds {n} token(s), other per-token inputs a different number"
            )));
        }
        len = Some(n);
    }
    let len = len.unwrap_or(0);
    // The sizes are the user's numbers: a plain sum could wrap around to the sequence length.
    let total = sizes
        .iter()
        .try_fold(0usize, |sum, &s| sum.checked_add(s))
        .ok_or_else(|| {
            StreamError::Input(format!(
                "the chunks add up to more tokens than can be counted, but the sequence has {len}"
            ))
        })?;
    if total != len {
        return Err(StreamError::Input(format!(
            "the chunks add up to {total} token(s) but the sequence has {len}"
        )));
    }
    if sizes.contains(&0) {
        return Err(StreamError::Input(
            "every chunk needs at least one token".into(),
        ));
    }
    let mut chunks = Vec::with_capacity(sizes.len());
    let mut start = 0;
    for &size in sizes {
        let mut chunk = BTreeMap::new();
        for (name, &axis) in token_inputs {
            chunk.insert(name.clone(), slice_axis(&tokens[name], axis, start, size)?);
        }
        chunks.push(chunk);
        start += size;
    }
    Ok(chunks)
}
