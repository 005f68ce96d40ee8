//! Shared helpers: a small random THE-X model built through `thex-model`'s API.

use candle_core::Tensor;
use thex_model::ThexModel;

pub use thex_model::synthetic::Shape;

pub const SMALL: Shape = Shape {
    layers: 2,
    hidden: 32,
    heads: 2,
    ffn: 128,
    vocab: 50,
    labels: 3,
    max_positions: 128,
};

/// A THE-X model (ReLU, THE-X softmax with the paper's constants, affine LayerNorms, mean-pooled
/// head) with seeded random weights: `thex_model::synthetic::model`.
pub fn random_model(s: Shape, seed: u64) -> ThexModel {
    thex_model::synthetic::model(s, seed).unwrap()
}

/// A tensor as `f64` values (row-major).
pub fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(candle_core::DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}
