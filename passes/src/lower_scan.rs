//! Lowering a scan to its mini-batch step graph (the primal form). (in progress)
