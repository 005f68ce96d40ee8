//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong on either side of the network protocol.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The server answered with an error status and a JSON `{"error": ...}` body.
    #[error("server answered {status} to {what}: {message}")]
    Server {
        /// What the client asked for.
        what: String,
        /// HTTP status code.
        status: u16,
        /// The server's error message.
        message: String,
    },
    /// The server does not know the session: it expired after the idle timeout, was closed,
    /// or the server restarted. Open a new session with [`crate::Client::connect`].
    #[error(
        "unknown session {session}… (expired after the server's idle timeout, closed, or the server restarted): reconnect to open a new session"
    )]
    UnknownSession {
        /// The first hex characters of the session id.
        session: String,
    },
    /// The connection failed or timed out.
    #[error("HTTP transport to {url}: {message}")]
    Transport {
        /// The URL requested.
        url: String,
        /// What failed.
        message: String,
    },
    /// The server's answer does not follow the protocol (missing header, wrong kind of step).
    #[error("protocol: {0}")]
    Protocol(String),
    /// A downloaded or cached file does not have the hash the server announced.
    #[error("{what} has SHA-256 {got}, the server announced {expected}")]
    HashMismatch {
        /// Which file.
        what: &'static str,
        /// Announced hash.
        expected: String,
        /// Hash of the bytes received.
        got: String,
    },
    /// A secret-key file cannot be used.
    #[error("secret key file {path}: {reason}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A setting cannot be used (tokens, TLS files, limits).
    #[error("configuration: {0}")]
    Config(String),
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The model directory cannot be served.
    #[cfg(feature = "server")]
    #[error("model: {0}")]
    Model(#[from] thex_model::ModelError),
    /// Error from the server's engine (compiling the model, running a step).
    #[cfg(feature = "server")]
    #[error("engine: {0}")]
    Engine(#[from] thex_engine::EngineError),
    /// Error of the client session or of a message (malformed, out of order, out of range).
    #[error(transparent)]
    Client(#[from] thex_client::Error),
    /// The server's tokenizer file cannot be used.
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] thex_client::TokenizerError),
    /// Error from the CKKS layer (secret-key files).
    #[error("ckks: {0}")]
    Ckks(#[from] ckks::Error),
}

impl NetError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        NetError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result alias of the crate.
pub type Result<T> = std::result::Result<T, NetError>;
