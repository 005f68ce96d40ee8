//! What the client needs of the model: its shapes ([`ModelDims`]) and the plaintext embedding
//! ([`EmbeddingTables`]: word, position and token-type tables and the exact LayerNorm).

use he_linalg::Matrix;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Shapes and constants both sides need (part of the client bundle).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelDims {
    /// Hidden width.
    pub hidden: usize,
    /// Attention heads.
    pub heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// FFN width.
    pub ffn: usize,
    /// Encoder layers.
    pub layers: usize,
    /// Hidden width of the reciprocal network.
    pub reciprocal_hidden: usize,
    /// Softmax surrogate constants.
    pub softmax_scale: f64,
    /// Softmax surrogate shift.
    pub softmax_shift: f64,
    /// Softmax surrogate power (applied by the client together with its ReLU).
    pub softmax_power: u32,
    /// Label names of the classifier.
    pub labels: Vec<String>,
}

/// The client's plaintext embedding: tables and the exact embedding LayerNorm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingTables {
    /// Vocabulary size.
    pub vocab: usize,
    /// Hidden width.
    pub hidden: usize,
    /// Word embeddings, `vocab × hidden` row-major.
    pub word: Vec<f32>,
    /// Position embeddings, `positions × hidden` row-major.
    pub position: Vec<f32>,
    /// Token-type 0 embedding (`hidden`).
    pub token_type: Vec<f32>,
    /// LayerNorm gamma.
    pub ln_gamma: Vec<f32>,
    /// LayerNorm beta.
    pub ln_beta: Vec<f32>,
    /// LayerNorm epsilon.
    pub ln_eps: f64,
    /// Id of the padding token.
    pub pad_id: u32,
}

impl EmbeddingTables {
    /// Number of rows of the position table.
    pub fn max_positions(&self) -> usize {
        self.position.len() / self.hidden.max(1)
    }

    /// Embeds token ids (`tokens × hidden`): word + position + token type 0, then the exact
    /// LayerNorm, in `f64`.
    pub fn embed(&self, ids: &[u32]) -> Result<Matrix> {
        let h = self.hidden;
        if ids.len() > self.max_positions() {
            return Err(Error::SequenceTooLong {
                tokens: ids.len(),
                max: self.max_positions(),
            });
        }
        let mut out = Matrix::zeros(ids.len(), h);
        for (t, &id) in ids.iter().enumerate() {
            let id = id as usize;
            if id >= self.vocab {
                return Err(Error::Malformed(format!(
                    "token id {id} outside the vocabulary of {}",
                    self.vocab
                )));
            }
            let row: Vec<f64> = (0..h)
                .map(|c| {
                    self.word[id * h + c] as f64
                        + self.position[t * h + c] as f64
                        + self.token_type[c] as f64
                })
                .collect();
            let mean = row.iter().sum::<f64>() / h as f64;
            let var = row.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / h as f64;
            let inv = 1.0 / (var + self.ln_eps).sqrt();
            for (c, x) in row.iter().enumerate() {
                let v = (x - mean) * inv * self.ln_gamma[c] as f64 + self.ln_beta[c] as f64;
                out.set(t, c, v);
            }
        }
        Ok(out)
    }
}
