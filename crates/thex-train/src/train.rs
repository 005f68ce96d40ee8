//! Task fine-tuning: tokenised, length-bucketed batches, AdamW with linear warm-up and decay,
//! cross-entropy or knowledge distillation, a progress bar and a loss log.

use std::time::Instant;

use candle_core::{D, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use thex_model::{Batch, LoadedModel, ThexModel, length_buckets};

use crate::config::{FineTune, TrainConfig};
use crate::data::{Dataset, Example};
use crate::error::{Result, TrainError};

/// A training example as token ids (`[CLS] … [SEP]`, at most `max_len` long).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Class label.
    pub label: u32,
}

/// Up to `max` examples of `data` drawn without replacement in a seeded random order
/// (`max == 0`: all of them, shuffled).
pub fn subsample(data: &Dataset, max: usize, seed: u64) -> Vec<Example> {
    let mut order: Vec<usize> = (0..data.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let take = if max == 0 {
        order.len()
    } else {
        max.min(order.len())
    };
    order[..take]
        .iter()
        .map(|&i| data.examples[i].clone())
        .collect()
}

/// Tokenises examples with the model's tokenizer and cuts each to `max_len` tokens (keeping
/// the final `[SEP]`). Labels must be below `labels`.
pub fn encode_examples(
    model: &LoadedModel,
    examples: &[Example],
    max_len: usize,
    labels: usize,
) -> Result<Vec<Encoded>> {
    examples
        .iter()
        .map(|e| {
            if e.label as usize >= labels {
                return Err(TrainError::LabelOutOfRange {
                    label: e.label,
                    labels,
                });
            }
            let mut ids = model.tokenize(&e.text)?;
            if ids.len() > max_len {
                let last = ids[ids.len() - 1];
                ids.truncate(max_len - 1);
                ids.push(last);
            }
            Ok(Encoded {
                ids,
                label: e.label,
            })
        })
        .collect()
}

/// What the student is trained to do.
#[derive(Debug, Clone, Copy)]
pub enum Objective<'a> {
    /// Cross-entropy with the labels.
    CrossEntropy,
    /// `alpha · T² · KL(softmax(teacher/T) ‖ softmax(student/T)) + (1 − alpha) · CE`.
    Distill {
        /// The teacher (run in evaluation mode, no gradient).
        teacher: &'a ThexModel,
        /// Softening temperature `T`.
        temperature: f64,
        /// Weight of the distillation term.
        alpha: f64,
    },
}

/// Mean loss over a window of optimizer steps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossPoint {
    /// Optimizer steps done when the window closed.
    pub step: usize,
    /// Mean training loss over the window.
    pub loss: f64,
}

/// Outcome of [`fine_tune`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FineTuneStats {
    /// Distinct training examples.
    pub train_examples: usize,
    /// Epochs over them.
    pub epochs: usize,
    /// Optimizer steps taken.
    pub steps: usize,
    /// Examples processed (examples × epochs).
    pub examples_seen: usize,
    /// Wall time of the training loop.
    pub seconds: f64,
    /// Training throughput.
    pub examples_per_s: f64,
    /// Mean loss of every logging window.
    pub losses: Vec<LossPoint>,
}

/// Learning rate at optimizer step `step` of `total`: linear warm-up over the first
/// `warmup` steps, then linear decay to zero.
pub fn learning_rate(peak: f64, step: usize, total: usize, warmup: usize) -> f64 {
    if step < warmup {
        peak * (step + 1) as f64 / warmup as f64
    } else {
        let rest = total.saturating_sub(warmup).max(1);
        peak * total.saturating_sub(step) as f64 / rest as f64
    }
}

/// The training loss of one batch.
pub fn batch_loss(
    student_logits: &Tensor,
    labels: &Tensor,
    objective: Objective<'_>,
    batch: &Batch,
) -> Result<Tensor> {
    let ce = candle_nn::loss::cross_entropy(student_logits, labels)?;
    match objective {
        Objective::CrossEntropy => Ok(ce),
        Objective::Distill {
            teacher,
            temperature,
            alpha,
        } => {
            let t_logits = teacher
                .forward(batch, false)?
                .logits
                .ok_or_else(|| TrainError::InvalidConfig("teacher has no head".into()))?
                .detach();
            let t_log = candle_nn::ops::log_softmax(&(t_logits / temperature)?, D::Minus1)?;
            let s_log = candle_nn::ops::log_softmax(&(student_logits / temperature)?, D::Minus1)?;
            let kl = (t_log.exp()? * (t_log - s_log)?)?
                .sum(D::Minus1)?
                .mean_all()?;
            let kd = (kl * (temperature * temperature))?;
            Ok(((kd * alpha)? + (ce * (1.0 - alpha))?)?)
        }
    }
}

/// A progress bar over `total` examples showing examples/s and ETA (hidden when stderr is
/// not a terminal; the log lines are printed either way).
pub fn progress_bar(total: u64, prefix: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{prefix:>10} [{elapsed_precise}] {wide_bar} {pos}/{len} ex {per_sec} ETA {eta} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb.set_prefix(prefix.to_string());
    pb
}

/// Prints a log line above the progress bar, or to stderr when the bar is hidden.
pub fn log_line(pb: &ProgressBar, line: &str) {
    if pb.is_hidden() {
        eprintln!("{line}");
    } else {
        pb.println(line);
    }
}

/// Fine-tunes `model` (built on `vars`, which the optimizer updates) on `data`: every epoch
/// shuffles the examples, groups them into length buckets of at most `cfg.batch_size`
/// sequences and `cfg.max_batch_tokens` padded tokens, and visits the buckets in random order.
pub fn fine_tune(
    model: &ThexModel,
    vars: Vec<Var>,
    data: &[Encoded],
    settings: &FineTune,
    cfg: &TrainConfig,
    objective: Objective<'_>,
    name: &str,
) -> Result<FineTuneStats> {
    if data.is_empty() {
        return Err(TrainError::InvalidConfig(format!(
            "{name}: no training examples"
        )));
    }
    let device = model.device().clone();
    let pad = model.config().pad_token_id;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5eed_f1e7);
    let lengths: Vec<usize> = data.iter().map(|e| e.ids.len()).collect();
    let per_epoch = length_buckets(&lengths, cfg.batch_size, cfg.max_batch_tokens).len();
    let total_steps = per_epoch * settings.epochs;
    let warmup = ((total_steps as f64 * cfg.warmup_fraction) as usize).max(1);
    let params = ParamsAdamW {
        lr: learning_rate(settings.lr, 0, total_steps, warmup),
        weight_decay: cfg.weight_decay,
        ..Default::default()
    };
    let mut opt = AdamW::new(vars, params)?;
    let total_examples = data.len() * settings.epochs;
    let pb = progress_bar(total_examples as u64, name);
    let start = Instant::now();
    let mut step = 0;
    let mut seen = 0;
    let (mut window_sum, mut window_n) = (0.0f64, 0usize);
    let mut losses = Vec::new();
    for _ in 0..settings.epochs {
        let mut order: Vec<usize> = (0..data.len()).collect();
        order.shuffle(&mut rng);
        let lens: Vec<usize> = order.iter().map(|&i| lengths[i]).collect();
        let mut buckets = length_buckets(&lens, cfg.batch_size, cfg.max_batch_tokens);
        buckets.shuffle(&mut rng);
        for bucket in buckets {
            let seqs: Vec<Vec<u32>> = bucket.iter().map(|&j| data[order[j]].ids.clone()).collect();
            let labels: Vec<u32> = bucket.iter().map(|&j| data[order[j]].label).collect();
            let (batch, labels) = make_batch(&seqs, labels, pad, &device)?;
            let logits = model
                .forward(&batch, true)?
                .logits
                .ok_or_else(|| TrainError::InvalidConfig("model has no head".into()))?;
            let loss = batch_loss(&logits, &labels, objective, &batch)?;
            let value = loss.to_scalar::<f32>()?;
            if !value.is_finite() {
                pb.abandon();
                return Err(TrainError::Diverged {
                    stage: name.to_string(),
                    step,
                    loss: value,
                });
            }
            opt.set_learning_rate(learning_rate(settings.lr, step, total_steps, warmup));
            opt.backward_step(&loss)?;
            step += 1;
            seen += bucket.len();
            window_sum += value as f64;
            window_n += 1;
            pb.inc(bucket.len() as u64);
            if step % cfg.log_every == 0 || step == total_steps {
                let mean = window_sum / window_n as f64;
                losses.push(LossPoint { step, loss: mean });
                let secs = start.elapsed().as_secs_f64();
                let rate = seen as f64 / secs;
                let eta = (total_examples - seen) as f64 / rate;
                pb.set_message(format!("loss {mean:.4}"));
                log_line(
                    &pb,
                    &format!(
                        "{name}: step {step}/{total_steps} loss {mean:.4} lr {:.2e} {rate:.1} ex/s ETA {:.0}s",
                        opt.learning_rate(),
                        eta
                    ),
                );
                (window_sum, window_n) = (0.0, 0);
            }
        }
    }
    pb.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    Ok(FineTuneStats {
        train_examples: data.len(),
        epochs: settings.epochs,
        steps: step,
        examples_seen: seen,
        seconds,
        examples_per_s: seen as f64 / seconds.max(1e-9),
        losses,
    })
}

fn make_batch(
    seqs: &[Vec<u32>],
    labels: Vec<u32>,
    pad: u32,
    device: &Device,
) -> Result<(Batch, Tensor)> {
    let batch = Batch::new(seqs, pad, device)?;
    let labels = Tensor::new(labels, device)?;
    Ok((batch, labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        let lr: Vec<f64> = (0..10).map(|s| learning_rate(1.0, s, 10, 2)).collect();
        assert_eq!(lr[0], 0.5);
        assert_eq!(lr[1], 1.0);
        assert_eq!(lr[2], 1.0);
        assert!(lr.windows(2).skip(2).all(|w| w[1] < w[0]));
        assert!((lr[9] - 0.125).abs() < 1e-12);
    }

    #[test]
    fn subsample_is_seeded_and_without_replacement() {
        let text: String = std::iter::once("sentence\tlabel\n".to_string())
            .chain((0..50).map(|i| format!("s{i}\t{}\n", i % 2)))
            .collect();
        let d = Dataset::parse(std::path::Path::new("x.tsv"), &text).unwrap();
        let a = subsample(&d, 20, 1);
        assert_eq!(a, subsample(&d, 20, 1));
        assert_ne!(a, subsample(&d, 20, 2));
        let mut names: Vec<&str> = a.iter().map(|e| e.text.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 20);
        assert_eq!(subsample(&d, 0, 1).len(), 50);
        assert_eq!(subsample(&d, 500, 1).len(), 50);
    }
}
