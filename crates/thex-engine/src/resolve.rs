//! What a configuration resolves to: the [`EngineParams`] a user writes stay as written; the
//! calibration, the CKKS parameters and each bucket's attention masking that compiling derives
//! from them form a [`ResolvedPlan`], which [`crate::ServerModel::compile`] records, which can
//! be saved as JSON and which [`crate::ServerModel::compile_plan`] takes back without
//! calibrating again. Each bucket's [`thex_client::Schedule`] follows from the plan.

use std::collections::BTreeMap;

use ckks::ParametersLiteral;
use he_linalg::attention::AvMasking;
use serde::{Deserialize, Serialize};
use thex_client::{BucketLayouts, ModelDims};

use crate::error::{EngineError, Result};
use crate::params::EngineParams;

/// Format version of a saved [`ResolvedPlan`].
pub const PLAN_VERSION: u32 = 2;

/// The largest value the client decrypts, measured on the plaintext model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Largest absolute value of every decrypted ciphertext on the calibration inputs.
    pub max_decrypted: f64,
}

/// Everything compiling resolved from an [`EngineParams`]: pass it to
/// [`crate::ServerModel::compile_plan`] to compile the same program again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedPlan {
    /// [`PLAN_VERSION`].
    pub version: u32,
    /// The configuration as written (buckets sorted).
    pub config: EngineParams,
    /// The shapes of the model it was resolved for.
    pub dims: ModelDims,
    /// The measurement the request scale was fitted to (`None`: compiled without one, at the
    /// configured scales).
    pub calibration: Option<Calibration>,
    /// log2 of the scale of every ciphertext the client decrypts.
    pub request_log_scale: u32,
    /// Levels above the pipeline depth.
    pub extra_levels: usize,
    /// The CKKS parameters (checked for 128-bit security when compiled).
    pub params: ParametersLiteral,
    /// How attention · V is masked, per bucket.
    pub attention_values: BTreeMap<usize, AvMasking>,
}

impl ResolvedPlan {
    /// Resolves `config` for a model of shape `dims`: `request_log_scale` and `extra_levels`
    /// as calibrated (or as configured), then the smallest secure ring for the largest bucket
    /// and each bucket's masking.
    pub(crate) fn new(
        config: &EngineParams,
        dims: &ModelDims,
        calibration: Option<Calibration>,
        request_log_scale: u32,
        extra_levels: usize,
    ) -> Result<Self> {
        config.validate()?;
        let mut config = config.clone();
        config.buckets.sort_unstable();
        let effective = EngineParams {
            extra_levels,
            ..config.clone()
        };
        let slots = config
            .buckets
            .iter()
            .map(|&b| BucketLayouts::slots_needed(dims, b))
            .max()
            .unwrap_or(1);
        let params = effective.choose(slots)?;
        let mut attention_values = BTreeMap::new();
        for &b in &config.buckets {
            let layouts = BucketLayouts::new(dims, params.max_slots(), b)?;
            let masking = config
                .attention_values
                .unwrap_or_else(|| auto_masking(dims, &layouts));
            attention_values.insert(b, masking);
        }
        Ok(Self {
            version: PLAN_VERSION,
            config,
            dims: dims.clone(),
            calibration,
            request_log_scale,
            extra_levels,
            params: effective.literal(params.log_n()),
            attention_values,
        })
    }

    /// The same calibration for a subset of the buckets, with the ring and maskings chosen
    /// again for it (a smaller largest bucket may fit a smaller ring).
    pub fn for_buckets(&self, buckets: &[usize]) -> Result<Self> {
        if let Some(b) = buckets
            .iter()
            .find(|b| !self.attention_values.contains_key(b))
        {
            return Err(EngineError::Config(format!(
                "bucket {b} is not one of the plan's {:?}",
                self.config.buckets
            )));
        }
        let config = EngineParams {
            buckets: buckets.to_vec(),
            ..self.config.clone()
        };
        Self::new(
            &config,
            &self.dims,
            self.calibration,
            self.request_log_scale,
            self.extra_levels,
        )
    }

    /// Checks that the plan fits a model of shape `dims` and is complete.
    pub(crate) fn check(&self, dims: &ModelDims) -> Result<()> {
        let bad = |m: String| Err(EngineError::Config(m));
        if self.version != PLAN_VERSION {
            return bad(format!(
                "plan format version {} (this build reads {PLAN_VERSION})",
                self.version
            ));
        }
        self.config.validate()?;
        if &self.dims != dims {
            return bad("the plan was resolved for a model of another shape".into());
        }
        // The configured buckets ascending, as resolving leaves them, and one masking each.
        let buckets: Vec<usize> = self.attention_values.keys().copied().collect();
        if buckets != self.config.buckets {
            return bad(format!(
                "the plan's maskings cover buckets {buckets:?}, its configuration lists {:?} \
                 (ascending)",
                self.config.buckets
            ));
        }
        if !(20..=self.config.log_scale).contains(&self.request_log_scale) {
            return bad(format!(
                "request_log_scale {} (need 20..=log_scale {})",
                self.request_log_scale, self.config.log_scale
            ));
        }
        Ok(())
    }

    /// The scale of the ciphertexts the client decrypts.
    pub fn request_scale(&self) -> f64 {
        2f64.powi(self.request_log_scale as i32)
    }

    /// The plan as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Reads a plan saved by [`ResolvedPlan::to_json`].
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| EngineError::Config(format!("plan: {e}")))
    }
}

/// The attention · V masking a bucket gets when [`EngineParams::attention_values`] is unset.
/// [`AvMasking::ValueTokens`] halves A·V's broadcast products per layer (`n'·min(g, d_h)`
/// with [`AvMasking::WeightRows`], `g` feature groups per ciphertext) and its weight
/// rotations, and takes the Q/K/V projections and the FFN output one prime higher (their dense
/// products per slot: `(4h² + 2h·f)·n'/slots` per layer with the other maps). It is picked
/// when the first is at least a quarter of the second: measured (docs/benchmarks.md)
/// BERT-tiny at 128 tokens (ratio 1.3) faster with it, the default model at 16 tokens (0.04)
/// the same, at 64 tokens (0.009) slower.
fn auto_masking(dims: &ModelDims, l: &BucketLayouts) -> AvMasking {
    let (_, g) = l.heads.head_groups().unwrap_or((1, 1));
    let np = l.heads.row_stride();
    let broadcast = np * g.min(dims.head_dim);
    let (h, f) = (dims.hidden, dims.ffn);
    let dense = (4 * h * h + 2 * h * f) * np / l.hidden.slots();
    if 4 * broadcast >= dense {
        AvMasking::ValueTokens
    } else {
        AvMasking::WeightRows
    }
}
