//! Blinded rounds ([`Rounds::Blinded`]): before the client decrypts a request item, the server
//! multiplies each slot by its own random factor `r = σ·ρ` (a uniform sign `σ`, a magnitude
//! `ρ ≤ 1`), drawn per request from a ChaCha20 stream seeded by the OS, never sent, and zeroized
//! (their encodings dropped) when the round is answered or abandoned. The client's functions are positively homogeneous
//! of degree `p` ([`Schedule::reply_power`]), so `f(r·v) = ρ^p·f(σ·v)`: for a ReLU item the
//! client returns `f(v')` and `f(-v')`, and the server keeps the first where `σ > 0`, the
//! second where `σ < 0`, each divided by `ρ^p` (plaintext masks, one level); the residual
//! refresh is multiplied by `1/r`.
//!
//! `log₂ ρ` spans `bits / p` bits below 0 with density `cos²` over its range (the bounded
//! density with the least Fisher information for its location: averaging repeated requests
//! learns `log|v|` no faster with any other), so every reply factor `ρ^p` spans `bits` bits.
//! Values only shrink: the client's no-wrap headroom holds as in THE-X's rounds, and the
//! precision of the smallest-factor slots drops by up to `bits` bits.

use he_linalg::{PackedMatrix, SlotBackend};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rayon::prelude::*;
use zeroize::Zeroizing;

use crate::error::{EngineError, Result};
use thex_client::{ItemKind, Rounds, Schedule};

/// Default [`crate::EngineParams::blind_bits`].
pub const DEFAULT_BLIND_BITS: u32 = 6;
/// Largest [`crate::EngineParams::blind_bits`]: the unblinding multiplies by up to `2^bits`.
pub const MAX_BLIND_BITS: u32 = 16;

/// One request item's factors `σ·ρ`, per ciphertext and slot; zeroized on drop.
pub(crate) type Factors = Zeroizing<Vec<f64>>;

/// The server's blinding of one request: its source of randomness and its width.
pub(crate) struct Blinder {
    rng: ChaCha20Rng,
    bits: u32,
}

impl Blinder {
    /// A blinder for one request with an OS-seeded stream, or `None` for THE-X's rounds.
    pub fn for_request(sched: &Schedule, bits: u32) -> Option<Self> {
        (sched.round_mode() == Rounds::Blinded).then(|| Self {
            rng: ChaCha20Rng::from_seed(ckks::rng::os_seed()),
            bits,
        })
    }

    /// A uniform draw in `[0, 1)` (53 bits).
    fn uniform(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// One factor `σ·ρ` for an item whose reply has degree `power`.
    fn factor(&mut self, power: u32) -> f64 {
        // x in [-1, 1] with density cos²(πx/2), by rejection from the uniform.
        let x = loop {
            let x = 2.0 * self.uniform() - 1.0;
            if self.uniform() < (std::f64::consts::FRAC_PI_2 * x).cos().powi(2) {
                break x;
            }
        };
        let log2_rho = -(self.bits as f64 / power as f64) * (1.0 + x) / 2.0;
        let sign = if self.rng.next_u32() & 1 == 0 {
            1.0
        } else {
            -1.0
        };
        sign * log2_rho.exp2()
    }

    /// Multiplies every slot of `m` (at [`thex_client::Levels::items`], request scale) by a
    /// fresh factor; returns it one level lower at the same scale, and the factors.
    pub fn blind<B: SlotBackend>(
        &mut self,
        b: &B,
        sched: &Schedule,
        kind: ItemKind,
        m: PackedMatrix<B::Ct>,
    ) -> Result<(PackedMatrix<B::Ct>, Factors)> {
        let slots = b.slots();
        let power = sched.reply_power(kind);
        let n = m.cts().len();
        let factors: Factors = Zeroizing::new((0..n * slots).map(|_| self.factor(power)).collect());
        let layout = m.layout().clone();
        let cts = m
            .cts()
            .par_iter()
            .zip(factors.par_chunks(slots))
            .map(|(ct, r)| {
                let level = b.level(ct);
                let pt = b.encode(r, level, sched.modulus(level))?;
                b.rescale(b.mul_plain(ct, &pt)?)
            })
            .collect::<he_linalg::Result<Vec<_>>>()?;
        Ok((PackedMatrix::new(layout, cts)?, factors))
    }
}

/// The reply to a blinded item unblinded: `cts` as the client sent them (for a ReLU item
/// `f(v')` then `f(-v')`), one ciphertext per request ciphertext back at the reply's scale,
/// one level lower.
pub(crate) fn unblind<B: SlotBackend>(
    b: &B,
    sched: &Schedule,
    kind: ItemKind,
    cts: Vec<B::Ct>,
    factors: &[f64],
) -> Result<Vec<B::Ct>> {
    let slots = b.slots();
    let n = factors.len() / slots;
    let power = sched.reply_power(kind) as i32;
    let parts = if kind.is_relu() { 2 } else { 1 };
    if cts.len() != parts * n {
        return Err(EngineError::Internal(format!(
            "{kind:?} reply of {} ciphertexts for {n} blinded ones",
            cts.len()
        )));
    }
    (0..n)
        .into_par_iter()
        .map(|i| {
            let r = &factors[i * slots..(i + 1) * slots];
            let level = b.level(&cts[i]);
            let encode = |keep: &dyn Fn(f64) -> f64| -> he_linalg::Result<_> {
                let m = Zeroizing::new(r.iter().map(|&x| keep(x)).collect::<Vec<f64>>());
                b.encode(&m, level, sched.modulus(level))
            };
            let out = if kind.is_relu() {
                let inv = |x: f64| x.abs().powi(-power);
                let pos = encode(&|x| if x > 0.0 { inv(x) } else { 0.0 })?;
                let neg = encode(&|x| if x < 0.0 { inv(x) } else { 0.0 })?;
                let mut acc = b.mul_plain(&cts[i], &pos)?;
                b.mul_plain_add(&mut acc, &cts[n + i], &neg)?;
                acc
            } else {
                b.mul_plain(&cts[i], &encode(&|x| 1.0 / x)?)?
            };
            b.rescale(out)
        })
        .collect::<he_linalg::Result<Vec<_>>>()
        .map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factors_have_a_fair_sign_and_the_configured_range() {
        let mut bl = Blinder {
            rng: ChaCha20Rng::from_seed([7; 32]),
            bits: 6,
        };
        for power in [1u32, 3] {
            let draws: Vec<f64> = (0..20_000).map(|_| bl.factor(power)).collect();
            let positive = draws.iter().filter(|&&r| r > 0.0).count() as f64 / 20_000.0;
            assert!(
                (positive - 0.5).abs() < 0.02,
                "positive fraction {positive}"
            );
            // ρ^power spans 6 bits below 1, its log centred in the range.
            let logs: Vec<f64> = draws
                .iter()
                .map(|r| r.abs().log2() * power as f64)
                .collect();
            let (lo, hi) = logs
                .iter()
                .fold((0f64, f64::MIN), |(l, h), &x| (l.min(x), h.max(x)));
            assert!(
                lo >= -6.0 && hi <= 0.0 && lo < -5.7 && hi > -0.3,
                "{lo} {hi}"
            );
            let mean = logs.iter().sum::<f64>() / logs.len() as f64;
            assert!((mean + 3.0).abs() < 0.05, "mean log2 {mean}");
            // cos² on the range: the middle fifth holds about 38.7% of the mass (uniform 20%).
            let middle = logs.iter().filter(|&&x| (x + 3.0).abs() < 0.6).count() as f64;
            assert!(
                (middle / 20_000.0 - 0.387).abs() < 0.02,
                "{}",
                middle / 20_000.0
            );
        }
    }
}
