//! Headroom calibration: the largest magnitude the client will decrypt, measured on the
//! plaintext THE-X model, so that compilation can pick an encoding scale that leaves room for
//! it under `q_0` (values beyond `q_0 / 2Δ` wrap around and decrypt to garbage).

use candle_core::{Device, Tensor};
use thex_model::{Batch, ThexModel};

use crate::error::{EngineError, Result};
use crate::weights::ModelWeights;

/// Bits of margin kept above the calibrated magnitude (real inputs may exceed the calibration
/// inputs' values): 16×.
pub const MARGIN_BITS: u32 = 4;

/// Random sequences per calibrated length.
const SEQUENCES: u64 = 4;

fn max_abs(t: &Tensor) -> Result<f64> {
    Ok(values(t)?.iter().fold(0f64, |m, x| m.max(x.abs())))
}

fn values(t: &Tensor) -> Result<Vec<f64>> {
    let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
    Ok(v.into_iter().map(f64::from).collect())
}

/// Seeded pseudo-random token ids in `[1, vocab)` (0 is padding).
fn token_ids(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            1 + (x % (vocab.max(2) as u64 - 1)) as u32
        })
        .collect()
}

/// The largest |value| among everything the client decrypts in inferences of random token
/// sequences (four of each length in `lengths`): the scores before the softmax ReLU
/// (`scale·QKᵀ/√d + shift`), the reciprocal network's hidden pre-activations, the FFN
/// pre-activations, the residual stream `S₁` and the logits.
pub fn max_decrypted_magnitude(
    model: &ThexModel,
    w: &ModelWeights,
    vocab: usize,
    lengths: &[usize],
) -> Result<f64> {
    let d = &w.dims;
    let r = &w.reciprocal;
    let mut m = 0f64;
    for (i, &n) in lengths.iter().enumerate() {
        let seqs: Vec<Vec<u32>> = (0..SEQUENCES)
            .map(|j| token_ids(n, vocab, i as u64 * SEQUENCES + j + 1))
            .collect();
        let batch = Batch::new(&seqs, 0, &Device::Cpu)?;
        let (out, trace) = model.forward_traced(&batch)?;
        if let Some(logits) = &out.logits {
            m = m.max(max_abs(logits)?);
        }
        for l in &trace.layers {
            let y = ((&l.scores * d.softmax_scale)? + d.softmax_shift)?;
            m = m.max(max_abs(&y)?);
            m = m.max(max_abs(&l.intermediate_pre)?);
            m = m.max(max_abs(&l.attention_norm_input)?);
            let Some(sm) = &l.softmax else { continue };
            for s in values(&sm.sum)? {
                let h1: Vec<f64> = (r.w1.iter().zip(&r.b1))
                    .map(|(w1, b1)| s * w1 + b1)
                    .inspect(|z| m = m.max(z.abs()))
                    .map(|z| z.max(0.0))
                    .collect();
                for (j, b2) in r.b2.iter().enumerate() {
                    let z2: f64 = h1.iter().enumerate().map(|(k, h)| h * r.w2.get(k, j)).sum();
                    m = m.max((z2 + b2).abs());
                }
            }
        }
    }
    if !m.is_finite() {
        return Err(EngineError::UnsupportedModel(
            "the plaintext model produces non-finite values".into(),
        ));
    }
    Ok(m)
}

/// Smallest scale (bits) of the decrypted ciphertexts chosen before decrypting one level
/// higher instead: about 2^-12 absolute precision left on them after the last rescale.
pub const MIN_REQUEST_LOG_SCALE: u32 = 26;

/// The scales and levels that leave room for the decrypted values ([`fit_headroom`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headroom {
    /// log2 of the scale of the ciphertexts the client decrypts (at most the encoding scale).
    pub request_log_scale: u32,
    /// Levels above the pipeline's depth (the client decrypts under `q_0 … q_e`).
    pub extra_levels: usize,
}

/// The decrypted ciphertexts' scale (bits, at most `log_scale`) and the extra levels (at least
/// `extra_levels`) that leave `max_abs` times 2^[`MARGIN_BITS`] below the client's refusal
/// threshold `Q/4Δ_r`, `Q` the modulus the client decrypts under. The encoding scale of the
/// rest of the program stays `log_scale`; the decrypted ciphertexts' scale drops as far as
/// [`MIN_REQUEST_LOG_SCALE`] (or `log_scale` if that is lower), beyond that one extra prime
/// is kept. `None` when even that is too small.
pub fn fit_headroom(
    log_q0: u32,
    log_scale: u32,
    extra_levels: usize,
    max_abs: f64,
) -> Option<Headroom> {
    let need = max_abs.max(1.0).log2().ceil() as usize + MARGIN_BITS as usize + 2;
    let floor = MIN_REQUEST_LOG_SCALE.min(log_scale) as usize;
    let tries = if extra_levels == 0 {
        vec![0, 1]
    } else {
        vec![extra_levels]
    };
    tries.into_iter().find_map(|e| {
        let room = (log_q0 as usize + e * log_scale as usize).checked_sub(need)?;
        (room >= floor).then(|| Headroom {
            request_log_scale: room.min(log_scale as usize) as u32,
            extra_levels: e,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_scale_or_an_extra_level_leaves_the_margin() {
        let h = |request_log_scale, extra_levels| {
            Some(Headroom {
                request_log_scale,
                extra_levels,
            })
        };
        // Values up to 300 (2^9), margin 2^4, refusal at q0/4Δr: 50 - 9 - 4 - 2 = 35.
        assert_eq!(fit_headroom(50, 40, 0, 300.0), h(35, 0));
        assert_eq!(fit_headroom(50, 36, 0, 1.0), h(36, 0));
        assert_eq!(fit_headroom(50, 36, 0, 4000.0), h(32, 0));
        // 55424 needs a 28-bit request scale: still no extra level.
        assert_eq!(fit_headroom(50, 36, 0, 55424.0), h(28, 0));
        // 2^20 would need 2^24: one more level instead, at the full scale.
        assert_eq!(fit_headroom(50, 36, 0, 1_048_576.0), h(36, 1));
        assert_eq!(fit_headroom(50, 36, 2, 55424.0), h(36, 2));
        // Values near 2^50 fit under q0·q1 at a 2^30 request scale, not near 2^80.
        assert_eq!(fit_headroom(50, 36, 0, 1e15), h(30, 1));
        assert_eq!(fit_headroom(50, 36, 0, 1e24), None);
        assert_eq!(fit_headroom(50, 36, 2, 1e24), h(36, 2));
        // A small encoding scale is its own floor.
        assert_eq!(fit_headroom(24, 22, 0, 2.0), h(22, 1));
    }

    #[test]
    fn token_ids_stay_in_the_vocabulary() {
        let ids = token_ids(500, 30, 3);
        assert!(ids.iter().all(|&i| (1..30).contains(&i)));
        assert_ne!(ids, token_ids(500, 30, 4));
    }
}
