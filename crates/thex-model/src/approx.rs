//! THE-X approximations as explicit configuration, stored as `thex.json` next to the weights.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::{Activation, BertConfig};
use crate::error::{ModelError, Result};

/// File name of the approximation settings inside a model directory.
pub const THEX_FILE: &str = "thex.json";

/// Current version of the `thex.json` format.
pub const THEX_FORMAT_VERSION: u32 = 1;

/// Which pieces of BERT are replaced by HE-friendly approximations.
///
/// The embedding LayerNorm is always exact: the client computes the embeddings in plaintext.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThexConfig {
    /// Version of this format; must be [`THEX_FORMAT_VERSION`].
    pub format_version: u32,
    /// Activation of every feed-forward block (overrides the config's `hidden_act`).
    pub activation: Activation,
    /// Attention softmax.
    pub softmax: SoftmaxConfig,
    /// The two LayerNorms of every encoder layer.
    pub layer_norm: LayerNormKind,
    /// Classification head, if the model has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<HeadConfig>,
    /// Safetensors file, relative to the model directory, that supplies tensors missing from
    /// `model.safetensors` (e.g. the frozen embedding table of the base model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_weights: Option<String>,
}

/// The attention softmax.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SoftmaxConfig {
    /// `exp(x_j) / sum_k exp(x_k)`, masked keys excluded.
    Exact,
    /// THE-X: `e_j = ReLU((x_j * scale + shift)^power) * mask_j`, `s = sum_j e_j`,
    /// `out_j = e_j * T(s)` with `T` the reciprocal MLP.
    Thex(ThexSoftmax),
}

/// Constants of the THE-X softmax (all tunable).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThexSoftmax {
    /// Multiplier of the score before the power (THE-X: 1/2).
    pub scale: f64,
    /// Added after scaling (THE-X: 1).
    pub shift: f64,
    /// Integer power (THE-X: 3).
    pub power: u32,
    /// Width of both hidden layers of `T: 1 -> h -> h -> 1` (THE-X: 16).
    pub reciprocal_hidden: usize,
}

impl Default for ThexSoftmax {
    fn default() -> Self {
        ThexSoftmax {
            scale: 0.5,
            shift: 1.0,
            power: 3,
            reciprocal_hidden: 16,
        }
    }
}

/// The encoder LayerNorms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerNormKind {
    /// `gamma * (x - mean) / sqrt(var + eps) + beta`.
    Exact,
    /// THE-X's LN-distill: `gamma' * x + beta'` element-wise (same tensor names as the
    /// original `LayerNorm.weight` / `LayerNorm.bias`, so it starts from the original values).
    Affine,
}

/// How a sequence of hidden states becomes one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// Mean over the non-padding positions (sentence-transformers' mean pooling). Linear, so
    /// the server can compute it under HE (the `1/n` is a plaintext constant).
    Mean,
}

/// A linear classifier on the pooled last hidden state (tensors `classifier.weight`,
/// `classifier.bias`). No tanh pooler and no softmax on the server: the client turns the
/// decrypted logits into probabilities.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadConfig {
    /// Pooling of the last hidden state.
    pub pooling: Pooling,
    /// Label names; index `i` is logit `i`.
    pub labels: Vec<String>,
}

impl ThexConfig {
    /// No approximation: the original model (activation from the config's `hidden_act`).
    pub fn exact(cfg: &BertConfig) -> Result<Self> {
        Ok(ThexConfig {
            format_version: THEX_FORMAT_VERSION,
            activation: cfg.activation()?,
            softmax: SoftmaxConfig::Exact,
            layer_norm: LayerNormKind::Exact,
            head: None,
            base_weights: None,
        })
    }

    /// Every THE-X approximation with the paper's default constants.
    pub fn full_thex(head: Option<HeadConfig>) -> Self {
        ThexConfig {
            format_version: THEX_FORMAT_VERSION,
            activation: Activation::Relu,
            softmax: SoftmaxConfig::Thex(ThexSoftmax::default()),
            layer_norm: LayerNormKind::Affine,
            head,
            base_weights: None,
        }
    }

    /// Checks the constants.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(ModelError::InvalidThexConfig(msg));
        if self.format_version != THEX_FORMAT_VERSION {
            return bad(format!(
                "format_version {} (this build reads {THEX_FORMAT_VERSION})",
                self.format_version
            ));
        }
        if let SoftmaxConfig::Thex(s) = &self.softmax {
            if !(s.scale.is_finite() && s.scale != 0.0) {
                return bad(format!(
                    "softmax scale must be finite and nonzero, got {}",
                    s.scale
                ));
            }
            if !s.shift.is_finite() {
                return bad(format!("softmax shift must be finite, got {}", s.shift));
            }
            if !(1..=15).contains(&s.power) {
                return bad(format!("softmax power must be in 1..=15, got {}", s.power));
            }
            if s.reciprocal_hidden == 0 {
                return bad("reciprocal_hidden must be positive".into());
            }
        }
        if let Some(head) = &self.head {
            if head.labels.is_empty() {
                return bad("head needs at least one label".into());
            }
            for (i, l) in head.labels.iter().enumerate() {
                if head.labels[..i].contains(l) {
                    return bad(format!("duplicate label {l:?}"));
                }
            }
        }
        Ok(())
    }

    /// Reads and validates a `thex.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let cfg: ThexConfig = serde_json::from_str(&text).map_err(|source| ModelError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Writes pretty JSON.
    pub fn to_file(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|source| ModelError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        std::fs::write(path, text + "\n").map_err(|e| ModelError::io(path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialized_form_is_pinned() {
        let cfg = ThexConfig::full_thex(Some(HeadConfig {
            pooling: Pooling::Mean,
            labels: vec!["negative".into(), "positive".into()],
        }));
        let v = serde_json::to_value(&cfg).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "format_version": 1,
                "activation": "relu",
                "softmax": {"kind": "thex", "scale": 0.5, "shift": 1.0, "power": 3,
                            "reciprocal_hidden": 16},
                "layer_norm": "affine",
                "head": {"pooling": "mean", "labels": ["negative", "positive"]}
            })
        );
        let back: ThexConfig = serde_json::from_value(v).unwrap();
        assert_eq!(back, cfg);
        let exact: ThexConfig = serde_json::from_str(
            r#"{"format_version":1,"activation":"gelu","softmax":{"kind":"exact"},"layer_norm":"exact"}"#,
        )
        .unwrap();
        assert_eq!(exact.head, None);
        exact.validate().unwrap();
    }

    #[test]
    fn rejects_bad_constants() {
        let mut cfg = ThexConfig::full_thex(None);
        cfg.softmax = SoftmaxConfig::Thex(ThexSoftmax {
            power: 0,
            ..Default::default()
        });
        assert!(matches!(
            cfg.validate(),
            Err(ModelError::InvalidThexConfig(_))
        ));
        cfg.softmax = SoftmaxConfig::Thex(ThexSoftmax {
            scale: 0.0,
            ..Default::default()
        });
        assert!(cfg.validate().is_err());
        cfg.softmax = SoftmaxConfig::Thex(ThexSoftmax {
            shift: f64::NAN,
            ..Default::default()
        });
        assert!(cfg.validate().is_err());
        let mut cfg = ThexConfig::full_thex(Some(HeadConfig {
            pooling: Pooling::Mean,
            labels: vec!["a".into(), "a".into()],
        }));
        assert!(cfg.validate().is_err());
        cfg.head = None;
        cfg.format_version = 2;
        assert!(cfg.validate().is_err());
        assert!(serde_json::from_str::<ThexConfig>(r#"{"format_version":1,"activation":"swish","softmax":{"kind":"exact"},"layer_norm":"exact"}"#).is_err());
    }
}
