//! Packed encrypted linear algebra for transformers over CKKS.
//!
//! Every algorithm is generic over [`SlotBackend`], the slot-wise operations of CKKS with level,
//! scale and key-switch bookkeeping. [`ClearBackend`] runs them on plain `f64` slots (for tests,
//! independent of encryption noise); [`CkksBackend`] runs them on ciphertexts.
//!
//! - [`Layout`] / [`PackedMatrix`]: tokens × features activations over ciphertexts.
//! - [`EncodedLinear`]: plaintext weights × ciphertext with bias (BSGS, hoisted).
//! - [`attention`]: Q·Kᵀ for all heads, attention · V, row sums, masks.
//! - [`poly`]: polynomial evaluation (power and Chebyshev bases) and fitting.
//! - [`plan`]: rotation keys, key switches and depth known ahead of time.
//! - [`bench`](mod@bench): the BERT-shaped benchmark behind `thex bench linalg`.

mod backend;
mod ckks_backend;
mod clear;
mod error;
mod layout;
mod linear;
mod matrix;

pub mod attention;
#[cfg(feature = "os-rng")]
pub mod bench;
pub mod ops;
pub mod plan;
pub mod poly;

pub use backend::{
    OpCounts, OpStats, PlaintextSize, SCALE_TOLERANCE, SlotBackend, SlotClient, scales_match,
};
pub use ckks_backend::{CkksBackend, CkksPlaintext};
pub use clear::{ClearBackend, ClearCt, ClearPt};
pub use error::{Error, Result};
pub use layout::{ColumnOrder, Layout, PackedMatrix, PlainMatrix, decrypt_matrix, encrypt_matrix};
pub use linear::{EncodedLinear, LinearMethod, LinearSpec};
pub use matrix::{Matrix, precision_bits};
pub use plan::{OpPlan, Plan};
