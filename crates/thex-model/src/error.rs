//! The error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong while loading, running or saving a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A file the model directory must contain is absent.
    #[error("missing file {path}")]
    MissingFile {
        /// The path that was looked for.
        path: PathBuf,
    },
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
    /// The model configuration is inconsistent.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// `hidden_size` is not a multiple of `num_attention_heads`.
    #[error("hidden_size {hidden_size} is not divisible by num_attention_heads {heads}")]
    HeadsDoNotDivideHidden {
        /// `hidden_size` from the config.
        hidden_size: usize,
        /// `num_attention_heads` from the config.
        heads: usize,
    },
    /// The configured activation function is not one this crate implements.
    #[error("unsupported hidden_act {0:?} (supported: gelu, gelu_new, gelu_pytorch_tanh, relu)")]
    UnsupportedActivation(String),
    /// Only absolute position embeddings are implemented.
    #[error("unsupported position_embedding_type {0:?} (supported: absolute)")]
    UnsupportedPositionEmbedding(String),
    /// A truncation to more layers than the checkpoint has, or to none.
    #[error("cannot keep {requested} layers of a model with {available}")]
    InvalidLayerCount {
        /// Layers asked for.
        requested: usize,
        /// Layers the checkpoint has.
        available: usize,
    },
    /// A THE-X approximation setting is out of range.
    #[error("invalid THE-X configuration: {0}")]
    InvalidThexConfig(String),
    /// A tensor the model needs is not in the checkpoint.
    #[error("missing tensor {name}")]
    MissingTensor {
        /// Tensor name (without any `bert.` prefix).
        name: String,
    },
    /// A tensor in the checkpoint has the wrong shape.
    #[error("tensor {name} has shape {found:?}, expected {expected:?}")]
    WrongShape {
        /// Tensor name.
        name: String,
        /// Shape the config implies.
        expected: Vec<usize>,
        /// Shape found in the checkpoint.
        found: Vec<usize>,
    },
    /// The tokenizer could not be loaded or failed to encode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A token id is not below `vocab_size`.
    #[error("token id {id} out of range for vocabulary of {vocab_size}")]
    TokenOutOfRange {
        /// The id.
        id: u32,
        /// `vocab_size` of the model.
        vocab_size: usize,
    },
    /// A sequence is longer than the position embeddings allow, or empty.
    #[error("sequence length {len} not in 1..={max}")]
    BadSequenceLength {
        /// Length given.
        len: usize,
        /// Maximum supported length.
        max: usize,
    },
    /// A batch must contain at least one sequence.
    #[error("empty batch")]
    EmptyBatch,
    /// `predict` needs a model with a classification head.
    #[error("model has no classification head (thex.json has no \"head\")")]
    NoClassifierHead,
    /// Saving needs the tensor record that [`crate::ThexModel::from_tensors`] keeps.
    #[error("model was built without a tensor record; build it with ThexModel::from_tensors")]
    NoRecordedParams,
    /// An error from the tensor library.
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Result alias for this crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

impl From<thex_tokenizer::TokenizerError> for ModelError {
    /// A missing file stays [`ModelError::MissingFile`]; everything else is
    /// [`ModelError::Tokenizer`] with the tokenizer's message.
    fn from(e: thex_tokenizer::TokenizerError) -> Self {
        match e {
            thex_tokenizer::TokenizerError::MissingFile { path } => {
                ModelError::MissingFile { path }
            }
            e => ModelError::Tokenizer(e.to_string()),
        }
    }
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            ModelError::MissingFile { path }
        } else {
            ModelError::Io { path, source }
        }
    }
}
