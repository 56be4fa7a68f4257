//! The token step split over blocks of scan slices that run on parallel threads: one compiled
//! program for `n / blocks` slices, called once per block on that block's rows of the full
//! `[n, ...]` tensors (no copies). Decoding is one small step per token, too short to pay for
//! parallel loops inside the step, but every slice is independent. A thread runs its blocks
//! one after another: blocks small enough that one block's weights stay in the core's
//! level-2 cache while the step passes over them several times (forward, backward, output).

use super::pieces::Pieces;
use super::StreamError;
use crate::execute::Prepared;
use std::collections::BTreeMap;
use tttc_ir::Program;
use tttc_runtime::{ElemType, Tensor, TensorData};

/// A token step compiled for one group of slices.
pub(super) struct GroupedStep {
    /// Row blocks of the slices.
    blocks: usize,
    /// Threads; thread `t` runs blocks `t, t + threads, …`.
    threads: usize,
    /// One compiled program per thread (each is called by one thread at a time).
    steps: Vec<Prepared>,
    /// Input names and per-block element counts, in program order.
    inputs: Vec<(String, usize)>,
    /// Output names, per-block element counts and full shapes `[n, ...]`.
    outputs: Vec<(String, usize, Vec<usize>)>,
}

/// Runs `f` as a worker of a team that keeps every core busy: parallel loops of the kernels it
/// calls stay on the calling thread.
fn as_worker<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(feature = "llvm")]
    return tttc_backends::llvm::as_worker(f);
    #[cfg(all(not(feature = "llvm"), feature = "cranelift"))]
    return tttc_backends::cranelift::as_worker(f);
    #[cfg(not(any(feature = "llvm", feature = "cranelift")))]
    f()
}

/// The number of worker threads native code may use.
pub(super) fn worker_threads() -> usize {
    #[cfg(feature = "llvm")]
    return tttc_backends::llvm::thread_count();
    #[cfg(all(not(feature = "llvm"), feature = "cranelift"))]
    return tttc_backends::cranelift::thread_count();
    #[cfg(not(any(feature = "llvm", feature = "cranelift")))]
    1
}

/// Pointers handed to one group's thread.
struct Job {
    inputs: Vec<*const u8>,
    outputs: Vec<*mut u8>,
    step: *const Prepared,
}

// SAFETY: a job's pointers address rows of tensors that outlive the scope it runs in; its
// outputs are rows no other job touches; the compiled entry behind `step` only reads its code
// and the buffers it is given, so calling it from another thread is sound.
unsafe impl Send for Job {}
// SAFETY: a job is only read (its pointers copied) by the thread that runs it.
unsafe impl Sync for Job {}

impl GroupedStep {
    /// `program` (the token step for `n / blocks` slices) compiled once per thread (copies
    /// shared with every other scan of the session that has the same step), or `None` when
    /// the backend cannot run on raw storage.
    pub(super) fn new(
        pieces: &mut Pieces,
        program: &Program,
        (blocks, threads): (usize, usize),
        n: usize,
    ) -> Result<Option<GroupedStep>, StreamError> {
        let threads = threads.clamp(1, blocks.max(1));
        let steps = pieces.prepare_copies(program, threads)?;
        let Some((inputs, outputs)) = steps.first().and_then(Prepared::raw_buffers) else {
            return Ok(None);
        };
        let g = &program.graph;
        let mut with_shapes = Vec::with_capacity(outputs.len());
        for (name, len) in outputs {
            let mut shape = g
                .output_by_name(&name)
                .and_then(|id| g.tensor_type(id))
                .and_then(|t| t.shape.to_known())
                .ok_or_else(|| StreamError::internal(format!("token step output `{name}`")))?;
            if let Some(first) = shape.first_mut() {
                *first = n;
            }
            with_shapes.push((name, len, shape));
        }
        Ok(Some(GroupedStep {
            blocks,
            threads,
            steps,
            inputs,
            outputs: with_shapes,
        }))
    }

    /// Runs every block on its rows of `inputs` (full `[n, ...]` tensors by name), the threads
    /// in parallel;
    /// returns the full outputs by name, written into same-named tensors of `spare` where they
    /// fit.
    pub(super) fn run(
        &self,
        inputs: &BTreeMap<String, Tensor>,
        spare: &mut BTreeMap<String, Tensor>,
        elem: ElemType,
    ) -> Result<BTreeMap<String, Tensor>, StreamError> {
        let size = elem.size_bytes();
        let mut outs: Vec<TensorData> = Vec::with_capacity(self.outputs.len());
        for (name, len, shape) in &self.outputs {
            let full = len * self.blocks;
            let t = match spare.remove(name) {
                Some(t) if t.len() == full && t.elem_type() == elem => t,
                _ => Tensor::zeros(shape.clone(), elem),
            };
            outs.push(t.into_parts().1);
        }
        let mut in_base = Vec::with_capacity(self.inputs.len());
        for (name, len) in &self.inputs {
            let t = inputs
                .get(name)
                .ok_or_else(|| StreamError::internal(format!("token step input `{name}`")))?;
            if t.len() != len * self.blocks || t.elem_type() != elem {
                return Err(StreamError::internal(format!(
                    "token step input `{name}` has {} element(s), expected {}",
                    t.len(),
                    len * self.blocks
                )));
            }
            in_base.push(data_ptr(t));
        }
        let out_base: Vec<*mut u8> = outs.iter_mut().map(data_ptr_mut).collect();
        let jobs: Vec<Job> = (0..self.blocks)
            .map(|g| Job {
                inputs: self
                    .inputs
                    .iter()
                    .zip(&in_base)
                    // SAFETY: row block `g` lies inside the tensor (its length was checked).
                    .map(|((_, len), &p)| unsafe { p.add(g * len * size) })
                    .collect(),
                outputs: self
                    .outputs
                    .iter()
                    .zip(&out_base)
                    // SAFETY: as above, for the outputs allocated with `blocks` blocks.
                    .map(|((_, len, _), &p)| unsafe { p.add(g * len * size) })
                    .collect(),
                step: &self.steps[g % self.threads],
            })
            .collect();
        let results: Vec<std::sync::Mutex<Option<Result<(), crate::ExecError>>>> = (0..self.blocks)
            .map(|_| std::sync::Mutex::new(None))
            .collect();
        let run = |job: &Job| {
            // SAFETY: see `Job`: valid, disjoint rows; `step` outlives the scope.
            as_worker(|| unsafe { (*job.step).run_raw(&job.inputs, &job.outputs) })
        };
        // Thread `t`'s blocks, in order.
        let part = |t: usize| {
            for b in (t..self.blocks).step_by(self.threads) {
                if let (Some(job), Some(slot)) = (jobs.get(b), results.get(b)) {
                    let r = run(job);
                    if let Ok(mut slot) = slot.lock() {
                        *slot = Some(r);
                    }
                }
            }
        };
        match super::team::run(self.threads, &part) {
            super::team::Ran::All => return self.collect(results, outs),
            super::team::Ran::HelperPanicked => {
                return Err(StreamError::internal("a decode helper thread panicked"))
            }
            super::team::Ran::Nothing => {}
        }
        let part = &part;
        rayon::scope(|s| {
            for t in 1..self.threads {
                s.spawn(move |_| part(t));
            }
            part(0);
        });
        self.collect(results, outs)
    }

    /// The blocks' results, and the full outputs.
    fn collect(
        &self,
        results: Vec<std::sync::Mutex<Option<Result<(), crate::ExecError>>>>,
        outs: Vec<TensorData>,
    ) -> Result<BTreeMap<String, Tensor>, StreamError> {
        for slot in results {
            match slot.into_inner() {
                Ok(Some(r)) => r?,
                _ => return Err(StreamError::internal("a token-step block did not run")),
            }
        }
        let mut result = BTreeMap::new();
        for ((name, _, shape), data) in self.outputs.iter().zip(outs) {
            let t = Tensor::new(shape.clone(), data)
                .map_err(|e| StreamError::internal(e.to_string()))?;
            result.insert(name.clone(), t);
        }
        Ok(result)
    }
}

fn data_ptr(t: &Tensor) -> *const u8 {
    match t.data() {
        TensorData::F32(v) => v.as_ptr().cast(),
        TensorData::F64(v) => v.as_ptr().cast(),
    }
}

fn data_ptr_mut(d: &mut TensorData) -> *mut u8 {
    match d {
        TensorData::F32(v) => v.as_mut_ptr().cast(),
        TensorData::F64(v) => v.as_mut_ptr().cast(),
    }
}
