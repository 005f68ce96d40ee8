//! `thex eval --encrypted`: every sentence through the encrypted engine (client and server in
//! this process, every message through its byte form), compared with the plaintext THE-X model.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use thex_engine::{ClientSession, EngineParams, ServerModel, ServerSession, run_local_ids};
use thex_model::LoadedModel;
use thex_train::{Dataset, EvalReport};

/// The encrypted evaluation: accuracy of the encrypted predictions plus their agreement with the
/// plaintext model's.
#[derive(Debug, Clone, Serialize)]
pub struct EncryptedEvalReport {
    /// Accuracy etc. of the encrypted predictions.
    #[serde(flatten)]
    pub eval: EvalReport,
    /// Accuracy of the plaintext THE-X model on the same sentences.
    pub plaintext_accuracy: f64,
    /// Fraction of sentences whose encrypted label equals the plaintext label.
    pub agreement: f64,
    /// Largest |encrypted − plaintext| logit over all sentences and labels.
    pub max_logit_error: f64,
    /// Mean |encrypted − plaintext| logit.
    pub mean_logit_error: f64,
    /// Client rounds per inference.
    pub rounds: usize,
    /// Mean seconds per encrypted inference.
    pub mean_seconds: f64,
    /// Mean bytes per inference, client to server (keys excluded).
    pub mean_bytes_up: f64,
    /// Mean bytes per inference, server to client.
    pub mean_bytes_down: f64,
    /// Sentences per length bucket.
    pub buckets: Vec<(usize, usize)>,
}

fn progress(n: usize, quiet: bool) -> ProgressBar {
    let bar = ProgressBar::new(n as u64).with_style(
        ProgressStyle::with_template(
            "encrypted eval [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    if quiet {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar
}

/// Runs `data` through the encrypted engine compiled from `model` and compares with the
/// plaintext predictions.
pub fn evaluate(
    model: &LoadedModel,
    data: &Dataset,
    quiet: bool,
) -> anyhow::Result<EncryptedEvalReport> {
    let labels = model
        .model
        .head()
        .context("the model has no classification head")?
        .labels
        .len();
    let ids: Vec<Vec<u32>> = data
        .examples
        .iter()
        .map(|e| model.tokenize(&e.text))
        .collect::<Result<_, _>>()?;
    let max_bucket = thex_engine::DEFAULT_BUCKETS[thex_engine::DEFAULT_BUCKETS.len() - 1];
    let bucket_of = |n: usize| {
        thex_engine::DEFAULT_BUCKETS
            .iter()
            .copied()
            .find(|&b| b >= n)
    };
    let mut buckets: Vec<(usize, usize)> = Vec::new();
    for (i, x) in ids.iter().enumerate() {
        let b = bucket_of(x.len()).with_context(|| {
            format!(
                "sentence {} has {} tokens; the largest length bucket is {max_bucket}",
                i + 1,
                x.len()
            )
        })?;
        match buckets.iter_mut().find(|(bb, _)| *bb == b) {
            Some((_, c)) => *c += 1,
            None => buckets.push((b, 1)),
        }
    }
    buckets.sort_unstable();
    let texts: Vec<&str> = data.examples.iter().map(|e| e.text.as_str()).collect();
    let plain = model.predict_batch(&texts)?;

    let engine = EngineParams {
        buckets: buckets.iter().map(|&(b, _)| b).collect(),
        ..EngineParams::default()
    };
    let server_model = Arc::new(ServerModel::compile(&model.model, &engine)?);
    let all: Vec<usize> = server_model.buckets().to_vec();
    let mut client = ClientSession::new(server_model.client_bundle())?;
    let keys = client.evaluation_keys(&all)?;
    let mut server = ServerSession::new(server_model.clone(), keys, &all)?;

    let bar = progress(ids.len(), quiet);
    let (mut pairs, mut agree) = (Vec::new(), 0usize);
    let (mut max_err, mut sum_err, mut count) = (0f64, 0f64, 0usize);
    let (mut up, mut down, mut rounds) = (0usize, 0usize, 0usize);
    let start = Instant::now();
    for ((x, e), p) in ids.iter().zip(&data.examples).zip(&plain) {
        let r = run_local_ids(&mut client, &mut server, x)?;
        anyhow::ensure!(
            r.logits.len() == labels && (e.label as usize) < labels,
            "label {} or {} logits do not fit the {labels}-label head",
            e.label,
            r.logits.len()
        );
        for (a, b) in r.logits.iter().zip(&p.logits) {
            let d = (a - f64::from(*b)).abs();
            max_err = max_err.max(d);
            sum_err += d;
            count += 1;
        }
        agree += usize::from(r.label_id == p.label_id);
        pairs.push((e.label, r.label_id as u32));
        (up, down, rounds) = (up + r.bytes_up, down + r.bytes_down, r.rounds);
        bar.set_message(format!(
            "agreement {agree}/{} max err {max_err:.1e}",
            pairs.len()
        ));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let n = pairs.len().max(1) as f64;
    let plain_pairs: Vec<(u32, u32)> = data
        .examples
        .iter()
        .zip(&plain)
        .map(|(e, p)| (e.label, p.label_id as u32))
        .collect();
    Ok(EncryptedEvalReport {
        eval: EvalReport::from_pairs(&pairs),
        plaintext_accuracy: EvalReport::from_pairs(&plain_pairs).accuracy,
        agreement: agree as f64 / n,
        max_logit_error: max_err,
        mean_logit_error: sum_err / count.max(1) as f64,
        rounds,
        mean_seconds: start.elapsed().as_secs_f64() / n,
        mean_bytes_up: up as f64 / n,
        mean_bytes_down: down as f64 / n,
        buckets,
    })
}
