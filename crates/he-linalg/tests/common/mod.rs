#![allow(dead_code)]

use he_linalg::{ColumnOrder, LinearSpec, Matrix};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

pub fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

pub fn random_matrix(rng: &mut ChaCha20Rng, rows: usize, cols: usize, bound: f64) -> Matrix {
    Matrix::from_fn(rows, cols, |_, _| rng.gen_range(-bound..bound))
}

pub fn random_vec(rng: &mut ChaCha20Rng, n: usize, bound: f64) -> Vec<f64> {
    (0..n).map(|_| rng.gen_range(-bound..bound)).collect()
}

pub fn add_bias(m: &Matrix, bias: &[f64]) -> Matrix {
    Matrix::from_fn(m.rows(), m.cols(), |i, j| m.get(i, j) + bias[j])
}

/// One linear-map spec per weight matrix, with its bias, all with output order `out_order`.
pub fn specs<'a>(
    ws: &'a [Matrix],
    biases: &'a [Vec<f64>],
    out_order: ColumnOrder,
) -> Vec<LinearSpec<'a>> {
    ws.iter()
        .zip(biases)
        .map(|(w, bias)| LinearSpec {
            weights: w,
            bias: Some(bias),
            out_order,
            out_scale: None,
        })
        .collect()
}
