//! THE-X's reciprocal network `T ≈ 1/s`: measuring the sums `s` a model produces, and
//! pre-training `T` on random Gaussian attention rows against the exact softmax.
//!
//! `T: 1 → h → h → 1` with ReLUs is piecewise linear, so it can only follow `1/s` over a
//! bounded range; that range is taken from the model itself. [`measure_rows`] runs real
//! sentences through the model (exact softmax) and records, for every attention row, its
//! length, the mean and spread of its scores, and the sum `s = Σ ReLU((x·scale + shift)^p)`
//! the THE-X softmax would form. [`pretrain_reciprocal`] then
//! 1. initialises `T` as a least-squares piecewise-linear fit of `1/s` (relative error) with
//!    geometrically spaced knots over the measured range of `s` (first layer: falling ramps
//!    at the knots, second layer: identity, last layer solved in closed form), and
//! 2. trains all of `T` with Adam on the MSE between `e · T(s)` and the exact softmax of random
//!    Gaussian rows whose length, mean and spread are copied from measured rows, so the sums
//!    it trains on follow the model's distribution. The held-out MSE is checked as it goes and
//!    the best parameters are kept: Adam's fixed step suits parameters of order 1, while
//!    `T`'s span the orders of magnitude of `s`, so large steps can only make the fit worse.

use std::time::Instant;

use candle_core::{D, DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use thex_model::{Batch, ReciprocalMlp, ThexModel, ThexSoftmax, exact_softmax, length_buckets};

use crate::config::ReciprocalPretrain;
use crate::error::{Result, TrainError};

/// Tensor-name prefix of `T` inside a model.
pub const PREFIX: &str = "reciprocal";

/// One measured attention row.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RowStats {
    /// Number of (unmasked) keys.
    pub len: usize,
    /// Mean of its scores.
    pub mean: f32,
    /// Standard deviation of its scores.
    pub std: f32,
    /// `s = Σ_j ReLU((x_j·scale + shift)^power)`.
    pub sum: f64,
}

/// Runs `seqs` through `model` (evaluation mode) and returns the statistics of every attention
/// row of every layer and head, with `s` computed for the softmax constants `softmax`.
pub fn measure_rows(
    model: &ThexModel,
    seqs: &[Vec<u32>],
    softmax: &ThexSoftmax,
) -> Result<Vec<RowStats>> {
    let lengths: Vec<usize> = seqs.iter().map(Vec::len).collect();
    let pad = model.config().pad_token_id;
    let mut rows = Vec::new();
    for bucket in length_buckets(&lengths, 32, 2048) {
        let batch_seqs: Vec<Vec<u32>> = bucket.iter().map(|&i| seqs[i].clone()).collect();
        let batch = Batch::new(&batch_seqs, pad, model.device())?;
        let (_, trace) = model.forward_traced(&batch)?;
        for layer in &trace.layers {
            let (b, heads, n, _) = layer.scores.dims4()?;
            let flat: Vec<f32> = layer.scores.flatten_all()?.to_vec1()?;
            for (bi, &len) in batch.lengths().iter().enumerate().take(b) {
                for h in 0..heads {
                    for q in 0..len {
                        let start = ((bi * heads + h) * n + q) * n;
                        rows.push(row_stats(&flat[start..start + len], softmax));
                    }
                }
            }
        }
    }
    Ok(rows)
}

fn row_stats(x: &[f32], softmax: &ThexSoftmax) -> RowStats {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    RowStats {
        len: x.len(),
        mean: mean as f32,
        std: var.sqrt() as f32,
        sum: x.iter().map(|&v| thex_e(v as f64, softmax)).sum(),
    }
}

/// `ReLU((x·scale + shift)^power)`.
pub fn thex_e(x: f64, softmax: &ThexSoftmax) -> f64 {
    (x * softmax.scale + softmax.shift)
        .powi(softmax.power as i32)
        .max(0.0)
}

/// The `q`-quantile (0 ≤ q ≤ 1) of sorted values, by nearest rank.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Summary of the measured sums and of how well the pre-trained `T` inverts them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReciprocalReport {
    /// Attention rows measured.
    pub measured_rows: usize,
    /// Rows whose sum was 0 (every key clipped by the ReLU; their output is 0 whatever `T`).
    pub zero_sum_rows: usize,
    /// Mean and standard deviation of all measured scores.
    pub score_mean: f64,
    /// See `score_mean`.
    pub score_std: f64,
    /// `(q, s_q)` for q in 0, 0.001, 0.01, 0.1, 0.5, 0.9, 0.99, 0.999, 1 (positive sums only).
    pub sum_quantiles: Vec<(f64, f64)>,
    /// Knots of the initial piecewise-linear fit.
    pub knots: Vec<f64>,
    /// `(q, s_q, T(s_q)·s_q − 1)` after pre-training: relative error of `T` at the quantiles.
    pub relative_error: Vec<(f64, f64, f64)>,
    /// Softmax MSE on held-out random rows with the least-squares initialisation.
    pub mse_init: f64,
    /// The same for the kept parameters (the best seen during the Adam steps).
    pub mse_final: f64,
    /// Adam steps taken.
    pub steps: usize,
    /// Step whose parameters were kept (0: the least-squares initialisation).
    pub best_step: usize,
    /// Wall time.
    pub seconds: f64,
}

/// Random rows in padded form with everything the loss needs precomputed.
struct RowPool {
    e: Tensor,
    sum: Tensor,
    target: Tensor,
    mask: Tensor,
}

fn gaussian(rng: &mut ChaCha8Rng) -> f64 {
    // Box–Muller.
    let u1: f64 = rng.r#gen::<f64>().max(1e-300);
    let u2: f64 = rng.r#gen();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn make_pool(
    measured: &[RowStats],
    count: usize,
    softmax: &ThexSoftmax,
    rng: &mut ChaCha8Rng,
    device: &Device,
) -> Result<RowPool> {
    let width = measured.iter().map(|r| r.len).max().unwrap_or(1);
    let mut x = vec![0f32; count * width];
    let mut mask = vec![0f32; count * width];
    for r in 0..count {
        let like = measured[rng.gen_range(0..measured.len())];
        for j in 0..like.len {
            x[r * width + j] = (like.mean as f64 + like.std as f64 * gaussian(rng)) as f32;
            mask[r * width + j] = 1.0;
        }
    }
    let x = Tensor::from_vec(x, (count, width), device)?;
    let mask = Tensor::from_vec(mask, (count, width), device)?;
    let target = exact_softmax(&x, &mask)?;
    let y = x.affine(softmax.scale, softmax.shift)?;
    let mut p = y.clone();
    for _ in 1..softmax.power {
        p = (&p * &y)?;
    }
    let e = (p.relu()? * &mask)?;
    let sum = e.sum_keepdim(D::Minus1)?;
    Ok(RowPool {
        e,
        sum,
        target,
        mask,
    })
}

fn softmax_mse(t: &ReciprocalMlp, pool: &RowPool, rows: Option<&Tensor>) -> Result<Tensor> {
    let pick = |x: &Tensor| -> Result<Tensor> {
        Ok(match rows {
            Some(idx) => x.index_select(idx, 0)?,
            None => x.clone(),
        })
    };
    let (e, sum, target, mask) = (
        pick(&pool.e)?,
        pick(&pool.sum)?,
        pick(&pool.target)?,
        pick(&pool.mask)?,
    );
    let out = e.broadcast_mul(&t.forward(&sum)?)?;
    let sq = ((out - target)?.sqr()? * &mask)?.sum_all()?;
    Ok((sq / mask.sum_all()?.to_scalar::<f32>()? as f64)?)
}

/// Least-squares solution of `min ‖A x − b‖` for `A` given by its columns (all of length
/// `b.len()`), by Householder QR on `A` itself: forming `AᵀA` would square a condition number
/// that the piecewise-linear basis makes large. Columns that are (numerically) dependent on
/// earlier ones get coefficient 0.
fn lstsq(mut cols: Vec<Vec<f64>>, mut b: Vec<f64>) -> Vec<f64> {
    let m = cols.len();
    let n = b.len();
    let mut diag = vec![0.0; m];
    for k in 0..m.min(n) {
        let norm = cols[k][k..].iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm == 0.0 {
            continue;
        }
        let alpha = if cols[k][k] > 0.0 { -norm } else { norm };
        // v = x − alpha·e1, stored in cols[k][k..]; R_kk = alpha.
        cols[k][k] -= alpha;
        let vnorm2 = cols[k][k..].iter().map(|v| v * v).sum::<f64>();
        diag[k] = alpha;
        if vnorm2 == 0.0 {
            continue;
        }
        let (head, tail) = cols.split_at_mut(k + 1);
        let v = &head[k][k..];
        for c in tail.iter_mut() {
            let dot: f64 = v.iter().zip(&c[k..]).map(|(a, b)| a * b).sum();
            let f = 2.0 * dot / vnorm2;
            for (ci, vi) in c[k..].iter_mut().zip(v) {
                *ci -= f * vi;
            }
        }
        let dot: f64 = v.iter().zip(&b[k..]).map(|(a, b)| a * b).sum();
        let f = 2.0 * dot / vnorm2;
        for (bi, vi) in b[k..].iter_mut().zip(v) {
            *bi -= f * vi;
        }
    }
    let tol = 1e-12 * diag.iter().fold(0.0f64, |a, d| a.max(d.abs()));
    let mut x = vec![0.0; m];
    for i in (0..m.min(n)).rev() {
        if diag[i].abs() <= tol {
            continue;
        }
        let s: f64 = (i + 1..m).map(|k| cols[k][i] * x[k]).sum();
        x[i] = (b[i] - s) / diag[i];
    }
    x
}

/// Knots of the initial fit, geometrically spaced from the 0.1% to the 99.99% quantile of the
/// measured sums: `1/s` bends the same amount on every octave, so equal ratios between knots
/// give a uniform relative error, also over the heavy tail where peaked attention rows put
/// large sums.
fn choose_knots(sums: &[f64], hidden: usize) -> Vec<f64> {
    let lo = quantile(sums, 0.001).max(1e-12);
    let hi = quantile(sums, 0.9999).max(lo * 1.001);
    (0..hidden)
        .map(|i| {
            let f = if hidden > 1 {
                i as f64 / (hidden - 1) as f64
            } else {
                0.0
            };
            lo * (hi / lo).powf(f)
        })
        .collect()
}

/// Tensors by name (relative to the module's prefix).
type NamedTensors = Vec<(&'static str, Tensor)>;

/// Least-squares piecewise-linear initialisation of `T` with knots `k_i` (see
/// [`choose_knots`]): the first layer forms falling ramps `r_i = ReLU((k_i − s)/s_ref)`, the
/// second passes them on (identity), and the output layer `b + Σ w_i r_i` is solved for the
/// smallest relative error `Σ (s·T(s) − 1)²` over the measured sums. `1/s` is convex and
/// falling, so the weights come out non-negative: `T` is a sum of positive terms, which its
/// f32 evaluation computes without cancellation at any `s` (rising ramps would need large
/// opposite weights at large `s`). Above the last knot `T` is the constant `b`. Returns the
/// named tensors `fc{1,2,3}.{weight,bias}` and the knots.
fn initial_tensors(
    sums: &[f64],
    hidden: usize,
    device: &Device,
) -> Result<(NamedTensors, Vec<f64>)> {
    let s_ref = quantile(sums, 0.5).max(1e-12);
    let knots = choose_knots(sums, hidden);
    let features = |s: f64| -> Vec<f64> {
        let mut f: Vec<f64> = knots.iter().map(|k| ((k - s) / s_ref).max(0.0)).collect();
        f.push(1.0);
        f
    };
    // Minimise Σ (s·T(s) − 1)² over the measured sums (relative error of T against 1/s),
    // with unit-norm columns.
    let m = hidden + 1;
    let lo = quantile(sums, 0.001);
    let used: Vec<f64> = sums.iter().copied().filter(|&s| s >= lo).collect();
    let mut cols = vec![Vec::with_capacity(used.len()); m];
    for &s in &used {
        for (col, f) in cols.iter_mut().zip(features(s)) {
            col.push(f * s);
        }
    }
    let norms: Vec<f64> = cols
        .iter_mut()
        .map(|c| {
            let n = c.iter().map(|v| v * v).sum::<f64>().sqrt();
            let n = if n > 0.0 { n } else { 1.0 };
            c.iter_mut().for_each(|v| *v /= n);
            n
        })
        .collect();
    let c: Vec<f64> = lstsq(cols, vec![1.0; used.len()])
        .iter()
        .zip(&norms)
        .map(|(x, n)| x / n)
        .collect();
    let f32v = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
    let mut eye = vec![0f32; hidden * hidden];
    for i in 0..hidden {
        eye[i * hidden + i] = 1.0;
    }
    let tensors = vec![
        (
            "fc1.weight",
            Tensor::from_vec(vec![(-1.0 / s_ref) as f32; hidden], (hidden, 1), device)?,
        ),
        (
            "fc1.bias",
            Tensor::from_vec(
                f32v(knots.iter().map(|k| k / s_ref).collect()),
                hidden,
                device,
            )?,
        ),
        (
            "fc2.weight",
            Tensor::from_vec(eye, (hidden, hidden), device)?,
        ),
        ("fc2.bias", Tensor::zeros(hidden, DType::F32, device)?),
        (
            "fc3.weight",
            Tensor::from_vec(f32v(c[..hidden].to_vec()), (1, hidden), device)?,
        ),
        ("fc3.bias", Tensor::new(&[c[hidden] as f32], device)?),
    ];
    Ok((tensors, knots))
}

/// Copies of the current values of every variable.
fn snapshot(vm: &VarMap) -> Result<Vec<(Var, Tensor)>> {
    vm.all_vars()
        .into_iter()
        .map(|v| {
            let t = v.as_tensor().copy()?;
            Ok((v, t))
        })
        .collect()
}

/// Pre-trains `T` for the softmax constants `softmax` on rows shaped like `measured` (see the
/// module docs). Returns a `VarMap` holding `reciprocal.fc{1,2,3}.{weight,bias}` — hand it to
/// `TrainParams::varmap` so the model reuses these values — and a report.
pub fn pretrain_reciprocal(
    measured: &[RowStats],
    softmax: &ThexSoftmax,
    settings: &ReciprocalPretrain,
    seed: u64,
    device: &Device,
) -> Result<(VarMap, ReciprocalReport)> {
    let start = Instant::now();
    let mut sums: Vec<f64> = measured
        .iter()
        .map(|r| r.sum)
        .filter(|s| *s > 0.0)
        .collect();
    if sums.is_empty() {
        return Err(TrainError::InvalidConfig(
            "no attention row has a positive THE-X sum: change softmax scale/shift".into(),
        ));
    }
    sums.sort_by(f64::total_cmp);
    let usable: Vec<RowStats> = measured.iter().copied().filter(|r| r.len > 0).collect();
    let hidden = softmax.reciprocal_hidden;
    let (init, knots) = initial_tensors(&sums, hidden, device)?;
    let varmap = VarMap::new();
    {
        let mut data = varmap
            .data()
            .lock()
            .map_err(|_| TrainError::InvalidConfig("poisoned varmap".into()))?;
        for (name, t) in init {
            data.insert(format!("{PREFIX}.{name}"), Var::from_tensor(&t)?);
        }
    }
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
    let t = ReciprocalMlp::new(hidden, vb.pp(PREFIX))?;

    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7ec1_9c0c);
    let pool = make_pool(&usable, settings.rows, softmax, &mut rng, device)?;
    let held_out = make_pool(
        &usable,
        (settings.rows / 10).max(1),
        softmax,
        &mut rng,
        device,
    )?;
    let mse_init = softmax_mse(&t, &held_out, None)?.to_scalar::<f32>()? as f64;
    let mut opt = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr: settings.lr,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let batch = settings.batch_rows.min(settings.rows);
    // Adam's fixed step size suits parameters of order 1, but T's are spread over the orders
    // of magnitude of s; so the held-out MSE is checked every `CHECK_EVERY` steps and the best
    // parameters seen (possibly the initial fit) are kept.
    const CHECK_EVERY: usize = 50;
    let mut best = (mse_init, 0usize, snapshot(&varmap)?);
    for step in 1..=settings.steps {
        let idx: Vec<u32> = (0..batch)
            .map(|_| rng.gen_range(0..settings.rows) as u32)
            .collect();
        let idx = Tensor::new(idx, device)?;
        opt.backward_step(&softmax_mse(&t, &pool, Some(&idx))?)?;
        if step % CHECK_EVERY == 0 || step == settings.steps {
            let mse = softmax_mse(&t, &held_out, None)?.to_scalar::<f32>()? as f64;
            if mse.is_finite() && mse < best.0 {
                best = (mse, step, snapshot(&varmap)?);
            }
        }
    }
    for (var, value) in &best.2 {
        var.set(value)?;
    }
    let (mse_final, best_step) = (best.0, best.1);
    let qs = [0.0, 0.001, 0.01, 0.1, 0.5, 0.9, 0.99, 0.999, 1.0];
    let sum_quantiles: Vec<(f64, f64)> = qs.iter().map(|&q| (q, quantile(&sums, q))).collect();
    let probe: Vec<f32> = sum_quantiles.iter().map(|(_, s)| *s as f32).collect();
    let tq: Vec<f32> = t
        .forward(&Tensor::from_vec(probe.clone(), (probe.len(), 1), device)?)?
        .flatten_all()?
        .to_vec1()?;
    let relative_error = sum_quantiles
        .iter()
        .zip(&tq)
        .map(|(&(q, s), &ts)| (q, s, ts as f64 * s - 1.0))
        .collect();
    let all: Vec<f64> = usable.iter().map(|r| r.mean as f64).collect();
    let score_mean = all.iter().sum::<f64>() / all.len().max(1) as f64;
    // Pooled variance: within-row variance plus the spread of the row means.
    let n_total: f64 = usable.iter().map(|r| r.len as f64).sum();
    let pooled = usable
        .iter()
        .map(|r| r.len as f64 * ((r.std as f64).powi(2) + (r.mean as f64 - score_mean).powi(2)))
        .sum::<f64>()
        / n_total.max(1.0);
    let report = ReciprocalReport {
        measured_rows: measured.len(),
        zero_sum_rows: measured.len() - sums.len(),
        score_mean,
        score_std: pooled.sqrt(),
        sum_quantiles,
        knots,
        relative_error,
        mse_init,
        mse_final,
        steps: settings.steps,
        best_step,
        seconds: start.elapsed().as_secs_f64(),
    };
    Ok((varmap, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lstsq_solves_an_overdetermined_system() {
        // Columns (1, x) for x = 0..4 and b = 2x + 1 plus a zero-mean residual.
        let x = [0.0, 1.0, 2.0, 3.0, 4.0];
        let r = [0.1, -0.2, 0.2, -0.2, 0.1];
        let b: Vec<f64> = x.iter().zip(r).map(|(x, r)| 2.0 * x + 1.0 + r).collect();
        let sol = lstsq(vec![vec![1.0; 5], x.to_vec()], b);
        assert!(
            (sol[0] - 1.0).abs() < 1e-12 && (sol[1] - 2.0).abs() < 1e-12,
            "{sol:?}"
        );
        // A duplicated column is dependent: it gets 0.
        let sol = lstsq(vec![x.to_vec(), x.to_vec()], x.to_vec());
        assert!((sol[0] - 1.0).abs() < 1e-12 && sol[1] == 0.0, "{sol:?}");
    }

    #[test]
    fn initial_t_inverts_the_measured_range_and_adam_keeps_the_best_softmax_mse() {
        let softmax = ThexSoftmax::default();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        // Rows like a real model's: 5..40 keys, score means around 0, spreads around 2.
        let measured: Vec<RowStats> = (0..400)
            .map(|_| {
                let len = rng.gen_range(5..40);
                let x: Vec<f32> = (0..len)
                    .map(|_| (rng.gen_range(-0.5..0.5) + 2.0 * gaussian(&mut rng)) as f32)
                    .collect();
                row_stats(&x, &softmax)
            })
            .collect();
        // The least-squares initialisation inverts s within a few percent over the bulk.
        let init_only = ReciprocalPretrain {
            rows: 2000,
            steps: 0,
            ..Default::default()
        };
        let (_, rep) =
            pretrain_reciprocal(&measured, &softmax, &init_only, 1, &Device::Cpu).unwrap();
        for &(q, s, err) in &rep.relative_error {
            if (0.01..=0.99).contains(&q) {
                assert!(err.abs() < 0.1, "q {q} s {s} relative error {err}");
            }
        }
        assert_eq!((rep.best_step, rep.mse_final), (0, rep.mse_init));
        // Adam on the softmax MSE keeps the best parameters it sees.
        let settings = ReciprocalPretrain {
            rows: 2000,
            steps: 300,
            batch_rows: 128,
            ..Default::default()
        };
        let (varmap, rep) =
            pretrain_reciprocal(&measured, &softmax, &settings, 1, &Device::Cpu).unwrap();
        assert_eq!(varmap.all_vars().len(), 6);
        assert!(rep.mse_final <= rep.mse_init, "{rep:?}");
        // On fresh rows the THE-X softmax with this T is far closer to the exact softmax than
        // the all-zero output.
        let pool = make_pool(&measured, 200, &softmax, &mut rng, &Device::Cpu).unwrap();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let t = ReciprocalMlp::new(16, vb.pp(PREFIX)).unwrap();
        let mse = softmax_mse(&t, &pool, None)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let zero = (pool
            .target
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap())
            / pool.mask.sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(mse < zero / 10.0, "{mse} vs {zero}");
    }

    #[test]
    fn all_clipped_rows_are_rejected() {
        let softmax = ThexSoftmax::default();
        let measured = vec![row_stats(&[-10.0, -9.0], &softmax)];
        assert_eq!(measured[0].sum, 0.0);
        let Err(err) = pretrain_reciprocal(
            &measured,
            &softmax,
            &ReciprocalPretrain::default(),
            0,
            &Device::Cpu,
        ) else {
            panic!("accepted rows whose sums are all 0");
        };
        assert!(err.to_string().contains("positive"), "{err}");
    }
}
