//! Ciphertexts, encryption (public key; seeded symmetric) and decryption.

use rand_core::{RngCore, SeedableRng};

use crate::encoder::Plaintext;
use crate::error::{Error, Result};
use crate::keys::{PublicKey, SecretKey};
use crate::ks::mod_down;
use crate::params::{Context, Parameters};
use crate::poly::{Ntt, Poly};
use crate::rng::{self, Prng};

/// A CKKS ciphertext: polynomials `(c0, c1[, c2])` in NTT form, with its scale and slot count.
#[derive(Debug, Clone, PartialEq)]
pub struct Ciphertext {
    pub(crate) polys: Vec<Poly<Ntt>>,
    pub(crate) scale: f64,
    pub(crate) slots: usize,
}

impl Ciphertext {
    /// Level (number of primes minus one).
    pub fn level(&self) -> usize {
        self.polys[0].nq - 1
    }
    /// Current scale.
    pub fn scale(&self) -> f64 {
        self.scale
    }
    /// Number of slots (a power of two).
    pub fn slots(&self) -> usize {
        self.slots
    }
    /// Degree (1 for a normal ciphertext, 2 after a multiplication without relinearization).
    pub fn degree(&self) -> usize {
        self.polys.len() - 1
    }
    /// Overrides the scale label (explicit alignment of nearly equal scales; use with care).
    pub fn set_scale(&mut self, scale: f64) {
        self.scale = scale;
    }
    /// The polynomials (NTT form).
    pub fn polys(&self) -> &[Poly<Ntt>] {
        &self.polys
    }
}

/// A symmetric ciphertext whose `c1` is regenerated from a 32-byte seed (half the size).
#[derive(Debug, Clone, PartialEq)]
pub struct SeededCiphertext {
    pub(crate) c0: Poly<Ntt>,
    pub(crate) seed: [u8; 32],
    pub(crate) scale: f64,
    pub(crate) slots: usize,
}

impl SeededCiphertext {
    /// Level of the ciphertext.
    pub fn level(&self) -> usize {
        self.c0.nq - 1
    }
    /// Regenerates `c1` and returns the full ciphertext.
    pub fn expand(&self, params: &Parameters) -> Ciphertext {
        let ctx = &params.ctx;
        let c1 = rng::uniform_poly(&mut Prng::from_seed(self.seed), ctx, self.c0.nq, 0);
        Ciphertext {
            polys: vec![self.c0.clone(), c1],
            scale: self.scale,
            slots: self.slots,
        }
    }
}

/// A small polynomial in NTT form over `nq` q-limbs and all special primes.
fn small_ntt(params: &Parameters, coeffs: &[i64], nq: usize) -> Poly<Ntt> {
    Poly::from_signed(params, coeffs, nq, true).into_ntt_ctx(&params.ctx)
}

/// The plaintext's first `nq` limbs multiplied by P, over Q_l * P (zero on the P limbs).
fn scaled_by_p(ctx: &Context, pt: &Poly<Ntt>, nq: usize) -> Poly<Ntt> {
    let mut out = Poly::<Ntt>::zero_ctx(ctx, nq, ctx.p_count);
    let n = ctx.n;
    for i in 0..nq {
        let m = &ctx.moduli[i];
        let p = ctx.moduli[ctx.q_count..]
            .iter()
            .fold(1u64, |acc, pm| m.mul(acc, m.reduce(pm.value())));
        let ps = m.shoup(p);
        for (o, &x) in out.data[i * n..(i + 1) * n].iter_mut().zip(pt.limb(i)) {
            *o = m.mul_shoup(x, p, ps);
        }
    }
    out
}

/// The first `nq` q-limbs and all P limbs of a full-basis polynomial.
fn restrict(p: &Poly<Ntt>, ctx: &Context, nq: usize) -> Poly<Ntt> {
    let n = ctx.n;
    let mut data = p.data[..nq * n].to_vec();
    data.extend_from_slice(&p.data[p.nq * n..]);
    Poly::from_data(data, n, nq, p.np)
}

/// Public-key encryptor.
#[derive(Debug)]
pub struct Encryptor {
    pk: PublicKey,
    rng: Prng,
}

impl Encryptor {
    /// An encryptor with a CSPRNG seeded from the operating system.
    #[cfg(feature = "os-rng")]
    pub fn new(pk: &PublicKey) -> Self {
        Self::from_seed(pk, rng::os_seed())
    }

    /// A deterministic encryptor (tests, or a seed from another CSPRNG).
    pub fn from_seed(pk: &PublicKey, seed: [u8; 32]) -> Self {
        Self {
            pk: pk.clone(),
            rng: Prng::from_seed(seed),
        }
    }

    /// Encrypts a plaintext at its level: `(b u + e0 + P m, a u + e1)` over Q_l * P, divided by P.
    pub fn encrypt(&mut self, pt: &Plaintext) -> Result<Ciphertext> {
        let params = &self.pk.params;
        let ctx = &params.ctx;
        let nq = pt.poly.nq;
        if nq > ctx.q_count {
            return Err(Error::LevelOutOfRange {
                level: nq - 1,
                max: ctx.q_count - 1,
            });
        }
        let sigma = params.literal().error_std;
        let u = small_ntt(params, &rng::ternary(&mut self.rng, ctx.n), nq);
        let e0 = small_ntt(params, &rng::gaussian(&mut self.rng, ctx.n, sigma), nq);
        let e1 = small_ntt(params, &rng::gaussian(&mut self.rng, ctx.n, sigma), nq);
        let b = restrict(&self.pk.b, ctx, nq);
        let a = restrict(&self.pk.a, ctx, nq);
        let mut c0 = e0;
        c0.mul_acc_ctx(ctx, &b, &u);
        c0.add_assign_ctx(ctx, &scaled_by_p(ctx, &pt.poly, nq));
        let mut c1 = e1;
        c1.mul_acc_ctx(ctx, &a, &u);
        Ok(Ciphertext {
            polys: vec![mod_down(ctx, c0), mod_down(ctx, c1)],
            scale: pt.scale,
            slots: pt.slots,
        })
    }
}

/// Secret-key operations: seeded symmetric encryption and decryption (client side only).
#[derive(Debug)]
pub struct Decryptor<'a> {
    sk: &'a SecretKey,
    rng: Prng,
}

impl<'a> Decryptor<'a> {
    /// A decryptor/symmetric encryptor with a CSPRNG seeded from the operating system.
    #[cfg(feature = "os-rng")]
    pub fn new(sk: &'a SecretKey) -> Self {
        Self::from_seed(sk, rng::os_seed())
    }

    /// A deterministic instance (tests, or a seed from another CSPRNG).
    pub fn from_seed(sk: &'a SecretKey, seed: [u8; 32]) -> Self {
        Self {
            sk,
            rng: Prng::from_seed(seed),
        }
    }

    /// Symmetric encryption `(-a s + e + m, a)` with `a` derived from a fresh 32-byte seed (so
    /// `c1` is regenerated from the seed). Its noise is just `e` (about 4 bits less than
    /// public-key encryption, whose division by P leaves rounding noise times `s`).
    pub fn encrypt_seeded(&mut self, pt: &Plaintext) -> Result<SeededCiphertext> {
        let params = &self.sk.params;
        let ctx = &params.ctx;
        let nq = pt.poly.nq;
        if nq > ctx.q_count {
            return Err(Error::LevelOutOfRange {
                level: nq - 1,
                max: ctx.q_count - 1,
            });
        }
        let mut seed = [0u8; 32];
        self.rng.fill_bytes(&mut seed);
        let a = rng::uniform_poly(&mut Prng::from_seed(seed), ctx, nq, 0);
        let sigma = params.literal().error_std;
        let e = rng::gaussian(&mut self.rng, ctx.n, sigma);
        let mut c0 = Poly::from_signed(params, &e, nq, false).into_ntt_ctx(ctx);
        c0.add_assign_ctx(ctx, &pt.poly);
        let mut s = self.sk.ntt.clone();
        s.truncate_q(nq);
        let mut as_ = Poly::<Ntt>::zero_ctx(ctx, nq, 0);
        as_.mul_acc_ctx(ctx, &a, &s);
        zeroize::Zeroize::zeroize(&mut s.data);
        c0.sub_assign_ctx(ctx, &as_);
        Ok(SeededCiphertext {
            c0,
            seed,
            scale: pt.scale,
            slots: pt.slots,
        })
    }

    /// Symmetric encryption returning the full ciphertext.
    pub fn encrypt(&mut self, pt: &Plaintext) -> Result<Ciphertext> {
        Ok(self.encrypt_seeded(pt)?.expand(&self.sk.params))
    }

    /// Decrypts `c0 + c1 s (+ c2 s^2)` (see [`SecretKey::decrypt`]).
    pub fn decrypt(&self, ct: &Ciphertext) -> Result<Plaintext> {
        self.sk.decrypt(ct)
    }
}

impl SecretKey {
    /// Decrypts `c0 + c1 s (+ c2 s^2)` (no randomness needed).
    pub fn decrypt(&self, ct: &Ciphertext) -> Result<Plaintext> {
        let params = &self.params;
        let ctx = &params.ctx;
        let nq = ct.polys[0].nq;
        if nq > ctx.q_count {
            return Err(Error::LevelOutOfRange {
                level: nq - 1,
                max: ctx.q_count - 1,
            });
        }
        let mut s = self.ntt.clone();
        s.truncate_q(nq);
        // Horner: ((c_d s + c_{d-1}) s + ...) + c0.
        let mut acc = ct.polys[ct.polys.len() - 1].clone();
        for c in ct.polys[..ct.polys.len() - 1].iter().rev() {
            let mut next = c.clone();
            next.mul_acc_ctx(ctx, &acc, &s);
            acc = next;
        }
        zeroize::Zeroize::zeroize(&mut s.data);
        Ok(Plaintext {
            poly: acc,
            scale: ct.scale,
            slots: ct.slots,
        })
    }
}
