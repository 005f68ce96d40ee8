//! What one query teaches a curious client about layer 1: its own input, and what it
//! decrypts in the layer's rounds.

use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor};
use he_linalg::Matrix;
use he_linalg::attention::scores_to_heads;
use thex_client::{BucketLayouts, ClientBundle, Decrypted, ItemKind};

/// What one query reveals: layer 1 (index 0) in full, and the FFN input of every layer;
/// every row of the bucket is real (the attack fills it).
#[derive(Debug, Clone)]
pub struct Observation {
    /// The layer input the client encrypted, with a trailing 1 (`n × (hidden + 1)`).
    pub x: Matrix,
    /// Per head, the attention scores without the public shift and factor: `Q·Kᵀ` (`n × n`).
    pub scores: Vec<Matrix>,
    /// Per head, the row sums of the client's softmax reply (`n × heads`).
    pub row_sums: Matrix,
    /// The reciprocal network's first pre-activations (`n × heads·t`, head-interleaved).
    pub z1: Matrix,
    /// Per layer, the residual stream after attention with a trailing 1 (`n × (hidden + 1)`)
    /// and the FFN pre-activations (`n × ffn`).
    pub ffn: Vec<(Matrix, Matrix)>,
}

/// Appends a column of ones.
fn with_ones(m: &Matrix) -> Matrix {
    Matrix::from_fn(m.rows(), m.cols() + 1, |r, c| {
        if c < m.cols() { m.get(r, c) } else { 1.0 }
    })
}

/// Layer 1's observation of a query of `ids` (exactly one bucket long) from its transcript.
pub fn observe(
    bundle: &ClientBundle,
    layouts: &BucketLayouts,
    ids: &[u32],
    transcript: &[Decrypted],
) -> Result<Observation> {
    let dims = &bundle.dims;
    if ids.len() != layouts.bucket {
        bail!("{} ids for bucket {}", ids.len(), layouts.bucket);
    }
    let item_of = |layer: usize, kind: ItemKind| -> Result<&Matrix> {
        transcript
            .iter()
            .find(|d| d.layer == layer && d.kind == kind)
            .map(|d| &d.values)
            .with_context(|| format!("the transcript has no {kind:?} of layer {layer}"))
    };
    let item = |kind| item_of(0, kind);
    let x = bundle.embeddings.embed(ids)?;
    let factor = dims.softmax_scale / (dims.head_dim as f64).sqrt();
    let raw = scores_to_heads(&layouts.scores, item(ItemKind::Softmax)?)?;
    let power = i32::try_from(dims.softmax_power)?;
    let row_sums = Matrix::from_fn(ids.len(), dims.heads, |t, h| {
        (0..ids.len())
            .map(|u| raw[h].get(t, u).powi(power).max(0.0))
            .sum()
    });
    let scores = raw
        .iter()
        .map(|y| y.map(|v| (v - dims.softmax_shift) / factor))
        .collect();
    Ok(Observation {
        x: with_ones(&x),
        scores,
        row_sums,
        z1: item(ItemKind::ReciprocalHidden1)?.clone(),
        ffn: (0..dims.layers)
            .map(|l| {
                Ok((
                    with_ones(item_of(l, ItemKind::Residual)?),
                    item_of(l, ItemKind::Ffn)?.clone(),
                ))
            })
            .collect::<Result<_>>()?,
    })
}

/// Stacks one matrix per observation into a `f64` tensor `(Σ rows) × cols`.
pub fn stack_rows(parts: &[&Matrix]) -> Result<Tensor> {
    let cols = parts.first().map_or(0, |m| m.cols());
    let rows: usize = parts.iter().map(|m| m.rows()).sum();
    let data: Vec<f64> = parts
        .iter()
        .flat_map(|m| m.data().iter().copied())
        .collect();
    Ok(Tensor::from_vec(data, (rows, cols), &Device::Cpu)?)
}

/// A matrix as a `f64` tensor.
pub fn tensor(m: &Matrix) -> Result<Tensor> {
    stack_rows(&[m])
}
