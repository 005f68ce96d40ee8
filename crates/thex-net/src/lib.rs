//! THE-X over HTTP: an axum server that holds client sessions around one compiled model,
//! and a blocking client that keeps the secret key local. Without the default `server`
//! feature the crate is the client alone (no candle, no tokio).
//!
//! - [`ServedModel`]: a THE-X model directory compiled by `thex-engine`, with the client
//!   bundle (and its SHA-256) and the tokenizer file clients download.
//! - [`ServerHandle::start`]: serves it on a background tokio runtime; routes in [`api`];
//!   resource limits in [`ServerLimits`]; one structured log line per request (`tracing`,
//!   target `thex_net::request`).
//! - [`Client::connect_with`]: downloads (or reuses from a cache, by hash) the bundle and
//!   tokenizer, loads or creates the secret key, uploads evaluation keys once, then
//!   [`Client::infer`] runs the input, every ReLU round and the decryption, and reports
//!   bytes, rounds and time per phase ([`Inference`], the driver of `thex-client` over HTTP).
//!
//! ```no_run
//! use thex_net::{Client, ServedModel, ServerHandle, ServerLimits};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let served = ServedModel::load("models/my-thex".as_ref(), &Default::default())?;
//! let server = ServerHandle::start(served, "127.0.0.1:0".parse()?, ServerLimits::default())?;
//! let mut client = Client::connect(&server.url())?;
//! let r = client.infer("a gripping, beautifully acted film")?;
//! println!("{} {:?} in {} rounds", r.label, r.probabilities, r.rounds);
//! # Ok(())
//! # }
//! ```

pub mod api;
mod client;
mod error;
#[cfg(feature = "server")]
mod served;
#[cfg(feature = "server")]
mod server;

pub use client::{Client, ClientOptions, ConnectReport, plain_http_warning};
pub use error::{NetError, Result};
#[cfg(feature = "server")]
pub use served::{ServedModel, TokenizerFile};
#[cfg(feature = "server")]
pub use server::{ApiTokens, ServerConfig, ServerHandle, ServerLimits, TlsIdentity};
pub use thex_client::{Exchange, Inference, PhaseTiming};
