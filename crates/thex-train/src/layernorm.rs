//! THE-X's LN-distill: every encoder LayerNorm becomes an element-wise affine map
//! `γ' ∘ x + β'` trained to imitate the original.
//!
//! The LayerNorms are replaced one at a time, in network order. For LayerNorm `j` the student
//! (LayerNorms before `j` already affine, everything else frozen) is run on sample sentences;
//! its inputs to LayerNorm `j` and the teacher's (original model's) outputs of that LayerNorm
//! on the same sentences, over all non-padding tokens, give the per-LN MSE
//! `Σ (γ'·x + β' − y)²`. Its minimiser is found in closed form per channel
//! ([`thex_model::fit_affine`]), which is exactly what gradient steps on this MSE with the rest
//! frozen converge to. Fitting from the student's own inputs lets each map also absorb the
//! errors of the maps before it.

use candle_core::Tensor;
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};
use thex_model::{Batch, LayerTrace, ThexModel, fit_affine, layer_norm_prefixes, length_buckets};

use crate::error::{Result, TrainError};

/// How well one affine map imitates its LayerNorm on the sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerNormFit {
    /// Tensor prefix of the LayerNorm.
    pub name: String,
    /// Token states it was fitted on.
    pub tokens: usize,
    /// MSE of the fitted map against the original LayerNorm's output.
    pub mse: f64,
    /// `mse` divided by the variance of the target (1 − R²).
    pub relative_mse: f64,
}

/// Token states (non-padding positions) of `t` `[b, n, h]` as `[tokens, h]`.
fn valid_tokens(t: &Tensor, lengths: &[usize]) -> Result<Tensor> {
    let (b, n, h) = t.dims3()?;
    let idx: Vec<u32> = (0..b)
        .flat_map(|bi| (0..lengths[bi]).map(move |p| (bi * n + p) as u32))
        .collect();
    let idx = Tensor::new(idx, t.device())?;
    Ok(t.reshape((b * n, h))?.index_select(&idx, 0)?)
}

/// Runs `model` traced over `seqs` in batches and collects `pick(layer trace)` over the
/// non-padding tokens, for layer `layer`.
fn collect(
    model: &ThexModel,
    seqs: &[Vec<u32>],
    layer: usize,
    pick: impl Fn(&LayerTrace) -> &Tensor,
) -> Result<Tensor> {
    let lengths: Vec<usize> = seqs.iter().map(Vec::len).collect();
    let pad = model.config().pad_token_id;
    let mut parts = Vec::new();
    for bucket in length_buckets(&lengths, 32, 2048) {
        let batch_seqs: Vec<Vec<u32>> = bucket.iter().map(|&i| seqs[i].clone()).collect();
        let batch = Batch::new(&batch_seqs, pad, model.device())?;
        let (_, trace) = model.forward_traced(&batch)?;
        let t = pick(&trace.layers[layer]).detach();
        parts.push(valid_tokens(&t, batch.lengths())?);
    }
    Ok(Tensor::cat(&parts, 0)?)
}

fn input_of(j: usize) -> impl Fn(&LayerTrace) -> &Tensor {
    move |l: &LayerTrace| {
        if j.is_multiple_of(2) {
            &l.attention_norm_input
        } else {
            &l.output_norm_input
        }
    }
}

fn output_of(j: usize) -> impl Fn(&LayerTrace) -> &Tensor {
    move |l: &LayerTrace| {
        if j.is_multiple_of(2) {
            &l.attention_output
        } else {
            &l.output
        }
    }
}

fn set_var(varmap: &VarMap, name: &str, value: &Tensor) -> Result<()> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| TrainError::InvalidConfig("poisoned varmap".into()))?;
    let var = data.get(name).ok_or_else(|| {
        TrainError::InvalidConfig(format!(
            "{name} is not a trainable parameter of the student"
        ))
    })?;
    var.set(value)?;
    Ok(())
}

/// Distils every encoder LayerNorm of `student` (built with affine LayerNorms, its LayerNorm
/// parameters as `Var`s in `varmap`) from `teacher` (the same network with exact LayerNorms)
/// on the sentences `seqs`, in network order. Returns one [`LayerNormFit`] per LayerNorm.
pub fn distill_layer_norms(
    student: &ThexModel,
    varmap: &VarMap,
    teacher: &ThexModel,
    seqs: &[Vec<u32>],
) -> Result<Vec<LayerNormFit>> {
    if seqs.is_empty() {
        return Err(TrainError::InvalidConfig(
            "layer norm distillation needs sentences".into(),
        ));
    }
    let layers = student.layers().len();
    if teacher.layers().len() != layers {
        return Err(TrainError::InvalidConfig(format!(
            "teacher has {} layers, student {layers}",
            teacher.layers().len()
        )));
    }
    let mut fits = Vec::with_capacity(2 * layers);
    for j in 0..2 * layers {
        let layer = j / 2;
        let name = layer_norm_prefixes(layer)[j % 2].clone();
        let target = collect(teacher, seqs, layer, output_of(j))?;
        let input = collect(student, seqs, layer, input_of(j))?;
        let (gamma, beta) = fit_affine(&input, &target)?;
        set_var(varmap, &format!("{name}.weight"), &gamma)?;
        set_var(varmap, &format!("{name}.bias"), &beta)?;
        let pred = input.broadcast_mul(&gamma)?.broadcast_add(&beta)?;
        let mse = (pred - &target)?.sqr()?.mean_all()?.to_scalar::<f32>()? as f64;
        let centred = target.broadcast_sub(&target.mean_keepdim(0)?)?;
        let var = centred.sqr()?.mean_all()?.to_scalar::<f32>()? as f64;
        fits.push(LayerNormFit {
            name,
            tokens: input.dim(0)?,
            mse,
            relative_mse: mse / var.max(1e-30),
        });
    }
    Ok(fits)
}
