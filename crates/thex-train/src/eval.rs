//! Accuracy (and Matthews correlation, CoLA's metric) of a classifier on a labelled dataset.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use thex_model::{LoadOptions, LoadedModel, load_model_dir};

use crate::data::Dataset;
use crate::error::{Result, TrainError};

/// Per-class counts of an evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LabelStats {
    /// Examples whose true label is this class.
    pub n: usize,
    /// How many of them were predicted correctly.
    pub correct: usize,
    /// `correct / n` (the class's recall).
    pub accuracy: f64,
}

/// Result of [`evaluate`]; serialises as `{"accuracy", "n", "per_label", "mcc"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Fraction of examples classified correctly.
    pub accuracy: f64,
    /// Number of examples.
    pub n: usize,
    /// Statistics per true label (JSON keys are the label numbers).
    pub per_label: BTreeMap<u32, LabelStats>,
    /// Matthews correlation coefficient (multi-class form; CoLA's metric), 0 when undefined.
    pub mcc: f64,
}

impl EvalReport {
    /// Builds the report from `(true label, predicted label)` pairs.
    pub fn from_pairs(pairs: &[(u32, u32)]) -> Self {
        let mut per_label: BTreeMap<u32, LabelStats> = BTreeMap::new();
        let mut correct = 0;
        for &(truth, pred) in pairs {
            let s = per_label.entry(truth).or_insert(LabelStats {
                n: 0,
                correct: 0,
                accuracy: 0.0,
            });
            s.n += 1;
            if truth == pred {
                s.correct += 1;
                correct += 1;
            }
        }
        for s in per_label.values_mut() {
            s.accuracy = s.correct as f64 / s.n as f64;
        }
        let n = pairs.len();
        EvalReport {
            accuracy: if n == 0 {
                0.0
            } else {
                correct as f64 / n as f64
            },
            n,
            per_label,
            mcc: matthews(pairs),
        }
    }
}

/// Matthews correlation for any number of classes (Gorodkin's R_K):
/// `(c·s − Σ p_k t_k) / sqrt((s² − Σ p_k²)(s² − Σ t_k²))`, with `s` examples, `c` correct,
/// `t_k`/`p_k` the true/predicted counts of class `k`. 0 when a factor of the denominator is 0.
pub fn matthews(pairs: &[(u32, u32)]) -> f64 {
    let mut t: BTreeMap<u32, f64> = BTreeMap::new();
    let mut p: BTreeMap<u32, f64> = BTreeMap::new();
    let mut c = 0.0;
    for &(truth, pred) in pairs {
        *t.entry(truth).or_default() += 1.0;
        *p.entry(pred).or_default() += 1.0;
        if truth == pred {
            c += 1.0;
        }
    }
    let s = pairs.len() as f64;
    let pt: f64 = p
        .iter()
        .map(|(k, pk)| pk * t.get(k).copied().unwrap_or(0.0))
        .sum();
    let pp: f64 = p.values().map(|v| v * v).sum();
    let tt: f64 = t.values().map(|v| v * v).sum();
    let denom = ((s * s - pp) * (s * s - tt)).sqrt();
    if denom > 0.0 {
        (c * s - pt) / denom
    } else {
        0.0
    }
}

/// Classifies every example of `data` with `model` (length-bucketed batches) and scores it.
/// Labels must be below the number of classes of the model's head.
pub fn evaluate(model: &LoadedModel, data: &Dataset) -> Result<EvalReport> {
    let head = model.model.head().ok_or_else(|| TrainError::NoHead {
        path: model.dir.clone(),
    })?;
    let labels = head.labels.len();
    if let Some(bad) = data.examples.iter().find(|e| e.label as usize >= labels) {
        return Err(TrainError::LabelOutOfRange {
            label: bad.label,
            labels,
        });
    }
    let texts: Vec<&str> = data.examples.iter().map(|e| e.text.as_str()).collect();
    let preds = model.predict_batch(&texts)?;
    let pairs: Vec<(u32, u32)> = data
        .examples
        .iter()
        .zip(&preds)
        .map(|(e, p)| (e.label, p.label_id as u32))
        .collect();
    Ok(EvalReport::from_pairs(&pairs))
}

/// Loads the model directory `model_dir` (its `thex.json` decides the approximations) and
/// evaluates it on the TSV file `data` — what `thex eval --model DIR --data TSV` prints.
pub fn evaluate_dir(model_dir: &Path, data: &Path) -> Result<EvalReport> {
    let model = load_model_dir(model_dir, &LoadOptions::default())?;
    let data = Dataset::read_tsv(data)?;
    evaluate(&model, &data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_counts_per_label_and_serialises_in_the_documented_shape() {
        let r = EvalReport::from_pairs(&[(0, 0), (0, 1), (1, 1), (1, 1), (1, 0)]);
        assert_eq!(r.n, 5);
        assert!((r.accuracy - 0.6).abs() < 1e-12);
        assert_eq!(r.per_label[&0].correct, 1);
        assert_eq!(r.per_label[&1].n, 3);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["per_label"]["1"]["correct"], 2);
        assert_eq!(v["n"], 5);
        let mut keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(keys, ["accuracy", "mcc", "n", "per_label"]);
    }

    #[test]
    fn matthews_matches_the_binary_formula() {
        // tp=3, tn=2, fp=1, fn=2 -> (6 - 2) / sqrt(4 * 5 * 3 * 4)
        let mut pairs = vec![(1, 1); 3];
        pairs.extend([(0, 0), (0, 0), (0, 1), (1, 0), (1, 0)]);
        let expected = 4.0 / (4.0f64 * 5.0 * 3.0 * 4.0).sqrt();
        assert!((matthews(&pairs) - expected).abs() < 1e-12);
        // Perfect, inverted and constant predictions.
        assert!((matthews(&[(0, 0), (1, 1)]) - 1.0).abs() < 1e-12);
        assert!((matthews(&[(0, 1), (1, 0)]) + 1.0).abs() < 1e-12);
        assert_eq!(matthews(&[(0, 1), (1, 1)]), 0.0);
        assert_eq!(matthews(&[]), 0.0);
    }
}
