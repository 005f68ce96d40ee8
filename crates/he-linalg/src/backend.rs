//! The slot-wise operations every algorithm of this crate is written against.
//!
//! [`SlotBackend`] is implemented by the cleartext evaluator ([`crate::ClearBackend`]) and by the
//! CKKS evaluator wrapper ([`crate::CkksBackend`]). Both count key switches the same way through
//! [`OpStats`], so plans and measurements compare directly.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::error::Result;

/// Slot-wise homomorphic operations with level and scale bookkeeping.
///
/// Rotations are cyclic left rotations over all slots: `rotate(x, k)[i] = x[(i + k) mod slots]`.
/// Levels count remaining rescalings: a ciphertext at level `l` can be rescaled `l` times.
pub trait SlotBackend: Sync {
    /// Ciphertext (degree 1, or degree 2 after an unrelinearized product).
    type Ct: Clone + Send + Sync;
    /// Encoded plaintext vector at a fixed level and scale.
    type Pt: Send + Sync;

    /// Number of slots of one ciphertext.
    fn slots(&self) -> usize;
    /// Highest level of a fresh ciphertext.
    fn max_level(&self) -> usize;
    /// Default encoding scale.
    fn default_scale(&self) -> f64;
    /// The modulus divided out when rescaling a ciphertext at `level` (the prime q_level).
    fn rescale_factor(&self, level: usize) -> f64;
    /// Encodes up to `slots` values (zero-padded) at `level` and `scale`.
    fn encode(&self, values: &[f64], level: usize, scale: f64) -> Result<Self::Pt>;

    /// Level of a ciphertext.
    fn level(&self, ct: &Self::Ct) -> usize;
    /// Scale of a ciphertext.
    fn scale(&self, ct: &Self::Ct) -> f64;
    /// Degree of a ciphertext (1 normally, 2 after [`SlotBackend::mul`]).
    fn degree(&self, ct: &Self::Ct) -> usize;

    /// `a + b` (same level and scale; degrees may differ).
    fn add(&self, a: &Self::Ct, b: &Self::Ct) -> Result<Self::Ct>;
    /// `a - b`.
    fn sub(&self, a: &Self::Ct, b: &Self::Ct) -> Result<Self::Ct>;
    /// `a += b`.
    fn add_assign(&self, a: &mut Self::Ct, b: &Self::Ct) -> Result<()> {
        *a = self.add(a, b)?;
        Ok(())
    }
    /// `a + p` (plaintext at the ciphertext's level and scale).
    fn add_plain(&self, a: &Self::Ct, p: &Self::Pt) -> Result<Self::Ct>;
    /// `p` in the form products use fastest (e.g. a compact plaintext transformed once), for a
    /// plaintext that multiplies many ciphertexts in a row.
    fn expanded<'a>(&self, p: &'a Self::Pt) -> std::borrow::Cow<'a, Self::Pt>
    where
        Self::Pt: Clone,
    {
        std::borrow::Cow::Borrowed(p)
    }
    /// `a ⊙ p` (plaintext at the ciphertext's level); the scales multiply, no rescale.
    fn mul_plain(&self, a: &Self::Ct, p: &Self::Pt) -> Result<Self::Ct>;
    /// `acc += a ⊙ p`, fused where the backend can.
    fn mul_plain_add(&self, acc: &mut Self::Ct, a: &Self::Ct, p: &Self::Pt) -> Result<()> {
        let t = self.mul_plain(a, p)?;
        self.add_assign(acc, &t)
    }
    /// `a · c` with `c` encoded at `const_scale`: the result's scale is `scale(a) · const_scale`.
    fn mul_const(&self, a: &Self::Ct, c: f64, const_scale: f64) -> Result<Self::Ct>;
    /// `a + c` (encoded at the ciphertext's scale).
    fn add_const(&self, a: &Self::Ct, c: f64) -> Result<Self::Ct>;
    /// Tensor product of two degree-1 ciphertexts at the same level; the result has degree 2 and
    /// must be relinearized before rotation or further products.
    fn mul(&self, a: &Self::Ct, b: &Self::Ct) -> Result<Self::Ct>;
    /// `acc += a ⊗ b` (see [`SlotBackend::mul`]), fused where the backend can.
    fn mul_add(&self, acc: &mut Self::Ct, a: &Self::Ct, b: &Self::Ct) -> Result<()> {
        let t = self.mul(a, b)?;
        self.add_assign(acc, &t)
    }
    /// `Σ a ⊗ b` over each non-empty list of pairs (degree 2, not relinearized). Several sums
    /// at once, so that a backend can read operands shared by many sums from memory once.
    fn mul_sums(&self, sums: &[Vec<(&Self::Ct, &Self::Ct)>]) -> Result<Vec<Self::Ct>> {
        fold_sums(
            sums,
            |&(a, b)| self.mul(a, b),
            |acc, &(a, b)| self.mul_add(acc, a, b),
        )
    }
    /// `Σ a ⊙ p` over each non-empty list of pairs (plaintexts at the ciphertexts' level or
    /// above), several sums at once like [`SlotBackend::mul_sums`].
    fn mul_plain_sums(&self, sums: &[Vec<(&Self::Ct, &Self::Pt)>]) -> Result<Vec<Self::Ct>> {
        fold_sums(
            sums,
            |&(a, p)| self.mul_plain(a, p),
            |acc, &(a, p)| self.mul_plain_add(acc, a, p),
        )
    }
    /// Relinearizes a degree-2 ciphertext (one key switch); degree 1 is returned unchanged.
    fn relinearize(&self, a: Self::Ct) -> Result<Self::Ct>;
    /// Divides by [`SlotBackend::rescale_factor`] of the current level and drops one level
    /// (in place: `a` is consumed).
    fn rescale(&self, a: Self::Ct) -> Result<Self::Ct>;
    /// Drops a ciphertext to a lower level without changing its scale.
    fn drop_to_level(&self, a: &Self::Ct, level: usize) -> Result<Self::Ct>;
    /// Reinterprets the ciphertext at another scale: the encrypted values are multiplied by
    /// `scale(a) / scale`. Free and exact.
    fn set_scale(&self, a: &Self::Ct, scale: f64) -> Result<Self::Ct>;
    /// Rotates left by `step` slots (one key switch unless `step ≡ 0`).
    fn rotate(&self, a: &Self::Ct, step: usize) -> Result<Self::Ct>;
    /// Rotations of one ciphertext by several steps sharing one key-switching decomposition
    /// (hoisting). One key switch per nonzero step.
    fn rotate_hoisted(&self, a: &Self::Ct, steps: &[usize]) -> Result<Vec<Self::Ct>>;
    /// Operation counters of this backend.
    fn stats(&self) -> &OpStats;
}

/// Memory held by an encoded plaintext (for reports of the server's weight memory).
pub trait PlaintextSize {
    /// Bytes of encoded data.
    fn heap_bytes(&self) -> usize;
}

/// The client side: encryption and decryption on top of [`SlotBackend`].
pub trait SlotClient: SlotBackend {
    /// Encrypts up to `slots` values at `level` and `scale`.
    fn encrypt(&self, values: &[f64], level: usize, scale: f64) -> Result<Self::Ct>;
    /// Decrypts and decodes all slots.
    fn decrypt(&self, ct: &Self::Ct) -> Result<Vec<f64>>;
}

/// Thread-safe operation counters, and the set of rotation steps actually used.
#[derive(Debug, Default)]
pub struct OpStats {
    rotations: AtomicU64,
    hoisted_rotations: AtomicU64,
    relinearizations: AtomicU64,
    ct_mults: AtomicU64,
    pt_mults: AtomicU64,
    rescales: AtomicU64,
    steps: Mutex<BTreeSet<usize>>,
}

/// A snapshot of [`OpStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpCounts {
    /// Rotations (hoisted or not) plus relinearizations.
    pub key_switches: u64,
    /// All rotations.
    pub rotations: u64,
    /// Rotations that shared a decomposition (subset of `rotations`).
    pub hoisted_rotations: u64,
    /// Relinearizations.
    pub relinearizations: u64,
    /// Ciphertext-ciphertext tensor products.
    pub ct_mults: u64,
    /// Ciphertext-plaintext and ciphertext-constant products.
    pub pt_mults: u64,
    /// Rescalings.
    pub rescales: u64,
}

impl OpCounts {
    /// Counts accumulated since `earlier`.
    pub fn since(&self, earlier: &OpCounts) -> OpCounts {
        OpCounts {
            key_switches: self.key_switches - earlier.key_switches,
            rotations: self.rotations - earlier.rotations,
            hoisted_rotations: self.hoisted_rotations - earlier.hoisted_rotations,
            relinearizations: self.relinearizations - earlier.relinearizations,
            ct_mults: self.ct_mults - earlier.ct_mults,
            pt_mults: self.pt_mults - earlier.pt_mults,
            rescales: self.rescales - earlier.rescales,
        }
    }
}

impl OpStats {
    /// Records one rotation by `step` (already reduced modulo the slot count, nonzero).
    pub fn record_rotation(&self, step: usize, hoisted: bool) {
        self.rotations.fetch_add(1, Ordering::Relaxed);
        if hoisted {
            self.hoisted_rotations.fetch_add(1, Ordering::Relaxed);
        }
        self.steps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(step);
    }
    /// Records one relinearization.
    pub fn record_relinearization(&self) {
        self.relinearizations.fetch_add(1, Ordering::Relaxed);
    }
    /// Records one ciphertext-ciphertext product.
    pub fn record_ct_mult(&self) {
        self.ct_mults.fetch_add(1, Ordering::Relaxed);
    }
    /// Records one plaintext or constant product.
    pub fn record_pt_mult(&self) {
        self.pt_mults.fetch_add(1, Ordering::Relaxed);
    }
    /// Records one rescaling.
    pub fn record_rescale(&self) {
        self.rescales.fetch_add(1, Ordering::Relaxed);
    }
    /// Current counts.
    pub fn snapshot(&self) -> OpCounts {
        let rotations = self.rotations.load(Ordering::Relaxed);
        let relinearizations = self.relinearizations.load(Ordering::Relaxed);
        OpCounts {
            key_switches: rotations + relinearizations,
            rotations,
            hoisted_rotations: self.hoisted_rotations.load(Ordering::Relaxed),
            relinearizations,
            ct_mults: self.ct_mults.load(Ordering::Relaxed),
            pt_mults: self.pt_mults.load(Ordering::Relaxed),
            rescales: self.rescales.load(Ordering::Relaxed),
        }
    }
    /// Rotation steps used so far (each needs a Galois key).
    pub fn used_steps(&self) -> BTreeSet<usize> {
        self.steps.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    /// Clears all counters and the used-step set.
    pub fn reset(&self) {
        for c in [
            &self.rotations,
            &self.hoisted_rotations,
            &self.relinearizations,
            &self.ct_mults,
            &self.pt_mults,
            &self.rescales,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        self.steps.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

pub use ckks::{SCALE_TOLERANCE, scales_match};

/// Each non-empty list of pairs folded into one ciphertext: `first` on its first pair, `add`
/// for every further one (the default [`SlotBackend::mul_sums`] / `mul_plain_sums`).
fn fold_sums<X, C>(
    sums: &[Vec<X>],
    first: impl Fn(&X) -> Result<C>,
    add: impl Fn(&mut C, &X) -> Result<()>,
) -> Result<Vec<C>> {
    sums.iter()
        .map(|pairs| {
            let (head, rest) = pairs.split_first().ok_or_else(|| {
                crate::Error::Unsupported(
                    "internal: a sum of products needs at least one product".into(),
                )
            })?;
            let mut acc = first(head)?;
            for x in rest {
                add(&mut acc, x)?;
            }
            Ok(acc)
        })
        .collect()
}
