//! Pure-Rust RNS-CKKS homomorphic encryption on `tfhe-ntt`.
#![forbid(unsafe_code)]

pub mod arith;
mod error;
pub mod params;
pub mod poly;

pub use error::{DeserializeError, Error, Result};
pub use params::{Parameters, ParametersLiteral, Preset, SecretDistribution};
pub mod encoder;
pub mod precision;
pub use encoder::{Complex64, Encoder, Plaintext};
