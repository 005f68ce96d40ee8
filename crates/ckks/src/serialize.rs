//! Versioned binary serialization. Every object starts with a header: magic `THXC`, format
//! version, object type and the 64-bit parameter id; readers check all of them, bound every length
//! by the parameters before allocating, and check every residue is reduced.
//!
//! Public keys, relinearization and Galois keys are stored seeded (only `b`; `a` is regenerated
//! from a 32-byte seed), as are [`SeededCiphertext`]s. Residues are bit-packed: limb `k` of a
//! polynomial takes `N·b_k` bits, `b_k` the bit length of its prime (so a 40-bit prime costs 40
//! bits, not 64), little-endian, zero-padded to a byte. Version 1 (residues as little-endian
//! `u64`) is still read. Galois keys have their own version 3 ([`GALOIS_VERSION`]): they switch
//! from `s` to `σ⁻¹(s)` (rotations permute after the key switch); earlier ones are refused.
//! The format has no MAC: flips of low-order payload bits give another valid object.

use crate::encoder::Plaintext;
use crate::encrypt::{Ciphertext, SeededCiphertext};
use crate::error::{DeserializeError as DE, Result};
use crate::keys::{GaloisKey, GaloisKeys, PublicKey, RelinKey, SecretKey, expand_key_a};
use crate::ks::{KeySwitchKey, galois_perm};
use crate::params::{Context, Parameters};
use crate::poly::{Ntt, Poly};
use crate::rng::{self, Prng};
use rand_core::SeedableRng;

/// Magic number `THXC` (little-endian).
pub const MAGIC: u32 = u32::from_le_bytes(*b"THXC");
/// Current format version (written for every object but Galois keys); versions 1 and 2 are read.
pub const VERSION: u16 = 2;
/// The first version with bit-packed residues.
const PACKED_SINCE: u16 = 2;
/// The version of Galois keys, the only one read for them: from it they switch from `s` to
/// `σ⁻¹(s)` (see [`GaloisKeys`]); earlier ones (to `σ(s)`) would rotate wrongly.
pub const GALOIS_VERSION: u16 = 3;

/// The versions read for objects of type `ty`.
fn versions(ty: ObjectType) -> std::ops::RangeInclusive<u16> {
    match ty {
        ObjectType::GaloisKeys => GALOIS_VERSION..=GALOIS_VERSION,
        _ => 1..=VERSION,
    }
}

/// Object type tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
#[non_exhaustive]
pub enum ObjectType {
    /// [`Ciphertext`].
    Ciphertext = 1,
    /// [`SeededCiphertext`].
    SeededCiphertext = 2,
    /// [`Plaintext`].
    Plaintext = 3,
    /// [`PublicKey`].
    PublicKey = 4,
    /// [`RelinKey`].
    RelinKey = 5,
    /// [`GaloisKeys`].
    GaloisKeys = 6,
    /// [`SecretKey`] (only through the explicit secret-key calls).
    SecretKey = 7,
}

struct Writer(Vec<u8>);

impl Writer {
    fn new(params: &Parameters, ty: ObjectType, capacity: usize) -> Self {
        let mut w = Writer(Vec::with_capacity(capacity + 15));
        w.u32(MAGIC);
        w.u16(*versions(ty).end());
        w.u8(ty as u8);
        w.u64(params.id());
        w
    }
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn f64(&mut self, v: f64) {
        self.u64(v.to_bits());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    fn poly(&mut self, ctx: &Context, p: &Poly<Ntt>) {
        self.u8(p.nq as u8);
        self.u8(p.np as u8);
        for (k, limb) in p.data.chunks_exact(ctx.n).enumerate() {
            let bits = limb_bits(ctx, p.nq, k);
            let mut acc = 0u128;
            let mut filled = 0u32;
            for &x in limb {
                acc |= (x as u128) << filled;
                filled += bits;
                if filled >= 64 {
                    self.u64(acc as u64);
                    acc >>= 64;
                    filled -= 64;
                }
            }
            let tail = filled.div_ceil(8) as usize;
            self.bytes(&(acc as u64).to_le_bytes()[..tail]);
        }
    }
}

/// Bit length of the prime of limb `k` of a polynomial with `nq` q-limbs.
fn limb_bits(ctx: &Context, nq: usize, k: usize) -> u32 {
    let q = ctx.moduli[ctx.modulus_index(nq, k)].value();
    64 - (q - 1).leading_zeros()
}

/// Bytes of one bit-packed limb of `n` residues of `bits` bits.
fn packed_limb_bytes(n: usize, bits: u32) -> usize {
    (n * bits as usize).div_ceil(8)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Format version from the header.
    version: u16,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], DE> {
        if self.buf.len() - self.pos < n {
            return Err(DE::Truncated {
                offset: self.pos,
                needed: n,
                available: self.buf.len() - self.pos,
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn need(&self, n: usize) -> std::result::Result<(), DE> {
        if self.remaining() < n {
            return Err(DE::Truncated {
                offset: self.pos,
                needed: n,
                available: self.remaining(),
            });
        }
        Ok(())
    }
    fn u8(&mut self) -> std::result::Result<u8, DE> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> std::result::Result<u16, DE> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> std::result::Result<u32, DE> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> std::result::Result<u64, DE> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn seed(&mut self) -> std::result::Result<[u8; 32], DE> {
        Ok(self.take(32)?.try_into().expect("32"))
    }
    /// A scale: finite, >= 1 and below 2^1000.
    fn scale(&mut self) -> std::result::Result<f64, DE> {
        let bits = self.u64()?;
        let v = f64::from_bits(bits);
        if !(v.is_finite() && (1.0..2f64.powi(1000)).contains(&v)) {
            return Err(DE::InvalidValue {
                field: "scale",
                value: bits,
            });
        }
        Ok(v)
    }
    /// A slot count: a power of two <= N/2.
    fn slots(&mut self, ctx: &Context) -> std::result::Result<usize, DE> {
        let v = self.u32()? as u64;
        if v > (ctx.n / 2) as u64 {
            return Err(DE::LimitExceeded {
                field: "slots",
                value: v,
                limit: (ctx.n / 2) as u64,
            });
        }
        if !v.is_power_of_two() {
            return Err(DE::InvalidValue {
                field: "slots",
                value: v,
            });
        }
        Ok(v as usize)
    }
    fn header(&mut self, params: &Parameters, ty: ObjectType) -> std::result::Result<(), DE> {
        let magic = self.u32()?;
        if magic != MAGIC {
            return Err(DE::BadMagic { found: magic });
        }
        let version = self.u16()?;
        let t = self.u8()?;
        if t != ty as u8 {
            return Err(DE::WrongType {
                found: t,
                expected: ty as u8,
            });
        }
        if !versions(ty).contains(&version) {
            return Err(DE::BadVersion {
                found: version,
                supported: *versions(ty).end(),
            });
        }
        self.version = version;
        let id = self.u64()?;
        if id != params.id() {
            return Err(DE::ParametersMismatch {
                found: id,
                expected: params.id(),
            });
        }
        Ok(())
    }
    /// A polynomial whose limb counts must be `nq` in `nq_range` and `np` in `np_allowed`.
    fn poly(
        &mut self,
        ctx: &Context,
        nq_range: std::ops::RangeInclusive<usize>,
        np_allowed: &[usize],
    ) -> std::result::Result<Poly<Ntt>, DE> {
        let nq = self.u8()? as usize;
        if nq > *nq_range.end() {
            return Err(DE::LimitExceeded {
                field: "q limbs",
                value: nq as u64,
                limit: *nq_range.end() as u64,
            });
        }
        if !nq_range.contains(&nq) {
            return Err(DE::InvalidValue {
                field: "q limbs",
                value: nq as u64,
            });
        }
        let np = self.u8()? as usize;
        if !np_allowed.contains(&np) {
            return Err(DE::InvalidValue {
                field: "p limbs",
                value: np as u64,
            });
        }
        let packed = self.version >= PACKED_SINCE;
        self.need(match packed {
            true => packed_poly_bytes(ctx, nq, np),
            false => 8 * ctx.n * (nq + np),
        })?;
        let mut data = Vec::with_capacity(ctx.n * (nq + np));
        for k in 0..nq + np {
            let q = ctx.moduli[ctx.modulus_index(nq, k)].value();
            let start = data.len();
            if packed {
                let bits = limb_bits(ctx, nq, k);
                let bytes = self.take(packed_limb_bytes(ctx.n, bits))?;
                unpack_limb(bytes, bits, ctx.n, &mut data)?;
            } else {
                for _ in 0..ctx.n {
                    data.push(self.u64()?);
                }
            }
            if let Some(&v) = data[start..].iter().find(|&&v| v >= q) {
                return Err(DE::Unreduced {
                    value: v,
                    modulus: q,
                });
            }
        }
        Ok(Poly::from_data(data, ctx.n, nq, np))
    }
    fn finish(self) -> std::result::Result<(), DE> {
        match self.remaining() {
            0 => Ok(()),
            r => Err(DE::TrailingBytes(r)),
        }
    }
}

/// Appends `n` residues of `bits` bits unpacked from `bytes` to `out`; the padding bits after
/// the last residue must be zero.
fn unpack_limb(
    bytes: &[u8],
    bits: u32,
    n: usize,
    out: &mut Vec<u64>,
) -> std::result::Result<(), DE> {
    let mask = (1u128 << bits) - 1;
    let mut words = bytes.chunks(8);
    let mut acc = 0u128;
    let mut filled = 0u32;
    for _ in 0..n {
        if filled < bits {
            let chunk = words.next().unwrap_or(&[]);
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            acc |= (u64::from_le_bytes(w) as u128) << filled;
            filled += 8 * chunk.len() as u32;
        }
        out.push((acc & mask) as u64);
        acc >>= bits;
        filled -= bits;
    }
    if acc != 0 {
        return Err(DE::InvalidValue {
            field: "padding bits",
            value: acc as u64,
        });
    }
    Ok(())
}

fn reader(bytes: &[u8]) -> Reader<'_> {
    Reader {
        buf: bytes,
        pos: 0,
        version: VERSION,
    }
}

/// Bytes of the bit-packed residues of a polynomial with `nq` q-limbs and `np` p-limbs.
fn packed_poly_bytes(ctx: &Context, nq: usize, np: usize) -> usize {
    (0..nq + np)
        .map(|k| packed_limb_bytes(ctx.n, limb_bits(ctx, nq, k)))
        .sum()
}

/// Serialized bytes of a polynomial (limb counts and residues).
fn poly_bytes(ctx: &Context, p: &Poly<Ntt>) -> usize {
    2 + packed_poly_bytes(ctx, p.nq, p.np)
}

impl Ciphertext {
    /// Serializes under `params` (header, degree, scale, slots, polynomials).
    pub fn to_bytes(&self, params: &Parameters) -> Vec<u8> {
        let size = self
            .polys
            .iter()
            .map(|p| poly_bytes(&params.ctx, p))
            .sum::<usize>()
            + 13;
        let mut w = Writer::new(params, ObjectType::Ciphertext, size);
        w.u8(self.polys.len() as u8);
        w.f64(self.scale);
        w.u32(self.slots as u32);
        for p in &self.polys {
            w.poly(&params.ctx, p);
        }
        w.0
    }

    /// Reads a ciphertext made under `params`.
    pub fn from_bytes(params: &Parameters, bytes: &[u8]) -> Result<Self> {
        let ctx = &params.ctx;
        let mut r = reader(bytes);
        r.header(params, ObjectType::Ciphertext)?;
        let count = r.u8()?;
        if !(2..=3).contains(&count) {
            return Err(DE::InvalidValue {
                field: "polynomial count",
                value: count as u64,
            }
            .into());
        }
        let scale = r.scale()?;
        let slots = r.slots(ctx)?;
        let first = r.poly(ctx, 1..=ctx.q_count, &[0])?;
        let nq = first.nq;
        let mut polys = vec![first];
        for _ in 1..count {
            polys.push(r.poly(ctx, nq..=nq, &[0])?);
        }
        r.finish()?;
        Ok(Self {
            polys,
            scale,
            slots,
        })
    }
}

impl SeededCiphertext {
    /// Serializes under `params` (about half the size of the full ciphertext).
    pub fn to_bytes(&self, params: &Parameters) -> Vec<u8> {
        let mut w = Writer::new(
            params,
            ObjectType::SeededCiphertext,
            poly_bytes(&params.ctx, &self.c0) + 44,
        );
        w.f64(self.scale);
        w.u32(self.slots as u32);
        w.bytes(&self.seed);
        w.poly(&params.ctx, &self.c0);
        w.0
    }

    /// Bytes of a seeded ciphertext at `level` as [`SeededCiphertext::to_bytes`] writes it.
    pub fn serialized_len(params: &Parameters, level: usize) -> usize {
        HEADER_BYTES + 8 + 4 + 32 + 2 + packed_poly_bytes(&params.ctx, level + 1, 0)
    }

    /// Reads a seeded ciphertext made under `params`.
    pub fn from_bytes(params: &Parameters, bytes: &[u8]) -> Result<Self> {
        let ctx = &params.ctx;
        let mut r = reader(bytes);
        r.header(params, ObjectType::SeededCiphertext)?;
        let scale = r.scale()?;
        let slots = r.slots(ctx)?;
        let seed = r.seed()?;
        let c0 = r.poly(ctx, 1..=ctx.q_count, &[0])?;
        r.finish()?;
        Ok(Self {
            c0,
            seed,
            scale,
            slots,
        })
    }
}

impl Plaintext {
    /// Serializes under `params`.
    pub fn to_bytes(&self, params: &Parameters) -> Vec<u8> {
        let mut w = Writer::new(
            params,
            ObjectType::Plaintext,
            poly_bytes(&params.ctx, &self.poly) + 12,
        );
        w.f64(self.scale);
        w.u32(self.slots as u32);
        w.poly(&params.ctx, &self.poly);
        w.0
    }

    /// Reads a plaintext made under `params`.
    pub fn from_bytes(params: &Parameters, bytes: &[u8]) -> Result<Self> {
        let ctx = &params.ctx;
        let mut r = reader(bytes);
        r.header(params, ObjectType::Plaintext)?;
        let scale = r.scale()?;
        let slots = r.slots(ctx)?;
        let poly = r.poly(ctx, 1..=ctx.q_count, &[0])?;
        r.finish()?;
        Ok(Self { poly, scale, slots })
    }
}

impl PublicKey {
    /// Serializes (seeded: `b` and the seed of `a`).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new(
            &self.params,
            ObjectType::PublicKey,
            poly_bytes(&self.params.ctx, &self.b) + 32,
        );
        w.bytes(&self.seed);
        w.poly(&self.params.ctx, &self.b);
        w.0
    }

    /// Reads a public key made under `params`.
    pub fn from_bytes(params: &Parameters, bytes: &[u8]) -> Result<Self> {
        let ctx = &params.ctx;
        let mut r = reader(bytes);
        r.header(params, ObjectType::PublicKey)?;
        let seed = r.seed()?;
        let b = r.poly(ctx, ctx.q_count..=ctx.q_count, &[ctx.p_count])?;
        r.finish()?;
        let a = rng::uniform_poly(&mut Prng::from_seed(seed), ctx, ctx.q_count, ctx.p_count);
        Ok(Self {
            params: params.clone(),
            b,
            a,
            seed,
        })
    }
}

fn write_ksk(w: &mut Writer, ctx: &Context, k: &KeySwitchKey) {
    w.bytes(&k.seed);
    for b in &k.b {
        w.poly(ctx, b);
    }
}

/// Bytes of one serialized key-switching key in the current format.
fn ksk_bytes(ctx: &Context) -> usize {
    32 + ctx.dnum * (2 + packed_poly_bytes(ctx, ctx.q_count, ctx.p_count))
}

fn read_ksk(r: &mut Reader<'_>, ctx: &Context) -> std::result::Result<KeySwitchKey, DE> {
    let seed = r.seed()?;
    let b = (0..ctx.dnum)
        .map(|_| r.poly(ctx, ctx.q_count..=ctx.q_count, &[ctx.p_count]))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(KeySwitchKey {
        b,
        a: expand_key_a(ctx, seed),
        seed,
    })
}

impl RelinKey {
    /// Serializes (seeded).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new(
            &self.params,
            ObjectType::RelinKey,
            ksk_bytes(&self.params.ctx),
        );
        write_ksk(&mut w, &self.params.ctx, &self.key);
        w.0
    }

    /// Bytes of a relinearization key as [`RelinKey::to_bytes`] writes it.
    pub fn serialized_len(params: &Parameters) -> usize {
        HEADER_BYTES + ksk_bytes(&params.ctx)
    }

    /// Memory of an expanded relinearization key, what reading it allocates.
    pub fn expanded_len(params: &Parameters) -> usize {
        expanded_ksk_bytes(&params.ctx)
    }

    /// Reads a relinearization key made under `params`.
    pub fn from_bytes(params: &Parameters, bytes: &[u8]) -> Result<Self> {
        let mut r = reader(bytes);
        r.header(params, ObjectType::RelinKey)?;
        let key = read_ksk(&mut r, &params.ctx)?;
        r.finish()?;
        Ok(Self {
            params: params.clone(),
            key,
        })
    }
}

impl GaloisKeys {
    /// Serializes (seeded).
    pub fn to_bytes(&self) -> Vec<u8> {
        let ctx = &self.params.ctx;
        let per = 8 + ksk_bytes(ctx);
        let mut w = Writer::new(
            &self.params,
            ObjectType::GaloisKeys,
            4 + per * self.keys.len(),
        );
        w.u32(self.keys.len() as u32);
        for (&g, k) in &self.keys {
            w.u64(g);
            write_ksk(&mut w, &self.params.ctx, &k.key);
        }
        w.0
    }

    /// Reads Galois keys made under `params`.
    pub fn from_bytes(params: &Parameters, bytes: &[u8]) -> Result<Self> {
        read_galois(params, bytes, None)
    }

    /// Reads Galois keys that must be for exactly `elements` (ascending, distinct): the size,
    /// the count and each element are checked before its key is expanded, so a key set other
    /// than the expected one costs no key expansion.
    pub fn from_bytes_exact(params: &Parameters, bytes: &[u8], elements: &[u64]) -> Result<Self> {
        let want = Self::serialized_len(params, elements.len());
        if bytes.len() != want {
            return Err(DE::Unexpected {
                field: "Galois key bytes",
                found: bytes.len() as u64,
                expected: want as u64,
            }
            .into());
        }
        read_galois(params, bytes, Some(elements))
    }

    /// Bytes of `count` Galois keys as [`GaloisKeys::to_bytes`] writes them.
    pub fn serialized_len(params: &Parameters, count: usize) -> usize {
        HEADER_BYTES + 4 + count * (8 + ksk_bytes(&params.ctx))
    }

    /// Memory of `count` expanded Galois keys (both halves of every digit and the slot
    /// permutation), what reading them allocates.
    pub fn expanded_len(params: &Parameters, count: usize) -> usize {
        let ctx = &params.ctx;
        count * (expanded_ksk_bytes(ctx) + 4 * ctx.n)
    }
}

/// Bytes of an object header: magic, version, type, parameter id.
const HEADER_BYTES: usize = 4 + 2 + 1 + 8;

/// Memory of one expanded key-switching key: `b` and `a` of every digit.
fn expanded_ksk_bytes(ctx: &Context) -> usize {
    2 * ctx.dnum * (ctx.q_count + ctx.p_count) * ctx.n * 8
}

fn read_galois(params: &Parameters, bytes: &[u8], expected: Option<&[u64]>) -> Result<GaloisKeys> {
    let ctx = &params.ctx;
    let mut r = reader(bytes);
    r.header(params, ObjectType::GaloisKeys)?;
    let count = r.u32()? as u64;
    if let Some(e) = expected
        && count != e.len() as u64
    {
        return Err(DE::Unexpected {
            field: "Galois key count",
            found: count,
            expected: e.len() as u64,
        }
        .into());
    }
    // At most N/2 rotations (all distinct Galois elements) plus conjugation.
    let limit = (ctx.n / 2) as u64;
    if count > limit {
        return Err(DE::LimitExceeded {
            field: "Galois key count",
            value: count,
            limit,
        }
        .into());
    }
    r.need(count as usize * (8 + ksk_bytes(ctx)))?;
    let mut keys = std::collections::BTreeMap::new();
    let mut last = 0u64;
    for i in 0..count as usize {
        let g = r.u64()?;
        if g <= last || g % 2 == 0 || g >= 2 * ctx.n as u64 {
            return Err(DE::InvalidValue {
                field: "Galois element",
                value: g,
            }
            .into());
        }
        if let Some(e) = expected
            && e[i] != g
        {
            return Err(DE::Unexpected {
                field: "Galois element",
                found: g,
                expected: e[i],
            }
            .into());
        }
        last = g;
        let key = read_ksk(&mut r, ctx)?;
        keys.insert(
            g,
            GaloisKey {
                perm: galois_perm(ctx, g),
                key,
            },
        );
    }
    r.finish()?;
    Ok(GaloisKeys {
        params: params.clone(),
        keys,
    })
}

impl SecretKey {
    /// Serializes the SECRET key (coefficients in {-1, 0, 1}). Only for storage on the client.
    pub fn to_bytes_secret(&self) -> Vec<u8> {
        let mut w = Writer::new(&self.params, ObjectType::SecretKey, self.coeffs.len());
        for &c in &self.coeffs {
            w.u8(c as i8 as u8);
        }
        w.0
    }

    /// Reads a secret key written by [`SecretKey::to_bytes_secret`].
    pub fn from_bytes_secret(params: &Parameters, bytes: &[u8]) -> Result<Self> {
        let mut r = reader(bytes);
        r.header(params, ObjectType::SecretKey)?;
        let raw = r.take(params.n())?;
        let coeffs = raw
            .iter()
            .map(|&b| match b as i8 {
                c @ -1..=1 => Ok(c as i64),
                _ => Err(DE::InvalidValue {
                    field: "secret coefficient",
                    value: b as u64,
                }),
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        r.finish()?;
        Ok(SecretKey::from_coeffs(params, coeffs))
    }
}
