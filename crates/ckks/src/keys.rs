//! Key generation: secret key (client only), public key, relinearization key and Galois keys.
//! Evaluation keys are their own types so the server never handles secret-key material.

use std::collections::BTreeMap;

use rand_core::{RngCore, SeedableRng};
use zeroize::Zeroize;

use crate::error::Result;
use crate::ks::{KeySwitchKey, galois_perm};
use crate::params::{Context, Parameters, SecretDistribution};
use crate::poly::{Ntt, Poly};
use crate::rng::{self, Prng};

/// The secret key. Zeroized on drop; not serializable except through the explicit
/// [`SecretKey::to_bytes_secret`] call.
pub struct SecretKey {
    pub(crate) params: Parameters,
    pub(crate) coeffs: Vec<i64>,
    /// NTT form over all q primes and all special primes.
    pub(crate) ntt: Poly<Ntt>,
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        self.coeffs.zeroize();
        self.ntt.data.zeroize();
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

impl SecretKey {
    /// Parameters of this key.
    pub fn params(&self) -> &Parameters {
        &self.params
    }

    pub(crate) fn from_coeffs(params: &Parameters, coeffs: Vec<i64>) -> Self {
        let ctx = &params.ctx;
        let ntt = Poly::from_signed(params, &coeffs, ctx.q_count, true).into_ntt_ctx(ctx);
        Self {
            params: params.clone(),
            coeffs,
            ntt,
        }
    }
}

/// Public encryption key `(b, a) = (-a s + e, a)` over Q * P (encryption divides by P, so fresh
/// ciphertexts carry only rounding noise).
#[derive(Debug, Clone, PartialEq)]
pub struct PublicKey {
    pub(crate) params: Parameters,
    pub(crate) b: Poly<Ntt>,
    pub(crate) a: Poly<Ntt>,
    pub(crate) seed: [u8; 32],
}

impl PublicKey {
    /// Parameters of this key.
    pub fn params(&self) -> &Parameters {
        &self.params
    }
}

/// Relinearization key (switches `s^2` to `s`).
#[derive(Clone, PartialEq)]
pub struct RelinKey {
    pub(crate) params: Parameters,
    pub(crate) key: KeySwitchKey,
}

impl std::fmt::Debug for RelinKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelinKey")
            .field("digits", &self.key.b.len())
            .finish_non_exhaustive()
    }
}

impl RelinKey {
    /// Parameters of this key.
    pub fn params(&self) -> &Parameters {
        &self.params
    }
}

/// One Galois key for `σ: a(X) ↦ a(X^g)`: a key-switching key from `s` to `σ⁻¹(s)`
/// (`b_j + a_j·σ⁻¹(s) = P·g_j·s + e_j`). Key-switching `c1` with it and applying σ to the result
/// switches `σ(c1)` from `σ(s)` to `s`: hoisted rotations use the decomposed digits of `c1`
/// as they are and permute only their two outputs.
#[derive(Clone, PartialEq)]
pub(crate) struct GaloisKey {
    pub perm: Vec<u32>,
    pub key: KeySwitchKey,
}

/// A set of Galois keys indexed by Galois element (rotations and conjugation).
#[derive(Clone, PartialEq)]
pub struct GaloisKeys {
    pub(crate) params: Parameters,
    pub(crate) keys: BTreeMap<u64, GaloisKey>,
}

impl std::fmt::Debug for GaloisKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GaloisKeys")
            .field("galois_elements", &self.keys.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl GaloisKeys {
    /// Parameters of these keys.
    pub fn params(&self) -> &Parameters {
        &self.params
    }
    /// The Galois elements with a key.
    pub fn galois_elements(&self) -> Vec<u64> {
        self.keys.keys().copied().collect()
    }
    /// Whether a key for rotation by `step` (left, negative = right) is present.
    pub fn has_rotation(&self, step: i64) -> bool {
        self.keys.contains_key(&self.params.galois_element(step))
    }
    /// Whether the conjugation key is present.
    pub fn has_conjugation(&self) -> bool {
        self.keys.contains_key(&self.params.conjugation_element())
    }
}

impl Parameters {
    /// Galois element `5^step mod 2N` of a left rotation by `step` (negative = right); valid for
    /// any slot count.
    pub fn galois_element(&self, step: i64) -> u64 {
        let half = (self.n() / 2) as i64;
        let k = step.rem_euclid(half) as u64;
        let two_n = 2 * self.n() as u64;
        let (mut r, mut b, mut e) = (1u64, 5u64, k);
        while e > 0 {
            if e & 1 == 1 {
                r = r * b % two_n;
            }
            b = b * b % two_n;
            e >>= 1;
        }
        r
    }
    /// Galois element of complex conjugation, `2N - 1`.
    pub fn conjugation_element(&self) -> u64 {
        2 * self.n() as u64 - 1
    }
}

/// Generates keys from a CSPRNG.
#[derive(Debug)]
pub struct KeyGenerator {
    params: Parameters,
    rng: Prng,
}

impl KeyGenerator {
    /// A key generator seeded from the operating system.
    #[cfg(feature = "os-rng")]
    pub fn new(params: &Parameters) -> Self {
        Self {
            params: params.clone(),
            rng: rng::os_rng(),
        }
    }

    /// A deterministic key generator (for tests, or a seed from another CSPRNG).
    pub fn from_seed(params: &Parameters, seed: [u8; 32]) -> Self {
        Self {
            params: params.clone(),
            rng: Prng::from_seed(seed),
        }
    }

    /// A fresh secret key from the parameters' distribution.
    pub fn secret_key(&mut self) -> SecretKey {
        let n = self.params.n();
        let coeffs = match self.params.literal().secret {
            SecretDistribution::Ternary => rng::ternary(&mut self.rng, n),
            SecretDistribution::FixedHammingWeight(h) => rng::fixed_hamming(&mut self.rng, n, h),
        };
        SecretKey::from_coeffs(&self.params, coeffs)
    }

    fn seed(&mut self) -> [u8; 32] {
        let mut s = [0u8; 32];
        self.rng.fill_bytes(&mut s);
        s
    }

    fn error_ntt(&mut self, nq: usize, np: usize) -> Poly<Ntt> {
        let ctx = &self.params.ctx;
        let e = rng::gaussian(&mut self.rng, ctx.n, self.params.literal().error_std);
        let mut p = Poly::zero_ctx(ctx, nq, np);
        p.set_signed_ctx(ctx, &e);
        p.into_ntt_ctx(ctx)
    }

    /// The public key of `sk`.
    pub fn public_key(&mut self, sk: &SecretKey) -> Result<PublicKey> {
        self.params.check_same(&sk.params)?;
        let ctx = self.params.ctx.clone();
        let seed = self.seed();
        let a = rng::uniform_poly(&mut Prng::from_seed(seed), &ctx, ctx.q_count, ctx.p_count);
        let b = public_b(&ctx, &a, &sk.ntt, self.error_ntt(ctx.q_count, ctx.p_count));
        Ok(PublicKey {
            params: self.params.clone(),
            b,
            a,
            seed,
        })
    }

    /// A key-switching key from `s_prime` to `secret` (NTT form over all q and special primes):
    /// `b_j + a_j·secret = P·g_j·s_prime + e_j`.
    fn switching_key(&mut self, secret: &Poly<Ntt>, s_prime: &Poly<Ntt>) -> KeySwitchKey {
        let ctx = self.params.ctx.clone();
        let seed = self.seed();
        let a = expand_key_a(&ctx, seed);
        let n = ctx.n;
        // [P mod q_i] for every q prime.
        let p_mod: Vec<u64> = ctx.moduli[..ctx.q_count]
            .iter()
            .map(|m| {
                ctx.moduli[ctx.q_count..]
                    .iter()
                    .fold(1u64, |acc, p| m.mul(acc, m.reduce(p.value())))
            })
            .collect();
        let b = a
            .iter()
            .enumerate()
            .map(|(j, aj)| {
                let e = self.error_ntt(ctx.q_count, ctx.p_count);
                let mut b = public_b(&ctx, aj, secret, e);
                let lo = j * ctx.alpha;
                let hi = ((j + 1) * ctx.alpha).min(ctx.q_count);
                for (i, &pm) in p_mod.iter().enumerate().take(hi).skip(lo) {
                    let m = &ctx.moduli[i];
                    let (w, ws) = (pm, m.shoup(pm));
                    let sp = &s_prime.data[i * n..(i + 1) * n];
                    for (x, &s) in b.limb_mut(i).iter_mut().zip(sp) {
                        *x = m.add(*x, m.mul_shoup(s, w, ws));
                    }
                }
                b
            })
            .collect();
        KeySwitchKey { b, a, seed }
    }

    /// The relinearization key of `sk`.
    pub fn relin_key(&mut self, sk: &SecretKey) -> Result<RelinKey> {
        self.params.check_same(&sk.params)?;
        let ctx = self.params.ctx.clone();
        let mut s2 = sk.ntt.clone();
        s2.truncate_q(ctx.q_count);
        let s = s2.clone();
        s2.mul_assign_ctx(&ctx, &s);
        let key = self.switching_key(&sk.ntt, &s2);
        s2.data.zeroize();
        Ok(RelinKey {
            params: self.params.clone(),
            key,
        })
    }

    /// Galois keys for left rotations by `steps` (negative = right) and, if asked, conjugation.
    pub fn galois_keys(
        &mut self,
        sk: &SecretKey,
        steps: &[i64],
        conjugation: bool,
    ) -> Result<GaloisKeys> {
        self.params.check_same(&sk.params)?;
        let mut elements: Vec<u64> = steps
            .iter()
            .map(|&s| self.params.galois_element(s))
            .collect();
        if conjugation {
            elements.push(self.params.conjugation_element());
        }
        elements.retain(|&g| g != 1);
        elements.sort_unstable();
        elements.dedup();
        let ctx = self.params.ctx.clone();
        let mut keys = BTreeMap::new();
        for g in elements {
            let mut s = sk.ntt.clone();
            s.truncate_q(ctx.q_count);
            let perm = galois_perm(&ctx, g);
            // Switching from σ⁻¹(s) rather than to σ(s): a rotation key-switches `c1` as it is
            // and applies σ to the result (see [`GaloisKey`]).
            let mut s_inv = crate::ks::apply_galois_inverse(&ctx, &sk.ntt, &perm);
            let key = self.switching_key(&s_inv, &s);
            s_inv.data.zeroize();
            s.data.zeroize();
            keys.insert(g, GaloisKey { perm, key });
        }
        Ok(GaloisKeys {
            params: self.params.clone(),
            keys,
        })
    }

    /// Galois keys for all rotations by `+-2^i` (any step is then composable), plus conjugation.
    pub fn galois_keys_pow2(&mut self, sk: &SecretKey, conjugation: bool) -> Result<GaloisKeys> {
        let half = self.params.max_slots() as i64;
        let mut steps = Vec::new();
        let mut s = 1i64;
        while s < half {
            steps.push(s);
            steps.push(-s);
            s *= 2;
        }
        self.galois_keys(sk, &steps, conjugation)
    }
}

/// `-a s + e` over the basis of `a`.
fn public_b(ctx: &Context, a: &Poly<Ntt>, secret: &Poly<Ntt>, e: Poly<Ntt>) -> Poly<Ntt> {
    let mut s = secret.clone();
    if a.np == 0 {
        s.truncate_q(a.nq);
    }
    let mut b = e;
    let mut as_ = Poly::<Ntt>::zero_ctx(ctx, a.nq, a.np);
    as_.mul_acc_ctx(ctx, a, &s);
    s.data.zeroize();
    b.sub_assign_ctx(ctx, &as_);
    b
}

/// Regenerates the `a_j` of a key-switching key from its seed.
pub(crate) fn expand_key_a(ctx: &Context, seed: [u8; 32]) -> Vec<Poly<Ntt>> {
    let mut r = Prng::from_seed(seed);
    (0..ctx.dnum)
        .map(|_| rng::uniform_poly(&mut r, ctx, ctx.q_count, ctx.p_count))
        .collect()
}

impl Parameters {
    pub(crate) fn check_same(&self, other: &Parameters) -> Result<()> {
        if self.id() != other.id() {
            return Err(crate::Error::ParametersMismatch {
                found: other.id(),
                expected: self.id(),
            });
        }
        Ok(())
    }
}
