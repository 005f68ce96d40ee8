//! Training side of thex: GLUE-style datasets, evaluation, and the THE-X conversion pipeline
//! that turns a pre-trained BERT into an HE-friendly classifier.
//!
//! - [`data`]: TSV datasets; [`eval`]: accuracy / per-label / Matthews correlation
//!   ([`evaluate`], [`evaluate_dir`] — `thex eval`).
//! - [`pipeline`]: the five named, resumable stages ([`Stage`]: baseline → relu → softmax →
//!   layernorm → distill) configured by one serialisable [`TrainConfig`] ([`run_pipeline`] —
//!   `thex train`).
//! - [`train`]: length-bucketed fine-tuning with cross-entropy or distillation;
//!   [`reciprocal`]: measuring attention sums and pre-training `T`; [`layernorm`]: LN-distill.
//! - [`install`]: compact packages of trained models and their installation over the base
//!   model ([`install_model`] — what `thex model fetch --name sst2-thex` runs).

pub mod config;
pub mod data;
pub mod error;
pub mod eval;
pub mod install;
pub mod layernorm;
pub mod pipeline;
pub mod reciprocal;
pub mod train;

pub use config::{
    DistillStage, FineTune, LayerNormStage, ReciprocalPretrain, SoftmaxStage, Stage, TrainConfig,
};
pub use data::{Dataset, Example};
pub use error::{Result, TrainError};
pub use eval::{EvalReport, LabelStats, evaluate, evaluate_dir, matthews};
pub use install::{Manifest, install_model, package_model};
pub use pipeline::{RunOptions, RunReport, StageReport, run_pipeline, stage_dir, stage_report};
