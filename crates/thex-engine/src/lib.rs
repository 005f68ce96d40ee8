//! THE-X encrypted BERT inference: the compiled server program and the client/server protocol
//! as explicit state machines (no network code).
//!
//! - [`ServerModel::compile`] turns a THE-X model (`thex-model`) into an HE program: affine
//!   LayerNorms folded into the linear maps, weights packed and encoded once per length bucket,
//!   CKKS parameters chosen for the depth between client rounds ([`PIPELINE_DEPTH`]), the exact
//!   Galois key set from the `he-linalg` plans.
//! - [`ClientSession`] holds the secret key: embeds and encrypts the input, answers every ReLU
//!   round ([`ReluRequest`] → [`ReluReply`]), decrypts the logits.
//! - [`ServerSession`] holds the compiled model and one client's [`EvaluationKeys`]:
//!   [`ServerSession::start`] and [`ServerSession::resume`] return the next [`Step`].
//! - [`run_local`] drives both in one process through the byte form of every message.
//!
//! Per encoder layer there are four client rounds: the softmax surrogate `ReLU(y^p)`, the two
//! hidden ReLUs of the reciprocal network `T`, and the FFN ReLU (with the residual stream
//! refreshed in the same round). [`Schedule`] names the level and scale of every value of a
//! bucket's program; the compiler, the server and the client all read it.

mod bundle;
mod calibrate;
mod client;
mod dry_run;
mod error;
mod local;
mod params;
mod program;
mod schedule;
mod segments;
mod server;
mod weights;
mod wire;

pub use bundle::{BucketPlan, ClientBundle};
pub use client::{ClientPrediction, ClientSession, prediction};
pub use error::{EngineError, Result};
pub use local::{InferenceResult, PhaseTiming, run_local, run_local_ids};
pub use params::{DEFAULT_BUCKETS, EngineParams};
pub use program::ServerModel;
pub use schedule::{
    At, BucketLayouts, ItemKind, Levels, PIPELINE_DEPTH, Port, Round, RoundItem, Schedule, Segment,
};
pub use server::{ServerSession, Tap};
pub use weights::{
    EmbeddingTables, LayerWeights, ModelDims, ModelWeights, ReciprocalWeights, split_model,
};
pub use wire::{
    EncryptedInput, EncryptedLogits, EvaluationKeys, MessageLimits, ReluItem, ReluReply,
    ReluRequest, Step,
};
