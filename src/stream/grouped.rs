//! The token step split over groups of scan slices that run on parallel threads: one compiled
//! program for `n / groups` slices, called once per group on that group's rows of the full
//! `[n, ...]` tensors (no copies). Decoding is one small step per token, too short to pay for
//! parallel loops inside the step, but every slice is independent.

use super::pieces::Pieces;
use super::StreamError;
use crate::execute::Prepared;
use std::collections::BTreeMap;
use tttc_ir::Program;
use tttc_runtime::{ElemType, Tensor, TensorData};

/// A token step compiled for one group of slices.
pub(super) struct GroupedStep {
    groups: usize,
    /// One compiled program per group (each is called by one thread at a time).
    steps: Vec<Prepared>,
    /// Input names and per-group element counts, in program order.
    inputs: Vec<(String, usize)>,
    /// Output names, per-group element counts and full shapes `[n, ...]`.
    outputs: Vec<(String, usize, Vec<usize>)>,
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
    /// `program` (the token step for `n / groups` slices) compiled once per group (copies
    /// shared with every other scan of the session that has the same step), or `None` when
    /// the backend cannot run on raw storage.
    pub(super) fn new(
        pieces: &mut Pieces,
        program: &Program,
        groups: usize,
        n: usize,
    ) -> Result<Option<GroupedStep>, StreamError> {
        let steps = pieces.prepare_copies(program, groups)?;
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
            groups,
            steps,
            inputs,
            outputs: with_shapes,
        }))
    }

    /// Runs every group on its rows of `inputs` (full `[n, ...]` tensors by name) in parallel;
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
            let full = len * self.groups;
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
            if t.len() != len * self.groups || t.elem_type() != elem {
                return Err(StreamError::internal(format!(
                    "token step input `{name}` has {} element(s), expected {}",
                    t.len(),
                    len * self.groups
                )));
            }
            in_base.push(data_ptr(t));
        }
        let out_base: Vec<*mut u8> = outs.iter_mut().map(data_ptr_mut).collect();
        let jobs: Vec<Job> = (0..self.groups)
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
                    // SAFETY: as above, for the outputs allocated with `groups` blocks.
                    .map(|((_, len, _), &p)| unsafe { p.add(g * len * size) })
                    .collect(),
                step: &self.steps[g],
            })
            .collect();
        let results: Vec<std::sync::Mutex<Option<Result<(), crate::ExecError>>>> = (0..self.groups)
            .map(|_| std::sync::Mutex::new(None))
            .collect();
        let run = |job: &Job| {
            // SAFETY: see `Job`: valid, disjoint rows; `step` outlives the scope.
            unsafe { (*job.step).run_raw(&job.inputs, &job.outputs) }
        };
        rayon::scope(|s| {
            for (job, slot) in jobs.iter().zip(&results).skip(1) {
                let job = JobRef(job);
                s.spawn(move |_| {
                    let job = job;
                    let r = run(job.0);
                    if let Ok(mut slot) = slot.lock() {
                        *slot = Some(r);
                    }
                });
            }
            if let (Some(job), Some(slot)) = (jobs.first(), results.first()) {
                let r = run(job);
                if let Ok(mut slot) = slot.lock() {
                    *slot = Some(r);
                }
            }
        });
        for slot in results {
            match slot.into_inner() {
                Ok(Some(r)) => r?,
                _ => return Err(StreamError::internal("a token-step group did not run")),
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

/// A job shared with the thread that runs it.
#[derive(Clone, Copy)]
struct JobRef<'a>(&'a Job);

// SAFETY: see `Job`; the reference only crosses into the scope that outlives it.
unsafe impl Send for JobRef<'_> {}

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
