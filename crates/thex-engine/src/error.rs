//! The crate's error type.

/// Everything that can go wrong in the engine. Variants carry the offending numbers.
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
    /// The parameters give fewer levels than the program needs between two client rounds.
    #[error("the program needs {needed} levels between client rounds, parameters have {available}")]
    NotEnoughLevels {
        /// Levels needed.
        needed: usize,
        /// Levels available (maximum level).
        available: usize,
    },
    /// The sequence is longer than the largest length bucket.
    #[error("{tokens} tokens exceed the largest length bucket {max}")]
    SequenceTooLong {
        /// Tokens of the input.
        tokens: usize,
        /// Largest bucket.
        max: usize,
    },
    /// A bucket the server was not compiled for.
    #[error("length bucket {bucket} is not one of {available:?}")]
    UnknownBucket {
        /// Requested bucket.
        bucket: usize,
        /// Compiled buckets.
        available: Vec<usize>,
    },
    /// A message arrived in a state that does not expect it.
    #[error("protocol state: {got} is not allowed while {state}")]
    UnexpectedMessage {
        /// What arrived.
        got: &'static str,
        /// The current state.
        state: String,
    },
    /// A reply answers another round than the pending one.
    #[error("reply for round {got}, but round {expected} is pending")]
    WrongRound {
        /// Round of the reply.
        got: u32,
        /// Pending round.
        expected: u32,
    },
    /// A message carries the wrong number of items or ciphertexts.
    #[error("{what}: expected {expected}, got {got}")]
    WrongCount {
        /// What was counted.
        what: String,
        /// Expected count.
        expected: usize,
        /// Actual count.
        got: usize,
    },
    /// A request item is not the kind the schedule expects at this point.
    #[error("request item {index}: expected {expected}, got {got}")]
    WrongItem {
        /// Position in the request.
        index: usize,
        /// Expected kind.
        expected: String,
        /// Kind found.
        got: String,
    },
    /// A ciphertext has the wrong level, scale, degree or slot count.
    #[error("ciphertext {index} of {what}: {problem}")]
    BadCiphertext {
        /// Which message part.
        what: String,
        /// Index of the ciphertext.
        index: usize,
        /// What is wrong, with numbers.
        problem: String,
    },
    /// The evaluation keys lack rotation keys the program needs.
    #[error("evaluation keys lack {} rotation keys the program needs (e.g. step {})", missing.len(), missing.first().copied().unwrap_or(0))]
    MissingRotationKeys {
        /// Missing left-rotation steps.
        missing: Vec<usize>,
    },
    /// A decrypted value is too large for the modulus it was decrypted under: the result would
    /// be wrapped around (garbage), so it is refused.
    #[error(
        "decrypted value {value:.3e} exceeds the headroom {limit:.3e} of level {level} (values \
         near it wrap around the modulus; compile with a larger log_q0 or extra_levels)"
    )]
    OutOfRange {
        /// The largest decrypted magnitude.
        value: f64,
        /// The largest magnitude that decrypts reliably at that level.
        limit: f64,
        /// The ciphertext's level.
        level: usize,
    },
    /// A message is malformed or exceeds a limit.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A message exceeds a size limit.
    #[error("{what} = {value} exceeds the limit {limit}")]
    LimitExceeded {
        /// Which quantity.
        what: &'static str,
        /// Its value.
        value: u64,
        /// The limit.
        limit: u64,
    },
    /// A broken invariant of the engine itself (a bug, not bad input or configuration).
    #[error("internal error (a bug in thex-engine): {0}")]
    Internal(String),
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

/// Result alias of the crate.
pub type Result<T> = std::result::Result<T, EngineError>;
