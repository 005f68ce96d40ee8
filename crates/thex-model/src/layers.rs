//! Building blocks: LayerNorm (exact and THE-X affine), activations, the two attention
//! softmaxes and THE-X's reciprocal network `T`.

use candle_core::{D, Tensor};
use candle_nn::{Linear, Module, VarBuilder};

use crate::approx::{LayerNormKind, ThexSoftmax};
use crate::config::Activation;
use crate::error::Result;

/// Additive mask value for excluded keys in the exact softmax.
const MASKED_SCORE: f64 = 1e9;

/// A LayerNorm, exact or replaced by THE-X's element-wise affine map. Both read the tensors
/// `weight` and `bias` under the given prefix, so an affine norm starts from the original
/// `gamma`/`beta`.
#[derive(Debug, Clone)]
pub struct Norm {
    weight: Tensor,
    bias: Tensor,
    kind: LayerNormKind,
    eps: f64,
}

impl Norm {
    /// Loads `weight` and `bias` of width `dim`.
    pub fn new(dim: usize, kind: LayerNormKind, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(dim, "weight", candle_nn::Init::Const(1.0))?;
        let bias = vb.get_with_hints(dim, "bias", candle_nn::Init::Const(0.0))?;
        Ok(Norm {
            weight,
            bias,
            kind,
            eps,
        })
    }

    /// Exact or affine, as configured.
    pub fn kind(&self) -> LayerNormKind {
        self.kind
    }

    /// `gamma` (exact) or `gamma'` (affine).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// `beta` (exact) or `beta'` (affine).
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    /// Applies the norm over the last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match self.kind {
            LayerNormKind::Exact => layer_norm(x, self.eps)?,
            LayerNormKind::Affine => x.clone(),
        };
        Ok(y.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)?)
    }
}

/// `(x - mean) / sqrt(var + eps)` over the last dimension (biased variance, as PyTorch).
pub fn layer_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(centred.broadcast_div(&(var + eps)?.sqrt()?)?)
}

/// Least-squares fit of THE-X's affine LayerNorm replacement: per channel `c`, the `gamma'_c`,
/// `beta'_c` minimising `sum (gamma'_c * x_c + beta'_c - y_c)^2` over all rows, where `inputs`
/// are what the original LayerNorm received and `targets` what it returned (both `[.., h]`,
/// e.g. from [`crate::LayerTrace`]). This is the closed-form optimum of the per-LN MSE
/// distillation for fixed inputs; returns `(gamma', beta')`, each `[h]`.
pub fn fit_affine(inputs: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor)> {
    let h = inputs.dim(D::Minus1)?;
    let x = inputs.reshape(((), h))?.to_dtype(candle_core::DType::F64)?;
    let y = targets
        .reshape(((), h))?
        .to_dtype(candle_core::DType::F64)?;
    let xc = x.broadcast_sub(&x.mean_keepdim(0)?)?;
    let yc = y.broadcast_sub(&y.mean_keepdim(0)?)?;
    let cov = (&xc * &yc)?.mean(0)?;
    // A channel with constant input gets gamma' = 0 and beta' = mean target.
    let var = xc.sqr()?.mean(0)?.clamp(1e-30, f64::MAX)?;
    let gamma = (cov / var)?;
    let beta = (y.mean(0)? - (&gamma * x.mean(0)?)?)?;
    let f32 = candle_core::DType::F32;
    Ok((gamma.to_dtype(f32)?, beta.to_dtype(f32)?))
}

/// Applies an activation element-wise.
pub fn activate(act: Activation, x: &Tensor) -> Result<Tensor> {
    Ok(match act {
        Activation::Gelu => x.gelu_erf()?,
        Activation::GeluNew => x.gelu()?,
        Activation::Relu => x.relu()?,
    })
}

/// THE-X's reciprocal network `T: 1 -> h -> h -> 1` with ReLUs, approximating `1/s`.
/// Tensors `fc1`, `fc2`, `fc3` (each `weight`, `bias`) under the given prefix.
#[derive(Debug, Clone)]
pub struct ReciprocalMlp {
    fc1: Linear,
    fc2: Linear,
    fc3: Linear,
}

impl ReciprocalMlp {
    /// Loads (or, from a `VarMap`, creates) the three layers.
    pub fn new(hidden: usize, vb: VarBuilder) -> Result<Self> {
        Ok(ReciprocalMlp {
            fc1: candle_nn::linear(1, hidden, vb.pp("fc1"))?,
            fc2: candle_nn::linear(hidden, hidden, vb.pp("fc2"))?,
            fc3: candle_nn::linear(hidden, 1, vb.pp("fc3"))?,
        })
    }

    /// `T(s)` for a tensor of sums whose last dimension is 1; returns the same shape.
    pub fn forward(&self, s: &Tensor) -> Result<Tensor> {
        let shape = s.shape().clone();
        let flat = s.reshape((s.elem_count(), 1))?;
        let h = self.fc1.forward(&flat)?.relu()?;
        let h = self.fc2.forward(&h)?.relu()?;
        Ok(self.fc3.forward(&h)?.reshape(shape)?)
    }
}

/// Intermediate values of the THE-X softmax (for layer-by-layer comparison with HE).
#[derive(Debug, Clone)]
pub struct ThexSoftmaxTrace {
    /// `e = ReLU((x * scale + shift)^power) * mask`, shape of the scores.
    pub e: Tensor,
    /// `s = sum_j e_j`, scores' shape with last dimension 1.
    pub sum: Tensor,
    /// `T(s)`, same shape as `sum`.
    pub reciprocal: Tensor,
}

/// Broadcasts a `[batch, keys]` 0/1 mask to `[batch, 1, 1, keys]` when scores are 4-D, or
/// leaves it for `[.., keys]`-shaped scores of the same rank.
fn key_mask_for(scores: &Tensor, key_mask: &Tensor) -> Result<Tensor> {
    if scores.rank() == 4 && key_mask.rank() == 2 {
        let (b, n) = key_mask.dims2()?;
        Ok(key_mask.reshape((b, 1, 1, n))?)
    } else {
        Ok(key_mask.clone())
    }
}

/// Exact softmax over the last dimension; keys with mask 0 get weight 0 (an additive large
/// negative, as Hugging Face does). `key_mask` is `[batch, keys]` (or broadcastable), f32 0/1.
pub fn exact_softmax(scores: &Tensor, key_mask: &Tensor) -> Result<Tensor> {
    let mask = key_mask_for(scores, key_mask)?;
    let additive = mask.affine(MASKED_SCORE, -MASKED_SCORE)?;
    let masked = scores.broadcast_add(&additive)?;
    Ok(candle_nn::ops::softmax_last_dim(&masked)?)
}

/// THE-X's softmax over the last dimension: `e_j = ReLU((x_j * scale + shift)^power) * mask_j`,
/// `out_j = e_j * T(s)` with `s = sum_j e_j`. The 0/1 mask multiplies `e`, which is what the
/// encrypted path computes.
pub fn thex_softmax(
    scores: &Tensor,
    key_mask: &Tensor,
    cfg: &ThexSoftmax,
    t: &ReciprocalMlp,
) -> Result<(Tensor, ThexSoftmaxTrace)> {
    let mask = key_mask_for(scores, key_mask)?;
    let y = scores.affine(cfg.scale, cfg.shift)?;
    let mut p = y.clone();
    for _ in 1..cfg.power {
        p = (&p * &y)?;
    }
    let e = p.relu()?.broadcast_mul(&mask)?;
    let sum = e.sum_keepdim(D::Minus1)?;
    let reciprocal = t.forward(&sum)?;
    let out = e.broadcast_mul(&reciprocal)?;
    Ok((out, ThexSoftmaxTrace { e, sum, reciprocal }))
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    use super::*;

    #[test]
    fn fit_affine_recovers_an_affine_map_and_beats_the_original_gamma_beta_on_layer_norm() {
        let dev = Device::Cpu;
        let x = (Tensor::randn(0f32, 1.0, (64, 5, 6), &dev).unwrap() * 3.0).unwrap();
        let g = Tensor::new(&[1.0f32, -2.0, 0.5, 3.0, 0.0, 1.5], &dev).unwrap();
        let b = Tensor::new(&[0.1f32, 0.2, -0.3, 0.0, 4.0, -1.0], &dev).unwrap();
        let y = x.broadcast_mul(&g).unwrap().broadcast_add(&b).unwrap();
        let (g2, b2) = fit_affine(&x, &y).unwrap();
        let err = |a: &Tensor, b: &Tensor| {
            (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert!(err(&g, &g2) < 1e-4 && err(&b, &b2) < 1e-4);

        // Distilling a real LayerNorm: the fit has lower MSE than reusing gamma, beta.
        let ln = Norm {
            weight: g.clone(),
            bias: b.clone(),
            kind: LayerNormKind::Exact,
            eps: 1e-12,
        };
        let x = Tensor::randn(2f32, 0.5, (256, 6), &dev).unwrap();
        let y = ln.forward(&x).unwrap();
        let (g2, b2) = fit_affine(&x, &y).unwrap();
        let mse = |gg: &Tensor, bb: &Tensor| {
            let p = x.broadcast_mul(gg).unwrap().broadcast_add(bb).unwrap();
            (p - &y)
                .unwrap()
                .sqr()
                .unwrap()
                .mean_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert!(
            mse(&g2, &b2) < mse(&g, &b),
            "{} vs {}",
            mse(&g2, &b2),
            mse(&g, &b)
        );
        assert_eq!(g2.dtype(), DType::F32);
    }
}
