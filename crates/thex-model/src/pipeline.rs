//! Text in, embeddings or predictions out: what `thex encode` and `thex predict` print.

use std::path::Path;

use candle_core::{D, Tensor};
use serde::Serialize;

use crate::batch::{Batch, length_buckets};
use crate::error::{ModelError, Result};
use crate::model_dir::{LoadOptions, LoadedModel, load_model_dir};

/// Most sequences per inference batch.
const MAX_BATCH: usize = 64;
/// Most padded tokens per inference batch.
const MAX_BATCH_TOKENS: usize = 8192;

/// Output of [`encode`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EncodeOutput {
    /// Token ids including `[CLS]` and `[SEP]`.
    pub input_ids: Vec<u32>,
    /// Mean of the last hidden states over the tokens (sentence-transformers' pooling).
    pub embedding: Vec<f32>,
    /// `embedding / ||embedding||_2`: what sentence-transformers returns for all-MiniLM-L6-v2
    /// (its pipeline ends in a Normalize module); use it for cosine similarity.
    pub embedding_normalized: Vec<f32>,
    /// `[tokens][hidden]`, only when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_hidden_state: Option<Vec<Vec<f32>>>,
}

/// Output of [`predict`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    /// Name of the most probable label.
    pub label: String,
    /// Its index.
    pub label_id: usize,
    /// Softmax of the logits (computed by the client in THE-X).
    pub probabilities: Vec<f32>,
    /// Classifier outputs.
    pub logits: Vec<f32>,
    /// Label names, index-aligned with `probabilities`.
    pub labels: Vec<String>,
}

/// Loads `model_dir` and embeds one text; `hidden` adds the last hidden states.
pub fn encode(model_dir: &Path, text: &str, hidden: bool) -> Result<EncodeOutput> {
    let m = load_model_dir(model_dir, &LoadOptions::default())?;
    let mut out = m.encode_batch(&[text], hidden)?;
    Ok(out.remove(0))
}

/// Loads `model_dir` (which must have a classification head) and classifies one text.
pub fn predict(model_dir: &Path, text: &str) -> Result<Prediction> {
    let m = load_model_dir(model_dir, &LoadOptions::default())?;
    let mut out = m.predict_batch(&[text])?;
    Ok(out.remove(0))
}

/// Row-wise softmax in f64, returned as f32.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exps: Vec<f64> = logits.iter().map(|&l| (l as f64 - max).exp()).collect();
    let total: f64 = exps.iter().sum();
    exps.iter().map(|e| (e / total) as f32).collect()
}

fn l2_normalized(v: &[f32]) -> Vec<f32> {
    let norm = v
        .iter()
        .map(|x| (*x as f64).powi(2))
        .sum::<f64>()
        .sqrt()
        .max(1e-12);
    v.iter().map(|x| (*x as f64 / norm) as f32).collect()
}

impl LoadedModel {
    /// Token ids of a text (`[CLS] … [SEP]`, truncated to the position table).
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer.encode(text)
    }

    fn pad_id(&self) -> u32 {
        self.model.config().pad_token_id
    }

    /// Runs `texts` in length buckets and calls `each(index, ids, row_of_batch, output)`.
    fn run_bucketed(
        &self,
        texts: &[&str],
        mut each: impl FnMut(usize, &[u32], usize, &crate::bert::ModelOutput) -> Result<()>,
    ) -> Result<()> {
        let ids = texts
            .iter()
            .map(|t| self.tokenize(t))
            .collect::<Result<Vec<_>>>()?;
        let lengths: Vec<usize> = ids.iter().map(Vec::len).collect();
        for bucket in length_buckets(&lengths, MAX_BATCH, MAX_BATCH_TOKENS) {
            let seqs: Vec<Vec<u32>> = bucket.iter().map(|&i| ids[i].clone()).collect();
            let batch = Batch::new(&seqs, self.pad_id(), self.model.device())?;
            let out = self.model.forward(&batch, false)?;
            for (row, &i) in bucket.iter().enumerate() {
                each(i, &ids[i], row, &out)?;
            }
        }
        Ok(())
    }

    /// Embeds many texts (length-bucketed batches); results in input order.
    pub fn encode_batch(&self, texts: &[&str], hidden: bool) -> Result<Vec<EncodeOutput>> {
        let mut out: Vec<Option<EncodeOutput>> = vec![None; texts.len()];
        self.run_bucketed(texts, |i, ids, row, o| {
            let embedding: Vec<f32> = o.pooled.get(row)?.to_vec1()?;
            let last_hidden_state = if hidden {
                Some(
                    o.last_hidden_state
                        .get(row)?
                        .narrow(0, 0, ids.len())?
                        .to_vec2()?,
                )
            } else {
                None
            };
            out[i] = Some(EncodeOutput {
                input_ids: ids.to_vec(),
                embedding_normalized: l2_normalized(&embedding),
                embedding,
                last_hidden_state,
            });
            Ok(())
        })?;
        Ok(out.into_iter().flatten().collect())
    }

    /// Classifies many texts (length-bucketed batches); results in input order.
    pub fn predict_batch(&self, texts: &[&str]) -> Result<Vec<Prediction>> {
        let labels = self
            .model
            .head()
            .ok_or(ModelError::NoClassifierHead)?
            .labels
            .clone();
        let mut out: Vec<Option<Prediction>> = vec![None; texts.len()];
        self.run_bucketed(texts, |i, _, row, o| {
            let logits_t: &Tensor = o.logits.as_ref().ok_or(ModelError::NoClassifierHead)?;
            let logits: Vec<f32> = logits_t.get(row)?.to_vec1()?;
            let label_id = logits_t.get(row)?.argmax(D::Minus1)?.to_scalar::<u32>()? as usize;
            out[i] = Some(Prediction {
                label: labels[label_id].clone(),
                label_id,
                probabilities: softmax(&logits),
                logits,
                labels: labels.clone(),
            });
            Ok(())
        })?;
        Ok(out.into_iter().flatten().collect())
    }
}
