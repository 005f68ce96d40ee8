//! The HTTP interface shared by server and client: routes, headers and JSON documents.
//!
//! | method | path | body in | body out |
//! |---|---|---|---|
//! | `GET` | `/v1/info` | | [`ServerInfo`] (JSON) |
//! | `GET` | `/v1/bundle` | | the client bundle ([`thex_client::ClientBundle::to_bytes`]) |
//! | `GET` | `/v1/tokenizer` | | `tokenizer.json` or `vocab.txt` (see [`TokenizerInfo`]) |
//! | `POST` | `/v1/sessions?buckets=16,32` | [`thex_client::EvaluationKeys`] | [`SessionCreated`] (JSON) |
//! | `POST` | `/v1/sessions/{id}/infer` | [`thex_client::EncryptedInput`] | the next step |
//! | `POST` | `/v1/sessions/{id}/round` | [`thex_client::ReluReply`] | the next step |
//! | `DELETE` | `/v1/sessions/{id}` | | |
//! | `GET` | `/v1/stats` | | [`ServerStats`] (JSON) |
//!
//! A step ([`thex_client::Step`]) is a [`thex_client::ReluRequest`], whose reply must echo its
//! round and random nonce, or the [`thex_client::EncryptedLogits`]; the message's type tag
//! says which. Binary bodies are [`thex_client::Message`]s; every answer with a step carries
//! [`SERVER_SECONDS_HEADER`]; errors are `{"error": "..."}` with a 4xx/5xx status.

use serde::{Deserialize, Serialize};

/// The routes of the table above: the server registers them, the client requests them.
pub mod routes {
    /// `GET`: the [`ServerInfo`](super::ServerInfo).
    pub const INFO: &str = "/v1/info";
    /// `GET`: server statistics.
    pub const STATS: &str = "/v1/stats";
    /// `GET`: the client bundle.
    pub const BUNDLE: &str = "/v1/bundle";
    /// `GET`: the tokenizer file.
    pub const TOKENIZER: &str = "/v1/tokenizer";
    /// `POST`: a new session (`?buckets=…`).
    pub const SESSIONS: &str = "/v1/sessions";
    /// `DELETE`: a session (pattern with `{id}`).
    pub const SESSION: &str = "/v1/sessions/{id}";
    /// `POST`: an encrypted input (pattern with `{id}`).
    pub const INFER: &str = "/v1/sessions/{id}/infer";
    /// `POST`: a round reply (pattern with `{id}`).
    pub const ROUND: &str = "/v1/sessions/{id}/round";

    /// A route pattern with the session id filled in.
    pub fn with_id(pattern: &str, id: &str) -> String {
        pattern.replace("{id}", id)
    }
}
/// Response header: SHA-256 (hex) of the body of `GET /v1/bundle` or `GET /v1/tokenizer`.
pub const SHA256_HEADER: &str = "x-thex-sha256";
/// Response header of a step: server compute time in seconds (parsing, HE, serializing).
pub const SERVER_SECONDS_HEADER: &str = "x-thex-server-seconds";

/// What `GET /v1/info` tells a client before it downloads anything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// Protocol name and version, [`PROTOCOL`].
    pub protocol: String,
    /// SHA-256 (hex) of the client bundle.
    pub bundle_sha256: String,
    /// Size of the client bundle in bytes.
    pub bundle_bytes: usize,
    /// The tokenizer the client must use.
    pub tokenizer: TokenizerInfo,
    /// Compiled length buckets.
    pub buckets: Vec<usize>,
    /// Client rounds per inference.
    pub rounds: usize,
    /// CKKS parameter id (hex).
    pub params_id: String,
    /// Largest accepted request body in bytes.
    pub max_body_bytes: usize,
    /// Sessions without a request for this long are dropped (seconds).
    pub idle_timeout_s: f64,
    /// Sessions whose client leaves a round unanswered for this long are dropped (seconds).
    pub round_timeout_s: f64,
    /// The server speaks TLS.
    #[serde(default)]
    pub tls: bool,
    /// Every route but `/v1/info` and `/v1/bundle` needs an API token
    /// (`Authorization: Bearer TOKEN`).
    #[serde(default)]
    pub tokens: bool,
}

/// The tokenizer file a server distributes with its bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizerInfo {
    /// File kind: `tokenizer.json` or `vocab.txt`.
    pub kind: TokenizerKind,
    /// Lowercase before WordPiece (for `vocab.txt`).
    pub lowercase: bool,
    /// Tokens kept per sequence, `[CLS]` and `[SEP]` included.
    pub max_len: usize,
    /// SHA-256 (hex) of the file.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: usize,
}

/// Which tokenizer file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum TokenizerKind {
    /// A Hugging Face `tokenizer.json`.
    #[serde(rename = "tokenizer.json")]
    TokenizerJson,
    /// A BERT WordPiece `vocab.txt`.
    #[serde(rename = "vocab.txt")]
    VocabTxt,
}

impl TokenizerKind {
    /// The file name.
    pub fn file_name(self) -> &'static str {
        match self {
            TokenizerKind::TokenizerJson => "tokenizer.json",
            TokenizerKind::VocabTxt => "vocab.txt",
        }
    }
}

/// Answer of `POST /v1/sessions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionCreated {
    /// Session id: 128 random bits, hex. It is the session's only credential.
    pub session: String,
    /// Buckets the uploaded keys cover.
    pub buckets: Vec<usize>,
    /// Memory of this session's expanded keys on the server, in bytes.
    pub key_bytes: usize,
}

/// Answer of `GET /v1/stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStats {
    /// Open sessions.
    pub sessions: usize,
    /// Estimated key memory of all sessions, in bytes.
    pub key_bytes: usize,
    /// Inferences finished since start.
    pub inferences: u64,
    /// Sessions dropped by the reaper since start (timeouts, broken sessions).
    pub reaped: u64,
    /// Connections closed at once because the connection limit was reached.
    #[serde(default)]
    pub refused_connections: u64,
}

/// Error body of every failed request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
}

/// Protocol name announced in [`ServerInfo::protocol`].
pub const PROTOCOL: &str = "thex-net/2";
