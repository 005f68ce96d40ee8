//! The crate's error type, and the class of each error (who caused it).

/// Everything that can go wrong on the client or in the protocol's shared vocabulary.
/// Variants carry the offending numbers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting or model shape the protocol cannot run (a configuration error).
    #[error("configuration: {0}")]
    Config(String),
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
    /// This client session refused a server message earlier and sends nothing more.
    #[error(
        "this client session refused a server message ({reason}) and answers nothing more: start a new session with new keys"
    )]
    Refused {
        /// Why the first message was refused.
        reason: String,
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
    /// A reply does not carry the nonce of the pending request (a replayed or misrouted reply).
    #[error("the reply does not answer the pending round {round} (nonce mismatch)")]
    StaleReply {
        /// The pending round.
        round: u32,
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
    /// A message does not have one of the exact sizes the protocol allows at this point.
    #[error("{what} of {got} bytes: expected {}", sizes(expected))]
    WrongSize {
        /// Which message.
        what: &'static str,
        /// Its size.
        got: usize,
        /// The sizes allowed.
        expected: Vec<usize>,
    },
    /// A message or bundle is malformed.
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
    /// A broken invariant of thex itself (a bug, not bad input or configuration).
    #[error("internal error (a bug in thex): {0}")]
    Internal(String),
    /// Error from the CKKS layer (including deserialization of ciphertexts and keys).
    #[error("ckks: {0}")]
    Ckks(#[from] ckks::Error),
    /// Error from the packed linear algebra layer.
    #[error("he-linalg: {0}")]
    Linalg(#[from] he_linalg::Error),
}

/// Who caused an error: what a server answers (4xx or 5xx) and what a user should fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Malformed or inconsistent input from the peer.
    BadInput,
    /// A well-formed message at the wrong moment of the protocol.
    OutOfOrder,
    /// A message larger than a limit.
    TooLarge,
    /// A setting or model the protocol cannot run.
    Config,
    /// A bug.
    Internal,
}

impl Error {
    /// The class of this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Config(_) | Error::NotEnoughLevels { .. } => ErrorClass::Config,
            Error::UnexpectedMessage { .. }
            | Error::WrongRound { .. }
            | Error::StaleReply { .. }
            | Error::Refused { .. } => ErrorClass::OutOfOrder,
            Error::LimitExceeded { .. } => ErrorClass::TooLarge,
            Error::WrongSize { got, expected, .. } if expected.iter().all(|e| got > e) => {
                ErrorClass::TooLarge
            }
            Error::Internal(_) => ErrorClass::Internal,
            Error::SequenceTooLong { .. }
            | Error::UnknownBucket { .. }
            | Error::WrongCount { .. }
            | Error::WrongItem { .. }
            | Error::BadCiphertext { .. }
            | Error::OutOfRange { .. }
            | Error::WrongSize { .. }
            | Error::Malformed(_)
            | Error::Ckks(_) => ErrorClass::BadInput,
            // Shapes are checked before the linear algebra runs: its errors are bugs.
            Error::Linalg(_) => ErrorClass::Internal,
        }
    }
}

/// `1234 bytes` or `one of [12, 34] bytes`.
fn sizes(expected: &[usize]) -> String {
    match expected {
        [one] => format!("{one} bytes"),
        many => format!("one of {many:?} bytes"),
    }
}

/// Result alias of the crate.
pub type Result<T> = std::result::Result<T, Error>;
