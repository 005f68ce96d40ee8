//! The error type of this crate.

use std::path::PathBuf;

use crate::data::DataError;

/// Everything that can go wrong while training, evaluating or installing a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// Loading, running or saving a model failed.
    #[error(transparent)]
    Model(#[from] thex_model::ModelError),
    /// Reading a dataset failed.
    #[error(transparent)]
    Data(#[from] DataError),
    /// A tensor operation failed.
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    /// Reading or writing a file failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A JSON file could not be parsed or written.
    #[error("invalid JSON in {path}: {source}")]
    Json {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// A training setting is out of range.
    #[error("invalid training configuration: {0}")]
    InvalidConfig(String),
    /// A dataset has no examples (after subsampling).
    #[error("dataset {path} has no examples")]
    EmptyDataset {
        /// The dataset file.
        path: PathBuf,
    },
    /// A label is not one of the model's classes.
    #[error("label {label} out of range: the model has {labels} classes")]
    LabelOutOfRange {
        /// The label found in the data.
        label: u32,
        /// Number of classes of the model.
        labels: usize,
    },
    /// The model to evaluate or distil from has no classification head.
    #[error("model {path} has no classification head")]
    NoHead {
        /// The model directory.
        path: PathBuf,
    },
    /// The loss became NaN or infinite.
    #[error("stage {stage}: loss is {loss} at step {step} (diverged; lower the learning rate)")]
    Diverged {
        /// Stage name.
        stage: String,
        /// Optimizer step (0-based).
        step: usize,
        /// The non-finite loss.
        loss: f32,
    },
    /// An unknown stage name.
    #[error("unknown stage {0:?} (stages: baseline, relu, softmax, layernorm, distill)")]
    UnknownStage(String),
    /// A stage needs the checkpoint of an earlier one, which is missing.
    #[error("stage {stage} needs the checkpoint of stage {needs} in {path}; run it first")]
    MissingStage {
        /// The stage to run.
        stage: String,
        /// The stage it depends on.
        needs: String,
        /// Where the checkpoint was looked for.
        path: PathBuf,
    },
    /// The base model is not the one the packaged model was trained on.
    #[error("base model {path}: sha256 {actual}, but the packaged model needs {expected}")]
    BaseMismatch {
        /// The base weights file.
        path: PathBuf,
        /// sha256 recorded in the manifest.
        expected: String,
        /// sha256 of the file found.
        actual: String,
    },
    /// A packaged file does not match its manifest entry.
    #[error("{path}: sha256 {actual} does not match the manifest ({expected})")]
    CorruptPackage {
        /// The file.
        path: PathBuf,
        /// sha256 recorded in the manifest.
        expected: String,
        /// sha256 of the file found.
        actual: String,
    },
}

/// Result alias for this crate.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;

impl TrainError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Reads a JSON file into `T`.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| TrainError::Json {
        path: path.into(),
        source,
    })
}

/// Writes `value` as pretty JSON (with a final newline).
pub(crate) fn write_json<T: serde::Serialize>(path: &std::path::Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|source| TrainError::Json {
        path: path.into(),
        source,
    })?;
    std::fs::write(path, text + "\n").map_err(|e| TrainError::io(path, e))
}
