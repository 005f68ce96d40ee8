//! The Hugging Face BERT `config.json`, mirrored and validated.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// An element-wise activation of the feed-forward block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// GELU with the exact erf formula (Hugging Face `"gelu"`).
    Gelu,
    /// GELU with the tanh approximation (`"gelu_new"`, also read from `"gelu_pytorch_tanh"`).
    #[serde(alias = "gelu_pytorch_tanh")]
    GeluNew,
    /// `max(0, x)`: THE-X's replacement, computed by the client.
    Relu,
}

impl Activation {
    /// Parses a Hugging Face `hidden_act` string.
    pub fn from_hf(name: &str) -> Result<Self> {
        match name {
            "gelu" => Ok(Activation::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" => Ok(Activation::GeluNew),
            "relu" => Ok(Activation::Relu),
            other => Err(ModelError::UnsupportedActivation(other.to_string())),
        }
    }
}

/// Mirror of a Hugging Face BERT `config.json`. Unknown keys are kept in `extra` and written
/// back unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    /// Number of token ids.
    pub vocab_size: usize,
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Width of the feed-forward block.
    pub intermediate_size: usize,
    /// Activation of the feed-forward block, as Hugging Face names it.
    pub hidden_act: String,
    /// Dropout on hidden states during training.
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities during training.
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    /// Longest supported sequence (rows of the position embedding table).
    pub max_position_embeddings: usize,
    /// Rows of the token-type embedding table.
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    /// Epsilon of every LayerNorm.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Id of the padding token.
    #[serde(default)]
    pub pad_token_id: u32,
    /// Only `"absolute"` is supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position_embedding_type: Option<String>,
    /// Every other key of `config.json`, preserved.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn default_dropout() -> f64 {
    0.1
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}

impl BertConfig {
    /// Reads and validates a `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let cfg: BertConfig = serde_json::from_str(&text).map_err(|source| ModelError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Writes the config as pretty JSON.
    pub fn to_file(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|source| ModelError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        std::fs::write(path, text + "\n").map_err(|e| ModelError::io(path, e))
    }

    /// Checks every size and option this crate relies on.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(ModelError::InvalidConfig(format!(
                    "{name} must be positive"
                )));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(ModelError::HeadsDoNotDivideHidden {
                hidden_size: self.hidden_size,
                heads: self.num_attention_heads,
            });
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps.is_finite()) {
            return Err(ModelError::InvalidConfig(format!(
                "layer_norm_eps must be positive, got {}",
                self.layer_norm_eps
            )));
        }
        for (name, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(ModelError::InvalidConfig(format!(
                    "{name} must be in [0, 1), got {p}"
                )));
            }
        }
        if self.pad_token_id as usize >= self.vocab_size {
            return Err(ModelError::InvalidConfig(format!(
                "pad_token_id {} not below vocab_size {}",
                self.pad_token_id, self.vocab_size
            )));
        }
        if let Some(kind) = &self.position_embedding_type
            && kind != "absolute"
        {
            return Err(ModelError::UnsupportedPositionEmbedding(kind.clone()));
        }
        self.activation()?;
        Ok(())
    }

    /// The parsed `hidden_act`.
    pub fn activation(&self) -> Result<Activation> {
        Activation::from_hf(&self.hidden_act)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// The same model cut to its first `layers` encoder layers.
    pub fn truncated(&self, layers: usize) -> Result<Self> {
        if layers == 0 || layers > self.num_hidden_layers {
            return Err(ModelError::InvalidLayerCount {
                requested: layers,
                available: self.num_hidden_layers,
            });
        }
        Ok(BertConfig {
            num_hidden_layers: layers,
            ..self.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minilm_json() -> serde_json::Value {
        serde_json::json!({
            "architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1,
            "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": 384,
            "intermediate_size": 1536, "layer_norm_eps": 1e-12, "max_position_embeddings": 512,
            "model_type": "bert", "num_attention_heads": 12, "num_hidden_layers": 6,
            "pad_token_id": 0, "position_embedding_type": "absolute", "type_vocab_size": 2,
            "vocab_size": 30522
        })
    }

    fn parse(v: serde_json::Value) -> Result<BertConfig> {
        let cfg: BertConfig = serde_json::from_value(v).expect("json shape");
        cfg.validate().map(|()| cfg)
    }

    #[test]
    fn minilm_config_parses_and_round_trips_unknown_keys() {
        let cfg = parse(minilm_json()).unwrap();
        assert_eq!(cfg.head_dim(), 32);
        assert_eq!(cfg.activation().unwrap(), Activation::Gelu);
        let back = serde_json::to_value(&cfg).unwrap();
        assert_eq!(back["model_type"], "bert");
        assert_eq!(back["architectures"][0], "BertModel");
        assert_eq!(back["hidden_size"], 384);
    }

    #[test]
    fn rejects_heads_not_dividing_hidden() {
        let mut v = minilm_json();
        v["num_attention_heads"] = 7.into();
        match parse(v) {
            Err(ModelError::HeadsDoNotDivideHidden {
                hidden_size: 384,
                heads: 7,
            }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn rejects_unsupported_activation_and_position_type() {
        let mut v = minilm_json();
        v["hidden_act"] = "swish".into();
        assert!(matches!(parse(v), Err(ModelError::UnsupportedActivation(a)) if a == "swish"));
        let mut v = minilm_json();
        v["position_embedding_type"] = "relative_key".into();
        assert!(matches!(
            parse(v),
            Err(ModelError::UnsupportedPositionEmbedding(_))
        ));
        for ok in ["gelu_new", "gelu_pytorch_tanh", "relu"] {
            let mut v = minilm_json();
            v["hidden_act"] = ok.into();
            assert!(parse(v).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_zero_sizes_bad_eps_and_dropout() {
        for (key, val) in [
            ("hidden_size", serde_json::json!(0)),
            ("num_hidden_layers", serde_json::json!(0)),
            ("layer_norm_eps", serde_json::json!(0.0)),
            ("hidden_dropout_prob", serde_json::json!(1.5)),
            ("pad_token_id", serde_json::json!(40000)),
        ] {
            let mut v = minilm_json();
            v[key] = val;
            assert!(
                matches!(parse(v), Err(ModelError::InvalidConfig(_))),
                "{key}"
            );
        }
    }

    #[test]
    fn truncation_checks_range() {
        let cfg = parse(minilm_json()).unwrap();
        assert_eq!(cfg.truncated(2).unwrap().num_hidden_layers, 2);
        assert!(matches!(
            cfg.truncated(7),
            Err(ModelError::InvalidLayerCount {
                requested: 7,
                available: 6
            })
        ));
        assert!(cfg.truncated(0).is_err());
    }

    #[test]
    fn missing_file_is_reported() {
        let err = BertConfig::from_file(Path::new("/nonexistent/config.json")).unwrap_err();
        assert!(matches!(err, ModelError::MissingFile { .. }));
    }
}
