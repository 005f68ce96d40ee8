//! The matrices the attack aims at, from the served model's own weights (to score it).

use anyhow::{Result, bail};
use candle_core::{Device, Tensor};
use he_linalg::Matrix;
use thex_client::EmbeddingTables;
use thex_engine::ModelWeights;

/// The matrices in the form the rounds reveal them, inputs with a trailing 1.
#[derive(Debug, Clone)]
pub struct Reference {
    /// Per layer, `[diag(γ₁)·W₁; β₁·W₁ + b₁]` (`(hidden + 1) × ffn`).
    pub ffn: Vec<Tensor>,
    /// The reciprocal network's first layer `[w; b]` (`2 × t`).
    pub reciprocal: Tensor,
    /// Per head, `[W_Q; b_Q]·[W_K; b_K]ᵀ` of the head's columns, on the span of the layer's
    /// possible inputs: `P·M·P` (`(hidden + 1) × (hidden + 1)`).
    pub scores: Vec<Tensor>,
}

/// The projector `I − v·vᵀ` onto the span of every possible layer-1 input `[x, 1]`: `x` is a
/// LayerNorm output `γ ⊙ z + β` with `Σ z = 0`, so `v ∝ [1/γ; −Σ β/γ]` is normal to all of them.
fn input_projector(emb: &EmbeddingTables) -> Result<Tensor> {
    if emb.ln_gamma.contains(&0.0) {
        bail!("a LayerNorm weight of the embeddings is zero: the input span is not a hyperplane");
    }
    let mut v: Vec<f64> = emb.ln_gamma.iter().map(|&g| 1.0 / f64::from(g)).collect();
    v.push(
        -emb.ln_beta
            .iter()
            .zip(&emb.ln_gamma)
            .map(|(&b, &g)| f64::from(b) / f64::from(g))
            .sum::<f64>(),
    );
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let p = v.len();
    let data: Vec<f64> = (0..p * p)
        .map(|k| f64::from(u8::from(k / p == k % p)) - v[k / p] * v[k % p] / (norm * norm))
        .collect();
    Ok(Tensor::from_vec(data, (p, p), &Device::Cpu)?)
}

/// `[m; b]` as a tensor.
fn with_bias_row(m: &Matrix, b: &[f64]) -> Result<Tensor> {
    let mut data = m.data().to_vec();
    data.extend_from_slice(b);
    Ok(Tensor::from_vec(
        data,
        (m.rows() + 1, m.cols()),
        &Device::Cpu,
    )?)
}

impl Reference {
    /// From the server's weights and the embedding tables.
    pub fn of(w: &ModelWeights, emb: &EmbeddingTables) -> Result<Self> {
        let Some(l) = w.layers.first() else {
            bail!("the model has no layers");
        };
        let d = &w.dims;
        let (h, f) = (d.hidden, d.ffn);
        let ffn = w
            .layers
            .iter()
            .map(|l| {
                let w1 = Matrix::from_fn(h, f, |i, j| l.ln1_gamma[i] * l.w1.get(i, j));
                let b1: Vec<f64> = (0..f)
                    .map(|j| l.b1[j] + (0..h).map(|i| l.ln1_beta[i] * l.w1.get(i, j)).sum::<f64>())
                    .collect();
                with_bias_row(&w1, &b1)
            })
            .collect::<Result<Vec<_>>>()?;
        let r = &w.reciprocal;
        let reciprocal = Tensor::from_vec(
            r.w1.iter().chain(&r.b1).copied().collect::<Vec<_>>(),
            (2, r.w1.len()),
            &Device::Cpu,
        )?;
        let q = with_bias_row(&l.wq, &l.bq)?;
        let k = with_bias_row(&l.wk, &l.bk)?;
        let proj = input_projector(emb)?;
        let scores = (0..d.heads)
            .map(|head| {
                let cols = |t: &Tensor| t.narrow(1, head * d.head_dim, d.head_dim);
                let m = cols(&q)?.matmul(&cols(&k)?.t()?)?;
                Ok(proj.matmul(&m)?.matmul(&proj)?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            ffn,
            reciprocal,
            scores,
        })
    }
}
