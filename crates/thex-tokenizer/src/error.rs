//! The error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong while loading a tokenizer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenizerError {
    /// A file that was asked for does not exist.
    #[error("missing file {path}")]
    MissingFile {
        /// The path that was looked for.
        path: PathBuf,
    },
    /// Reading a file failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An input is larger than [`crate::MAX_INPUT_BYTES`].
    #[error("{what} is {size} bytes, more than the limit of {limit}")]
    TooLarge {
        /// The input concerned (a path or a description).
        what: String,
        /// Its size in bytes.
        size: u64,
        /// The limit in bytes.
        limit: u64,
    },
    /// An input is not valid UTF-8.
    #[error("{what} is not valid UTF-8")]
    NotUtf8 {
        /// The input concerned.
        what: String,
    },
    /// A JSON input could not be parsed, or a part of it has the wrong shape.
    #[error("invalid JSON in {what}: {source}")]
    Json {
        /// The input or the part of it concerned.
        what: String,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// A well-formed `tokenizer.json` that does not describe a BERT WordPiece tokenizer.
    #[error("not a BERT WordPiece tokenizer: {0}")]
    NotBert(String),
    /// A token the tokenizer needs is not in the vocabulary.
    #[error("{token} is missing from the vocabulary")]
    MissingToken {
        /// The token.
        token: String,
    },
    /// An added token that the normalizer turns into nothing (it could never be matched).
    #[error("added token {content:?} normalizes to an empty string")]
    EmptyAddedToken {
        /// The token's content.
        content: String,
    },
    /// More tokens than 32-bit ids can number.
    #[error("too many tokens for 32-bit ids")]
    TooManyTokens,
    /// `max_len` cannot hold `[CLS]` and `[SEP]`.
    #[error("max_len {0} is below 2 ([CLS] and [SEP] need two positions)")]
    MaxLenTooSmall(usize),
}

/// Result alias for this crate.
pub type Result<T, E = TokenizerError> = std::result::Result<T, E>;
