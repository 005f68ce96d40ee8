//! What the client needs of the model: its shapes ([`ModelDims`]) and the plaintext embedding
//! ([`EmbeddingTables`]: word, position and token-type tables and the exact LayerNorm).

use he_linalg::Matrix;
use serde::{Deserialize, Serialize};

use crate::bundle::bad_field;
use crate::error::{Error, Result};

/// Most encoder layers a bundle may have (the wire format's bound on a layer index).
pub const MAX_LAYERS: usize = 4096;
/// Largest softmax surrogate power (as `thex-model` allows).
pub const MAX_SOFTMAX_POWER: u32 = 15;

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

impl ModelDims {
    /// Checks that every width is positive, the head split exact (no overflow), the layer
    /// count and softmax power within bounds, the constants finite and the labels non-empty;
    /// the error names the field.
    pub fn check(&self) -> Result<()> {
        for (field, v) in [
            ("dims.hidden", self.hidden),
            ("dims.heads", self.heads),
            ("dims.head_dim", self.head_dim),
            ("dims.ffn", self.ffn),
            ("dims.reciprocal_hidden", self.reciprocal_hidden),
        ] {
            if v == 0 {
                return Err(bad_field(field, "is 0"));
            }
        }
        if self.heads.checked_mul(self.head_dim) != Some(self.hidden) {
            return Err(bad_field(
                "dims.head_dim",
                format_args!(
                    "{} heads × {} ≠ hidden width {}",
                    self.heads, self.head_dim, self.hidden
                ),
            ));
        }
        if self.heads.checked_mul(self.reciprocal_hidden).is_none() {
            return Err(bad_field(
                "dims.reciprocal_hidden",
                format_args!(
                    "{} × {} heads overflows",
                    self.reciprocal_hidden, self.heads
                ),
            ));
        }
        if !(1..=MAX_LAYERS).contains(&self.layers) {
            return Err(bad_field(
                "dims.layers",
                format_args!("{} (must be in 1..={MAX_LAYERS})", self.layers),
            ));
        }
        if !(1..=MAX_SOFTMAX_POWER).contains(&self.softmax_power) {
            return Err(bad_field(
                "dims.softmax_power",
                format_args!(
                    "{} (must be in 1..={MAX_SOFTMAX_POWER})",
                    self.softmax_power
                ),
            ));
        }
        for (field, v) in [
            ("dims.softmax_scale", self.softmax_scale),
            ("dims.softmax_shift", self.softmax_shift),
        ] {
            if !v.is_finite() {
                return Err(bad_field(field, format_args!("{v} is not finite")));
            }
        }
        if self.labels.is_empty() {
            return Err(bad_field("dims.labels", "is empty"));
        }
        Ok(())
    }
}

impl EmbeddingTables {
    /// Checks the table shapes ([`EmbeddingTables::check_shapes`]), that every table value is
    /// finite and that the LayerNorm epsilon is positive; the error names the field.
    pub fn check(&self) -> Result<()> {
        self.check_shapes()?;
        for (field, t) in [
            ("embeddings.word", &self.word),
            ("embeddings.position", &self.position),
            ("embeddings.token_type", &self.token_type),
            ("embeddings.ln_gamma", &self.ln_gamma),
            ("embeddings.ln_beta", &self.ln_beta),
        ] {
            if let Some(i) = t.iter().position(|x| !x.is_finite()) {
                return Err(bad_field(field, format_args!("value {i} is {}", t[i])));
            }
        }
        if !(self.ln_eps.is_finite() && self.ln_eps > 0.0) {
            return Err(bad_field(
                "embeddings.ln_eps",
                format_args!("{} (must be finite and positive)", self.ln_eps),
            ));
        }
        Ok(())
    }

    /// The length of the word table, `vocab × hidden`, once both are positive and their
    /// product does not overflow.
    pub fn word_values(&self) -> Result<usize> {
        let h = self.hidden;
        if h == 0 {
            return Err(bad_field("embeddings.hidden", "is 0"));
        }
        if self.vocab == 0 {
            return Err(bad_field("embeddings.vocab", "is 0"));
        }
        self.vocab.checked_mul(h).ok_or_else(|| {
            bad_field(
                "embeddings.vocab",
                format_args!("{} × hidden {h} overflows", self.vocab),
            )
        })
    }

    /// Checks the shapes [`EmbeddingTables::embed`] indexes by: a positive width and
    /// vocabulary, `vocab × hidden` word values, whole position rows (at least one), one
    /// row of token type, gamma and beta, and a padding id inside the vocabulary.
    pub fn check_shapes(&self) -> Result<()> {
        let h = self.hidden;
        let words = self.word_values()?;
        if self.word.len() != words {
            return Err(bad_field(
                "embeddings.word",
                format_args!("has {} values, expected {words}", self.word.len()),
            ));
        }
        if self.position.is_empty() || !self.position.len().is_multiple_of(h) {
            return Err(bad_field(
                "embeddings.position",
                format_args!(
                    "has {} values, expected a positive multiple of {h}",
                    self.position.len()
                ),
            ));
        }
        for (field, t) in [
            ("embeddings.token_type", &self.token_type),
            ("embeddings.ln_gamma", &self.ln_gamma),
            ("embeddings.ln_beta", &self.ln_beta),
        ] {
            if t.len() != h {
                return Err(bad_field(
                    field,
                    format_args!("has {} values, expected {h}", t.len()),
                ));
            }
        }
        if self.pad_id as usize >= self.vocab {
            return Err(bad_field(
                "embeddings.pad_id",
                format_args!("{} outside the vocabulary of {}", self.pad_id, self.vocab),
            ));
        }
        Ok(())
    }

    /// Number of rows of the position table.
    pub fn max_positions(&self) -> usize {
        self.position.len() / self.hidden.max(1)
    }

    /// Embeds token ids (`tokens × hidden`): word + position + token type 0, then the exact
    /// LayerNorm, in `f64`. Tables of the wrong shape are refused.
    pub fn embed(&self, ids: &[u32]) -> Result<Matrix> {
        self.check_shapes()?;
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
