//! Deterministic pseudo-random numbers for tests: the generators every test file used to copy.

use tttc::runtime::Tensor;

/// Knuth's MMIX linear congruential generator.
#[derive(Clone, Debug)]
pub struct Lcg(pub u64);

impl Lcg {
    /// The next raw state.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0
    }

    /// The next value in [-1, 1).
    pub fn next_signed(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }

    /// `n` values in [-scale, scale).
    pub fn vec(&mut self, n: usize, scale: f64) -> Vec<f64> {
        (0..n).map(|_| self.next_signed() * scale).collect()
    }
}

/// A tensor of `shape` with values in [lo, hi) from a xorshift generator seeded by `seed`.
pub fn xorshift_tensor(seed: u64, shape: &[usize], lo: f64, hi: f64) -> Tensor {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let n: usize = shape.iter().product();
    let data: Vec<f64> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            lo + (s >> 11) as f64 / (1u64 << 53) as f64 * (hi - lo)
        })
        .collect();
    Tensor::from_f64(shape.to_vec(), data).expect("shape")
}
