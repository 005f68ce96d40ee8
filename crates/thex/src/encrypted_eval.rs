//! `thex eval --encrypted`: every sentence through the encrypted engine (client and server in
//! this process, every message through its byte form), compared with the plaintext THE-X model.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use thex_client::{ClientSession, Rounds};
use thex_engine::{EngineParams, ServerModel, ServerSession, run_local};
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
    /// The round protocol of every record (`blinded` or `thex`).
    pub protocol: Rounds,
    /// Mean seconds per encrypted inference.
    pub mean_seconds: f64,
    /// Mean bytes per inference, client to server (keys excluded).
    pub mean_bytes_up: f64,
    /// Mean bytes per inference, server to client.
    pub mean_bytes_down: f64,
    /// Sentences per length bucket.
    pub buckets: Vec<(usize, usize)>,
    /// Sentences whose encrypted inference failed (no prediction; counted as wrong).
    pub failures: usize,
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

/// One sentence's encrypted and plaintext results: a line of the `--records` file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// Index of the sentence in the data file (0-based).
    pub index: usize,
    /// Gold label.
    pub label: u32,
    /// Token count (with `[CLS]` and `[SEP]`).
    pub tokens: usize,
    /// Label of the encrypted inference (`None` when it failed, see `error`).
    pub encrypted_label: Option<u32>,
    /// Label of the plaintext THE-X model.
    pub plaintext_label: u32,
    /// Decrypted logits (empty when the inference failed).
    pub logits: Vec<f64>,
    /// Why the encrypted inference gave no prediction (a value beyond the decryption
    /// headroom); counted as a wrong and disagreeing prediction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Plaintext logits.
    pub plaintext_logits: Vec<f64>,
    /// Seconds of the encrypted inference.
    pub seconds: f64,
    /// Bytes client to server (keys excluded) and server to client.
    pub bytes_up: usize,
    /// Bytes server to client.
    pub bytes_down: usize,
    /// Client rounds.
    pub rounds: usize,
    /// The round protocol (records written before blinded rounds existed are THE-X's).
    #[serde(default = "thex_rounds")]
    pub protocol: Rounds,
}

fn thex_rounds() -> Rounds {
    Rounds::Thex
}

/// Recorded plaintext logits may differ from this run's by this much (CPU kernels); more means
/// the records were made with another model.
const PLAINTEXT_LOGIT_TOLERANCE: f64 = 1e-3;

/// Reads a records file: one JSON [`Record`] per line. A last line without its newline (a run
/// killed while writing it) is dropped and cut from the file.
fn read_records(path: &Path) -> anyhow::Result<Vec<Record>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let complete = text.rfind('\n').map_or(0, |i| i + 1);
    if complete < text.len() {
        let f = std::fs::OpenOptions::new().write(true).open(path)?;
        f.set_len(complete as u64)
            .with_context(|| format!("cutting the partial last line of {}", path.display()))?;
    }
    text[..complete]
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{} line {}: not a record", path.display(), i + 1))
        })
        .collect()
}

/// Checks that earlier records belong to these sentences and this model.
fn check_records(
    records: &[Record],
    data: &Dataset,
    ids: &[Vec<u32>],
    plain: &[thex_model::Prediction],
    protocol: Rounds,
) -> anyhow::Result<()> {
    let mut seen = vec![false; data.examples.len()];
    for r in records {
        anyhow::ensure!(
            r.protocol == protocol,
            "the records of sentence {} were made with {} rounds, this run uses {} rounds (use \
             another records file or --rounds {})",
            r.index + 1,
            r.protocol.name(),
            protocol.name(),
            r.protocol.name()
        );
        let i = r.index;
        let fits = i < data.examples.len()
            && r.label == data.examples[i].label
            && r.tokens == ids[i].len()
            && r.plaintext_logits.len() == plain[i].logits.len();
        anyhow::ensure!(
            fits,
            "record of sentence {} does not match the data (another data file or --limit?)",
            i + 1
        );
        anyhow::ensure!(!seen[i], "sentence {} is recorded twice", i + 1);
        seen[i] = true;
        let drift = r
            .plaintext_logits
            .iter()
            .zip(&plain[i].logits)
            .map(|(a, b)| (a - f64::from(*b)).abs())
            .fold(0.0, f64::max);
        anyhow::ensure!(
            drift <= PLAINTEXT_LOGIT_TOLERANCE,
            "record of sentence {}: plaintext logits differ by {drift:.1e} from this model's \
             (records made with another model?)",
            i + 1
        );
    }
    Ok(())
}

/// Runs `data` through the encrypted engine compiled from `model` and compares with the
/// plaintext predictions. With `records`, every sentence's result is appended to that file as
/// it finishes and sentences already there are skipped, so a long run can stop and resume; the
/// report covers all recorded sentences. With `summary_only` nothing is run: the report covers
/// the sentences recorded so far (e.g. while another process is still appending).
pub fn evaluate(
    model: &LoadedModel,
    data: &Dataset,
    records_path: Option<&Path>,
    (summary_only, quiet): (bool, bool),
    protocol: Rounds,
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
    // Each sentence's length bucket (the compile refuses one beyond the position embeddings),
    // then the count per bucket.
    let bucket_ids: Vec<usize> = ids
        .iter()
        .map(|x| thex_engine::length_bucket(x.len()))
        .collect();
    let mut buckets: Vec<(usize, usize)> = Vec::new();
    for &b in &bucket_ids {
        match buckets.iter_mut().find(|(bb, _)| *bb == b) {
            Some((_, c)) => *c += 1,
            None => buckets.push((b, 1)),
        }
    }
    buckets.sort_unstable();
    let texts: Vec<&str> = data.examples.iter().map(|e| e.text.as_str()).collect();
    let plain = model.predict_batch(&texts)?;
    for e in &data.examples {
        anyhow::ensure!(
            (e.label as usize) < labels,
            "label {} does not fit the {labels}-label head",
            e.label
        );
    }

    let mut records = match records_path {
        Some(p) => read_records(p)?,
        None => Vec::new(),
    };
    check_records(&records, data, &ids, &plain, protocol)?;
    let done: std::collections::BTreeSet<usize> = records.iter().map(|r| r.index).collect();
    let todo: Vec<usize> = match summary_only {
        true => Vec::new(),
        false => (0..ids.len()).filter(|i| !done.contains(i)).collect(),
    };
    if !todo.is_empty() {
        let mut file = records_path
            .map(|p| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map(|f| (f, p))
                    .with_context(|| format!("opening {}", p.display()))
            })
            .transpose()?;
        // One calibration for the whole run (as a server with these sentences' buckets would
        // be calibrated), then one bucket compiled at a time by it: the weights of the buckets
        // not being run are not held in memory.
        let needed: std::collections::BTreeSet<usize> =
            todo.iter().map(|&i| bucket_ids[i]).collect();
        let all_buckets: Vec<usize> = buckets.iter().map(|&(b, _)| b).collect();
        let plan = ServerModel::resolve(
            &model.model,
            &EngineParams {
                buckets: all_buckets,
                rounds: protocol,
                ..EngineParams::default()
            },
        )?;
        let bar = progress(ids.len(), quiet);
        bar.set_position(records.len() as u64);
        bar.reset_eta();
        let mut agree = records.iter().filter(|r| agrees(r)).count();
        for bucket in needed {
            let server_model = Arc::new(ServerModel::compile_plan(
                &model.model,
                &plan.for_buckets(&[bucket])?,
            )?);
            // A client session with fresh keys, and the server session holding them.
            let open = || -> anyhow::Result<(ClientSession, ServerSession)> {
                let client = ClientSession::new(server_model.client_bundle())?;
                let keys = client.evaluation_keys(&[bucket])?;
                let server = ServerSession::new(server_model.clone(), keys, &[bucket])?;
                Ok((client, server))
            };
            let (mut client, mut server) = open()?;
            for &i in todo.iter().filter(|&&i| bucket_ids[i] == bucket) {
                let start = Instant::now();
                let plaintext_logits: Vec<f64> =
                    plain[i].logits.iter().map(|&x| f64::from(x)).collect();
                let mut rec = Record {
                    index: i,
                    label: data.examples[i].label,
                    tokens: ids[i].len(),
                    encrypted_label: None,
                    plaintext_label: plain[i].label_id as u32,
                    logits: Vec::new(),
                    error: None,
                    plaintext_logits,
                    seconds: 0.0,
                    bytes_up: 0,
                    bytes_down: 0,
                    rounds: 0,
                    protocol,
                };
                match run_local(&mut client, &mut server, &ids[i]) {
                    Ok(r) => {
                        anyhow::ensure!(
                            r.logits.len() == labels,
                            "{} logits do not fit the {labels}-label head",
                            r.logits.len()
                        );
                        rec.encrypted_label = Some(r.label_id as u32);
                        (rec.logits, rec.bytes_up, rec.bytes_down, rec.rounds) =
                            (r.logits, r.bytes_up, r.bytes_down, r.rounds);
                    }
                    // A client that refused a value answers nothing more with its key: the
                    // next sentence gets fresh keys.
                    Err(
                        e @ thex_engine::EngineError::Protocol(thex_client::Error::OutOfRange {
                            ..
                        }),
                    ) => {
                        rec.error = Some(e.to_string());
                        (client, server) = open()?;
                    }
                    Err(e) => return Err(e).with_context(|| format!("sentence {}", i + 1)),
                }
                rec.seconds = start.elapsed().as_secs_f64();
                if let Some((f, p)) = file.as_mut() {
                    let mut line = serde_json::to_string(&rec)?;
                    line.push('\n');
                    f.write_all(line.as_bytes())
                        .and_then(|()| f.flush())
                        .with_context(|| format!("writing {}", p.display()))?;
                }
                agree += usize::from(agrees(&rec));
                records.push(rec);
                bar.set_message(format!("agreement {agree}/{}", records.len()));
                bar.inc(1);
            }
        }
        bar.finish_and_clear();
    }
    Ok(report(&records, data, &plain, (buckets, protocol)))
}

/// Whether the encrypted inference produced the plaintext model's label.
fn agrees(r: &Record) -> bool {
    r.encrypted_label == Some(r.plaintext_label)
}

/// The report over all records.
fn report(
    records: &[Record],
    data: &Dataset,
    plain: &[thex_model::Prediction],
    (buckets, protocol): (Vec<(usize, usize)>, Rounds),
) -> EncryptedEvalReport {
    let n = records.len().max(1) as f64;
    // A failed inference predicts no label (a class of its own for the MCC).
    let pairs: Vec<(u32, u32)> = records
        .iter()
        .map(|r| (r.label, r.encrypted_label.unwrap_or(u32::MAX)))
        .collect();
    let errors: Vec<f64> = records
        .iter()
        .flat_map(|r| {
            r.logits
                .iter()
                .zip(&r.plaintext_logits)
                .map(|(a, b)| (a - b).abs())
        })
        .collect();
    // The plaintext model on the same (recorded) sentences.
    let plain_pairs: Vec<(u32, u32)> = records
        .iter()
        .map(|r| (data.examples[r.index].label, plain[r.index].label_id as u32))
        .collect();
    let ok: Vec<&Record> = records.iter().filter(|r| r.error.is_none()).collect();
    let mean =
        |f: fn(&Record) -> f64| ok.iter().map(|r| f(r)).sum::<f64>() / ok.len().max(1) as f64;
    EncryptedEvalReport {
        eval: EvalReport::from_pairs(&pairs),
        plaintext_accuracy: EvalReport::from_pairs(&plain_pairs).accuracy,
        agreement: records.iter().filter(|r| agrees(r)).count() as f64 / n,
        max_logit_error: errors.iter().copied().fold(0.0, f64::max),
        mean_logit_error: errors.iter().sum::<f64>() / errors.len().max(1) as f64,
        rounds: records.iter().map(|r| r.rounds).max().unwrap_or(0),
        protocol,
        mean_seconds: mean(|r| r.seconds),
        mean_bytes_up: mean(|r| r.bytes_up as f64),
        mean_bytes_down: mean(|r| r.bytes_down as f64),
        buckets,
        failures: records.len() - ok.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use thex_train::Example;

    fn record(index: usize, label: u32, enc: Option<u32>, plain: u32) -> Record {
        Record {
            index,
            label,
            tokens: 5,
            encrypted_label: enc,
            plaintext_label: plain,
            logits: enc.map_or(vec![], |_| vec![0.5, -0.5]),
            plaintext_logits: vec![0.5, -0.25],
            error: enc.is_none().then(|| "out of range".to_string()),
            seconds: 2.0,
            bytes_up: 10,
            bytes_down: 20,
            rounds: 12,
            protocol: Rounds::Blinded,
        }
    }

    #[test]
    fn failed_inferences_count_as_wrong_and_disagreeing() {
        let data = Dataset {
            path: "dev.tsv".into(),
            examples: (0..3)
                .map(|i| Example {
                    text: format!("s{i}"),
                    label: 1,
                })
                .collect(),
        };
        let plain: Vec<thex_model::Prediction> = (0..3)
            .map(|_| thex_model::Prediction {
                label: "positive".into(),
                label_id: 1,
                probabilities: vec![0.4, 0.6],
                logits: vec![0.5, -0.25],
                labels: vec!["negative".into(), "positive".into()],
            })
            .collect();
        let records = vec![
            record(0, 1, Some(1), 1),
            record(1, 1, None, 1),
            record(2, 1, Some(0), 1),
        ];
        let r = report(&records, &data, &plain, (vec![(16, 3)], Rounds::Blinded));
        assert_eq!(r.failures, 1);
        assert!((r.agreement - 1.0 / 3.0).abs() < 1e-12);
        assert!((r.eval.accuracy - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(r.plaintext_accuracy, 1.0);
        // Logit errors and means over the inferences that produced logits only.
        assert_eq!(r.max_logit_error, 0.25);
        assert_eq!(r.mean_seconds, 2.0);
        assert_eq!(r.mean_bytes_up, 10.0);
    }
}
