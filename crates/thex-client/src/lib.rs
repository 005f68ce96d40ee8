//! The client side of THE-X encrypted inference, and the protocol vocabulary it shares with the
//! server (`thex-engine`). No candle, no tokio, no HTTP: it builds for
//! `wasm32-unknown-unknown` (without the `os-rng` feature).
//!
//! - [`ClientBundle`]: what a server publishes (CKKS parameters, model shapes, per-bucket
//!   plans, the embedding tables).
//! - [`Schedule`]: per length bucket, the level and scale of every value of the program, the
//!   rounds and their items, and the layouts; the server's compiler and the client read it.
//! - [`ClientSession`]: holds the secret key; embeds and encrypts the input, answers every
//!   ReLU round ([`ReluRequest`] → [`ReluReply`]) after checking it against the schedule, and
//!   decrypts the logits.
//! - [`infer`]: one inference over any [`Transport`] (HTTP in `thex-net`, in-process in
//!   `thex-engine`), with bytes and time per phase ([`Inference`]).
//! - The wire format of every message ([`Message`]).
//! - [`sha256_hex`]: the content address of the bundle and the tokenizer file.
//! - [`BertTokenizer`] (from `thex-tokenizer`): the text to token ids, on the client.

mod bundle;
mod digest;
mod driver;
mod embedding;
mod error;
mod schedule;
mod session;
mod wire;

pub use bundle::{BucketPlan, ClientBundle, MAX_HEADER_BYTES};
pub use digest::{is_sha256_hex, sha256_hex};
pub use driver::{Answer, Exchange, Inference, Outgoing, PhaseTiming, Transport, infer};
pub use embedding::{EmbeddingTables, MAX_LAYERS, MAX_SOFTMAX_POWER, ModelDims};
pub use error::{Error, ErrorClass, Result};
pub use schedule::{
    At, BucketLayouts, ItemKind, Levels, PIPELINE_DEPTH, Port, Round, RoundItem, Rounds, Schedule,
    Segment,
};
pub use session::{ClientPrediction, ClientSession, Decrypted, prediction};
pub use thex_tokenizer::{BertTokenizer, TokenizerError};
pub use wire::{
    EncryptedInput, EncryptedLogits, EvaluationKeys, Message, MessageLimits, NONCE_BYTES, ReluItem,
    ReluReply, ReluRequest, Step, check_size,
};
