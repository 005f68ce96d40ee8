//! Everything a conversion run needs, as one serialisable [`TrainConfig`] (saved next to the
//! checkpoints, so a run documents itself).

use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thex_model::ThexSoftmax;

use crate::error::{Result, TrainError};

/// The named stages of the THE-X conversion, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Fine-tune the exact model (GELU, softmax, LayerNorm) with a linear head on mean-pooled
    /// states; the embeddings stay frozen.
    Baseline,
    /// GELU → ReLU, fine-tune.
    Relu,
    /// Pre-train the reciprocal network `T`, swap in the THE-X softmax, fine-tune.
    Softmax,
    /// Distil every encoder LayerNorm into its element-wise affine map.
    Layernorm,
    /// Final fine-tune with knowledge distillation from the baseline.
    Distill,
}

impl Stage {
    /// All stages in pipeline order.
    pub const ALL: [Stage; 5] = [
        Stage::Baseline,
        Stage::Relu,
        Stage::Softmax,
        Stage::Layernorm,
        Stage::Distill,
    ];

    /// The stage's name (`baseline`, `relu`, …).
    pub fn name(self) -> &'static str {
        match self {
            Stage::Baseline => "baseline",
            Stage::Relu => "relu",
            Stage::Softmax => "softmax",
            Stage::Layernorm => "layernorm",
            Stage::Distill => "distill",
        }
    }

    /// 1-based position in the pipeline.
    pub fn number(self) -> usize {
        Stage::ALL.iter().position(|s| *s == self).unwrap_or(0) + 1
    }

    /// Checkpoint directory name inside the run directory, e.g. `1-baseline`.
    pub fn dir_name(self) -> String {
        format!("{}-{}", self.number(), self.name())
    }

    /// The stage before this one.
    pub fn previous(self) -> Option<Stage> {
        Stage::ALL.get(self.number().checked_sub(2)?).copied()
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Stage {
    type Err = TrainError;

    fn from_str(s: &str) -> Result<Self> {
        Stage::ALL
            .into_iter()
            .find(|st| st.name() == s || st.dir_name() == s || st.number().to_string() == s)
            .ok_or_else(|| TrainError::UnknownStage(s.to_string()))
    }
}

/// One task fine-tuning run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FineTune {
    /// Passes over the (subsampled) training examples.
    pub epochs: usize,
    /// Peak learning rate of AdamW (linear warm-up, then linear decay to 0).
    pub lr: f64,
    /// Training examples drawn (without replacement, seeded) from the training set; 0: all.
    pub max_examples: usize,
}

impl Default for FineTune {
    fn default() -> Self {
        FineTune {
            epochs: 1,
            lr: 1e-4,
            max_examples: 8000,
        }
    }
}

/// Pre-training of THE-X's reciprocal network `T` on random attention rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReciprocalPretrain {
    /// Training sentences run through the model to measure the attention scores and the sums
    /// `s` that `T` will see.
    pub probe_examples: usize,
    /// Random Gaussian score rows generated (their mean, spread and length copy measured rows).
    pub rows: usize,
    /// Adam steps on the softmax MSE.
    pub steps: usize,
    /// Rows per Adam step.
    pub batch_rows: usize,
    /// Adam learning rate (THE-X: 1e-3).
    pub lr: f64,
    /// Keep training `T` during the task fine-tuning (THE-X freezes it).
    pub train_during_fine_tune: bool,
}

impl Default for ReciprocalPretrain {
    fn default() -> Self {
        ReciprocalPretrain {
            probe_examples: 256,
            rows: 20_000,
            steps: 2000,
            batch_rows: 256,
            lr: 1e-3,
            train_during_fine_tune: false,
        }
    }
}

/// Stage 3 settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SoftmaxStage {
    /// Pre-training of `T`.
    pub reciprocal: ReciprocalPretrain,
    /// Fine-tuning with the approximate softmax.
    pub fine_tune: FineTune,
}

/// Stage 4 settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LayerNormStage {
    /// Training sentences whose token states are used to fit each LayerNorm.
    pub examples: usize,
}

impl Default for LayerNormStage {
    fn default() -> Self {
        LayerNormStage { examples: 1024 }
    }
}

/// Stage 5 settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistillStage {
    /// The fine-tuning run.
    pub fine_tune: FineTune,
    /// Softmax temperature of the distillation term.
    pub temperature: f64,
    /// Weight of the distillation term; `1 - alpha` weighs the cross-entropy with the labels.
    pub alpha: f64,
}

impl Default for DistillStage {
    fn default() -> Self {
        DistillStage {
            fine_tune: FineTune::default(),
            temperature: 2.0,
            alpha: 0.5,
        }
    }
}

/// A whole conversion run. Every field has a default; JSON files may give any subset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Base Hugging Face BERT directory (e.g. the fetched MiniLM-L6).
    pub base_model: PathBuf,
    /// Training TSV (`sentence`, `label`).
    pub train_data: PathBuf,
    /// Evaluation TSV, scored after every stage (never trained on).
    pub dev_data: PathBuf,
    /// Run directory: one checkpoint directory per stage plus `report.json`.
    pub out_dir: PathBuf,
    /// Encoder layers K kept from the base model.
    pub layers: usize,
    /// Class names; label `i` of the data is logit `i`.
    pub labels: Vec<String>,
    /// Seed of subsampling, shuffling, the new classifier's initial weights and the reciprocal
    /// network's random rows: the same seed, data and settings give the same run.
    pub seed: u64,
    /// Training sequences are cut to this many tokens (including `[CLS]`, `[SEP]`).
    pub max_len: usize,
    /// Most sequences per training batch.
    pub batch_size: usize,
    /// Most padded tokens per training batch.
    pub max_batch_tokens: usize,
    /// Fraction of each fine-tuning's steps spent warming the learning rate up.
    pub warmup_fraction: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Log a line every this many optimizer steps.
    pub log_every: usize,
    /// Constants of the THE-X softmax (tunable, for sweeps).
    pub softmax: ThexSoftmax,
    /// Stage 1.
    pub baseline: FineTune,
    /// Stage 2.
    pub relu: FineTune,
    /// Stage 3.
    pub softmax_stage: SoftmaxStage,
    /// Stage 4.
    pub layernorm: LayerNormStage,
    /// Stage 5.
    pub distill: DistillStage,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            base_model: PathBuf::new(),
            train_data: PathBuf::new(),
            dev_data: PathBuf::new(),
            out_dir: PathBuf::from("runs/thex"),
            layers: 2,
            labels: vec!["negative".into(), "positive".into()],
            seed: 17,
            max_len: 64,
            batch_size: 32,
            max_batch_tokens: 2048,
            warmup_fraction: 0.06,
            weight_decay: 0.01,
            log_every: 25,
            softmax: ThexSoftmax::default(),
            baseline: FineTune::default(),
            relu: FineTune::default(),
            softmax_stage: SoftmaxStage::default(),
            layernorm: LayerNormStage::default(),
            distill: DistillStage::default(),
        }
    }
}

impl TrainConfig {
    /// Checks ranges (sizes positive, rates finite and positive, `alpha` in `[0, 1]`).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::InvalidConfig(m));
        for (name, v) in [
            ("layers", self.layers),
            ("batch_size", self.batch_size),
            ("log_every", self.log_every),
            (
                "softmax_stage.reciprocal.steps",
                self.softmax_stage.reciprocal.steps,
            ),
            (
                "softmax_stage.reciprocal.rows",
                self.softmax_stage.reciprocal.rows,
            ),
            (
                "softmax_stage.reciprocal.batch_rows",
                self.softmax_stage.reciprocal.batch_rows,
            ),
            (
                "softmax_stage.reciprocal.probe_examples",
                self.softmax_stage.reciprocal.probe_examples,
            ),
            ("layernorm.examples", self.layernorm.examples),
        ] {
            if v == 0 {
                return bad(format!("{name} must be positive"));
            }
        }
        if self.max_len < 2 {
            return bad(format!("max_len must be at least 2, got {}", self.max_len));
        }
        if self.max_batch_tokens < self.max_len {
            return bad(format!(
                "max_batch_tokens {} is below max_len {}",
                self.max_batch_tokens, self.max_len
            ));
        }
        if self.labels.len() < 2 {
            return bad(format!("need at least 2 labels, got {}", self.labels.len()));
        }
        for (name, ft) in [
            ("baseline", &self.baseline),
            ("relu", &self.relu),
            ("softmax_stage.fine_tune", &self.softmax_stage.fine_tune),
            ("distill.fine_tune", &self.distill.fine_tune),
        ] {
            if !(ft.lr.is_finite() && ft.lr > 0.0) {
                return bad(format!("{name}.lr must be positive, got {}", ft.lr));
            }
        }
        let r = &self.softmax_stage.reciprocal;
        if !(r.lr.is_finite() && r.lr > 0.0) {
            return bad(format!("reciprocal lr must be positive, got {}", r.lr));
        }
        if !(0.0..=1.0).contains(&self.distill.alpha) {
            return bad(format!(
                "distill.alpha must be in [0, 1], got {}",
                self.distill.alpha
            ));
        }
        if !(self.distill.temperature.is_finite() && self.distill.temperature > 0.0) {
            return bad(format!(
                "distill.temperature must be positive, got {}",
                self.distill.temperature
            ));
        }
        if !(0.0..1.0).contains(&self.warmup_fraction) || !self.weight_decay.is_finite() {
            return bad("warmup_fraction must be in [0, 1), weight_decay finite".into());
        }
        let mut thex = thex_model::ThexConfig::full_thex(None);
        thex.softmax = thex_model::SoftmaxConfig::Thex(self.softmax);
        thex.validate()?;
        Ok(())
    }

    /// The fine-tuning settings of a stage (`None` for `layernorm`, which only fits).
    pub fn fine_tune(&self, stage: Stage) -> Option<&FineTune> {
        match stage {
            Stage::Baseline => Some(&self.baseline),
            Stage::Relu => Some(&self.relu),
            Stage::Softmax => Some(&self.softmax_stage.fine_tune),
            Stage::Layernorm => None,
            Stage::Distill => Some(&self.distill.fine_tune),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_parse_and_order() {
        assert_eq!("softmax".parse::<Stage>().unwrap(), Stage::Softmax);
        assert_eq!("4-layernorm".parse::<Stage>().unwrap(), Stage::Layernorm);
        assert_eq!("5".parse::<Stage>().unwrap(), Stage::Distill);
        assert!(matches!(
            "gelu".parse::<Stage>(),
            Err(TrainError::UnknownStage(s)) if s == "gelu"
        ));
        assert_eq!(Stage::Baseline.previous(), None);
        assert_eq!(Stage::Distill.previous(), Some(Stage::Layernorm));
        assert_eq!(Stage::Relu.dir_name(), "2-relu");
    }

    #[test]
    fn partial_json_fills_defaults_and_typos_are_rejected() {
        let cfg: TrainConfig =
            serde_json::from_str(r#"{"layers": 3, "baseline": {"lr": 5e-5}}"#).unwrap();
        assert_eq!(cfg.layers, 3);
        assert_eq!(cfg.baseline.lr, 5e-5);
        assert_eq!(cfg.baseline.epochs, 1);
        assert_eq!(cfg.softmax.power, 3);
        cfg.validate().unwrap();
        assert!(serde_json::from_str::<TrainConfig>(r#"{"layer": 3}"#).is_err());
    }

    #[test]
    fn validation_names_the_bad_field() {
        let mut cfg = TrainConfig::default();
        cfg.distill.alpha = 1.5;
        assert!(cfg.validate().unwrap_err().to_string().contains("alpha"));
        let mut cfg = TrainConfig::default();
        cfg.relu.lr = f64::NAN;
        assert!(cfg.validate().unwrap_err().to_string().contains("relu.lr"));
        let mut cfg = TrainConfig::default();
        cfg.softmax.power = 0;
        assert!(cfg.validate().is_err());
        let cfg = TrainConfig {
            layers: 0,
            ..Default::default()
        };
        assert!(cfg.validate().unwrap_err().to_string().contains("layers"));
    }
}
