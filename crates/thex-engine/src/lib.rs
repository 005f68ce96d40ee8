//! THE-X encrypted BERT inference, server side: the compiled program and the server's state
//! machine (no network code). The client side and the protocol vocabulary (schedule, wire
//! format, bundle) live in `thex-client`.
//!
//! - [`ServerModel::compile`] turns a THE-X model (`thex-model`) into an HE program: affine
//!   LayerNorms folded into the linear maps, weights packed and encoded once per length bucket,
//!   CKKS parameters chosen for the depth between client rounds
//!   ([`thex_client::PIPELINE_DEPTH`]), the exact Galois key set from the `he-linalg` plans,
//!   and the [`thex_client::ClientBundle`] clients download.
//! - [`ServerSession`] holds the compiled model and one client's evaluation keys:
//!   [`ServerSession::start`] and [`ServerSession::resume`] return the next step, each round
//!   request carrying a fresh nonce that its reply must echo.
//! - [`Local`] is the in-process [`thex_client::Transport`]: [`run_local`] drives a client and
//!   a server session in one process through the byte form of every message.
//!
//! Per encoder layer there are four client rounds: the softmax surrogate `ReLU(y^p)`, the two
//! hidden ReLUs of the reciprocal network `T`, and the FFN ReLU (with the residual stream
//! refreshed in the same round). By default the rounds are blinded ([`blinding`]): the client
//! decrypts every value times a random sign and magnitude only the server knows.
//! [`thex_client::Schedule`] names the level and scale of every
//! value of a bucket's program; the compiler, the server and the client all read it.

pub mod blinding;
mod calibrate;
mod dry_run;
mod error;
mod local;
mod params;
mod program;
mod resolve;
mod segments;
mod server;
mod weights;

pub use error::{EngineError, Result};
pub use local::{Local, run_local};
pub use params::{DEFAULT_BUCKETS, EngineParams, length_bucket};
pub use program::ServerModel;
pub use resolve::{Calibration, PLAN_VERSION, ResolvedPlan};
pub use server::{ServerSession, Tap};
pub use weights::{LayerWeights, ModelWeights, ReciprocalWeights, split_model};
