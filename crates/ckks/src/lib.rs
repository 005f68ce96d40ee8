//! Pure-Rust RNS-CKKS homomorphic encryption on `tfhe-ntt`.
//!
//! Client side: [`KeyGenerator`], [`SecretKey`], [`Decryptor`] (decryption and seeded symmetric
//! encryption). Server side: [`Evaluator`] with [`RelinKey`] and [`GaloisKeys`], which never
//! touch the secret key. Shared: [`Parameters`], [`Encoder`], [`Encryptor`] (public key).
//!
#![cfg_attr(feature = "os-rng", doc = include_str!("../README.md"))]

pub mod arith;
pub mod encoder;
mod encrypt;
mod error;
mod eval;
mod keys;
mod ks;
pub mod params;
pub mod poly;
pub mod precision;
pub mod rng;
pub mod serialize;
#[allow(unsafe_code)] // pulp::simd_type! dispatch only; see the module docs.
mod simd;

pub use encoder::{CompactPlaintext, Complex64, Encoder, Plaintext};
pub use encrypt::{Ciphertext, Decryptor, Encryptor, SeededCiphertext};
pub use error::{DeserializeError, Error, Result};
pub use eval::{Evaluator, SCALE_TOLERANCE, scales_match};
pub use keys::{GaloisKeys, KeyGenerator, PublicKey, RelinKey, SecretKey};
pub use params::{Parameters, ParametersLiteral, Preset, SecretDistribution};
