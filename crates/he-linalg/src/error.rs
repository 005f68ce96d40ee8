//! Error type of the crate.

/// Errors of `he-linalg`. Every variant carries the numbers needed to understand it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Two operands are at different levels.
    #[error("level mismatch: {left} vs {right}")]
    LevelMismatch {
        /// Level of the left operand.
        left: usize,
        /// Level of the right operand.
        right: usize,
    },
    /// Two operands carry different scales.
    #[error("scale mismatch: 2^{:.4} vs 2^{:.4}", left.log2(), right.log2())]
    ScaleMismatch {
        /// Scale of the left operand.
        left: f64,
        /// Scale of the right operand.
        right: f64,
    },
    /// An operation needs more levels than the operand has left.
    #[error("not enough levels: need {needed}, have {available}")]
    NotEnoughLevels {
        /// Levels needed.
        needed: usize,
        /// Levels available.
        available: usize,
    },
    /// A level above the parameter set's maximum was requested.
    #[error("level {level} exceeds the maximum level {max}")]
    LevelTooHigh {
        /// Requested level.
        level: usize,
        /// Maximum level of the parameters.
        max: usize,
    },
    /// More values than slots.
    #[error("{got} values do not fit in {slots} slots")]
    TooManyValues {
        /// Number of values given.
        got: usize,
        /// Number of slots.
        slots: usize,
    },
    /// A dimension does not match what the operation expects.
    #[error("{what}: expected {expected}, got {got}")]
    DimensionMismatch {
        /// What was being checked.
        what: &'static str,
        /// Expected size.
        expected: usize,
        /// Actual size.
        got: usize,
    },
    /// Two layouts that must agree do not.
    #[error("layout mismatch: {what}")]
    LayoutMismatch {
        /// What differs.
        what: &'static str,
    },
    /// A ciphertext of the wrong degree (e.g. rotating a non-relinearized product).
    #[error("ciphertext degree {got} not allowed here (max {max})")]
    Degree {
        /// Degree of the ciphertext (number of components minus one).
        got: usize,
        /// Highest degree accepted.
        max: usize,
    },
    /// A parameter value is invalid.
    #[error("invalid {name}: {value}")]
    InvalidParameter {
        /// Name of the parameter.
        name: &'static str,
        /// Offending value, printed.
        value: String,
    },
    /// The requested configuration is not supported by the packing.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// An error of the CKKS layer.
    #[error("ckks: {0}")]
    Ckks(#[from] ckks::Error),
    /// A client-side operation was called on a backend without a secret key.
    #[error("this backend holds no secret key (server side)")]
    NoSecretKey,
}

/// Result alias of the crate.
pub type Result<T> = std::result::Result<T, Error>;
