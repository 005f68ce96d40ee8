//! The curious-client extraction attack: run the real protocol, keep what the rounds
//! decrypt, and recover layer-1 weights by regression on it.
//!
//! From each query the client knows its layer input `X` and decrypts, in layer 1, the scores
//! `y = c·Q·Kᵀ + shift` (public `c`, `shift`), the reciprocal network's `z₁ = s·w + b` (the row
//! sums `s` of its own softmax reply), and `S₁` with `u = S₁·W₁ + b₁` (LayerNorm folded into
//! `W₁`, `b₁`; every layer has this round). Least squares then gives `W₁`/`b₁` of every layer,
//! the reciprocal network's first layer and, per head of layer 1, the bilinear form
//! `[W_Q; b_Q]·[W_K; b_K]ᵀ` of the scores.
//!
//! Against blinded rounds these fits see random signs and magnitudes; [`suite`] runs the
//! attacks fitted to the blinding.
//!
//! Errors are measured against the model's matrices, except for the one direction no input
//! reaches: layer-1 inputs are LayerNorm outputs, which lie in a hyperplane, so the score
//! forms are compared on it (the model never uses the rest, and no attack can see it).

mod blinded;
mod fit;
mod observe;
mod reference;

pub use blinded::{BlindedQuery, suite};
pub use fit::Convergence;
pub use observe::{Observation, observe};
pub use reference::Reference;

use anyhow::{Result, bail};
use candle_core::Tensor;
use thex_client::ModelDims;

use fit::{Whitening, fit_bilinear, fit_linear, relative_error};
use observe::{stack_rows, tensor};

/// Relative residual at which the bilinear fit stops.
const TOLERANCE: f64 = 1e-10;
/// Iteration cap of the bilinear fit.
const MAX_ITERATIONS: usize = 1000;

/// One recovered matrix and its error against the model's.
#[derive(Debug, Clone, PartialEq)]
pub struct Recovered {
    /// `W1`, `b1` (FFN input), `Tw1`, `Tb1` (reciprocal network, first layer) or `WqWkT`.
    pub name: &'static str,
    /// The encoder layer (from 0).
    pub layer: usize,
    /// The head, for per-head matrices.
    pub head: Option<usize>,
    /// `‖recovered − true‖_F / ‖true‖_F` on the span the observations determine.
    pub relative_error: f64,
}

/// What the fits did.
#[derive(Debug, Clone, PartialEq)]
pub struct Extraction {
    /// Every recovered matrix.
    pub matrices: Vec<Recovered>,
    /// Dimension of the span of the layer inputs (of `hidden + 1`).
    pub input_rank: usize,
    /// The bilinear fit's convergence.
    pub bilinear: Convergence,
}

/// Fits every matrix the observations reveal and compares it with `truth`.
pub fn extract(obs: &[Observation], dims: &ModelDims, truth: &Reference) -> Result<Extraction> {
    if obs.is_empty() {
        bail!("no queries to fit");
    }
    let mut matrices = Vec::new();
    let mut push = |name, layer, head, relative_error| {
        matrices.push(Recovered {
            name,
            layer,
            head,
            relative_error,
        })
    };

    // FFN input of every layer: u = S₁·W₁ + b₁.
    let h = dims.hidden;
    for (layer, want) in truth.ffn.iter().enumerate() {
        let s1 = stack_rows(&obs.iter().map(|o| &o.ffn[layer].0).collect::<Vec<_>>())?;
        let u = stack_rows(&obs.iter().map(|o| &o.ffn[layer].1).collect::<Vec<_>>())?;
        let got = fit_linear(&s1, &u)?;
        push(
            "W1",
            layer,
            None,
            relative_error(&got.narrow(0, 0, h)?, &want.narrow(0, 0, h)?)?,
        );
        push(
            "b1",
            layer,
            None,
            relative_error(&got.narrow(0, h, 1)?, &want.narrow(0, h, 1)?)?,
        );
    }

    // Reciprocal network: z₁[t, head·t + k] = s[t, head]·w[k] + b[k].
    let t = dims.reciprocal_hidden;
    let mut inputs = Vec::new();
    let mut outputs = Vec::new();
    for o in obs {
        for row in 0..o.z1.rows() {
            for head in 0..dims.heads {
                inputs.extend([o.row_sums.get(row, head), 1.0]);
                outputs.extend((0..t).map(|k| o.z1.get(row, head * t + k)));
            }
        }
    }
    let rows = inputs.len() / 2;
    let inputs = Tensor::from_vec(inputs, (rows, 2), &candle_core::Device::Cpu)?;
    let outputs = Tensor::from_vec(outputs, (rows, t), &candle_core::Device::Cpu)?;
    let got = fit_linear(&inputs, &outputs)?;
    let want = &truth.reciprocal;
    push(
        "Tw1",
        0,
        None,
        relative_error(&got.narrow(0, 0, 1)?, &want.narrow(0, 0, 1)?)?,
    );
    push(
        "Tb1",
        0,
        None,
        relative_error(&got.narrow(0, 1, 1)?, &want.narrow(0, 1, 1)?)?,
    );

    // Scores: per head, Q·Kᵀ = X̃·[W_Q; b_Q]·[W_K; b_K]ᵀ·X̃ᵀ.
    let x = Tensor::stack(
        &obs.iter()
            .map(|o| tensor(&o.x))
            .collect::<Result<Vec<_>>>()?,
        0,
    )?;
    let y = Tensor::stack(
        &(0..dims.heads)
            .map(|head| {
                Tensor::stack(
                    &obs.iter()
                        .map(|o| tensor(&o.scores[head]))
                        .collect::<Result<Vec<_>>>()?,
                    0,
                )
                .map_err(Into::into)
            })
            .collect::<Result<Vec<_>>>()?,
        0,
    )?;
    let (got, bilinear) = fit_bilinear(&x, &y, TOLERANCE, MAX_ITERATIONS)?;
    let (q, n, p) = x.dims3()?;
    let span = Whitening::of(&x.reshape((q * n, p))?)?;
    for (head, want) in truth.scores.iter().enumerate() {
        push(
            "WqWkT",
            0,
            Some(head),
            relative_error(&got.get(head)?, want)?,
        );
    }
    Ok(Extraction {
        matrices,
        input_rank: span.rank(),
        bilinear,
    })
}
