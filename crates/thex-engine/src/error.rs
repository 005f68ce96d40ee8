//! The crate's error type.

use thex_client::ErrorClass;

/// Everything that can go wrong in the engine. Variants carry the offending numbers;
/// [`EngineError::class`] says who caused it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The model lacks something the encrypted program needs (or has an unsupported setting).
    #[error("unsupported model: {0}")]
    UnsupportedModel(String),
    /// A named tensor is missing from the model's parameters.
    #[error("model tensor {name} is missing (build the model with ThexModel::from_tensors)")]
    MissingTensor {
        /// Tensor name.
        name: String,
    },
    /// A tensor has an unexpected shape.
    #[error("model tensor {name} has shape {got:?}, expected {expected:?}")]
    TensorShape {
        /// Tensor name.
        name: String,
        /// Expected shape.
        expected: Vec<usize>,
        /// Actual shape.
        got: Vec<usize>,
    },
    /// No 128-bit secure parameter set fits the program.
    #[error("no secure CKKS parameters for depth {depth} with {slots_needed} slots: {reason}")]
    NoParameters {
        /// Levels needed.
        depth: usize,
        /// Slots needed by the largest layout.
        slots_needed: usize,
        /// Why the candidates failed.
        reason: String,
    },
    /// The evaluation keys lack rotation keys the program needs.
    #[error("evaluation keys lack {} rotation keys the program needs (e.g. step {})", missing.len(), missing.first().copied().unwrap_or(0))]
    MissingRotationKeys {
        /// Missing left-rotation steps.
        missing: Vec<usize>,
    },
    /// A setting the engine cannot compile (buckets, bit sizes, a tokenizer that does not
    /// fit the model).
    #[error("configuration: {0}")]
    Config(String),
    /// A broken invariant of the engine itself (a bug, not bad input or configuration).
    #[error("internal error (a bug in thex-engine): {0}")]
    Internal(String),
    /// A protocol error: a message or key from the client that does not follow the schedule,
    /// or a schedule the model cannot satisfy.
    #[error(transparent)]
    Protocol(#[from] thex_client::Error),
    /// Error from the CKKS layer (including deserialization of ciphertexts and keys).
    #[error("ckks: {0}")]
    Ckks(#[from] ckks::Error),
    /// Error from the packed linear algebra layer.
    #[error("he-linalg: {0}")]
    Linalg(#[from] he_linalg::Error),
    /// Error from the model layer (tokenizer, tensors).
    #[error("model: {0}")]
    Model(#[from] thex_model::ModelError),
}

impl From<candle_core::Error> for EngineError {
    fn from(e: candle_core::Error) -> Self {
        EngineError::Model(thex_model::ModelError::from(e))
    }
}

impl EngineError {
    /// Who caused this error: bad input from the client, a message out of order, a limit, the
    /// configuration, or a bug.
    pub fn class(&self) -> ErrorClass {
        match self {
            EngineError::Protocol(e) => e.class(),
            EngineError::MissingRotationKeys { .. } | EngineError::Ckks(_) => ErrorClass::BadInput,
            EngineError::Internal(_) | EngineError::Linalg(_) => ErrorClass::Internal,
            EngineError::UnsupportedModel(_)
            | EngineError::MissingTensor { .. }
            | EngineError::TensorShape { .. }
            | EngineError::NoParameters { .. }
            | EngineError::Config(_)
            | EngineError::Model(_) => ErrorClass::Config,
        }
    }
}

/// Result alias of the crate.
pub type Result<T> = std::result::Result<T, EngineError>;
