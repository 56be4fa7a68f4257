//! Batching (vmap) of per-token graphs over a mini-batch. (in progress)
