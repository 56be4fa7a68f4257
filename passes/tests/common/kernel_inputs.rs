//! Inputs for the kernel-pass tests (`register_tile`, `reduce_jam`, `transposed_products`).

use tttc_ir::DType;
use tttc_runtime::{ElemType, Tensor};

/// Deterministic inputs of `shape` in `dtype` that make rounding visible (no exact sums).
pub fn tensor(shape: &[usize], seed: u64, dtype: DType) -> Tensor {
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|i| {
            let x = (i as u64).wrapping_mul(2654435761).wrapping_add(seed * 97) % 1000;
            x as f64 / 997.0 - 0.4 + 1e-3 / (1.0 + i as f64)
        })
        .collect::<Vec<f64>>();
    let t = Tensor::from_f64(shape.to_vec(), data).expect("tensor");
    match dtype {
        DType::F32 => t.cast(ElemType::F32),
        _ => t,
    }
}
