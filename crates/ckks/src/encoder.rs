//! Canonical-embedding encoder: real or complex vectors into `slots <= N/2` slots (sparse packing
//! for fewer slots) via the special FFT, at any scale and level; plaintexts are kept in NTT form.

use crate::error::{Error, Result};
use crate::params::{Context, Parameters};
use crate::poly::{Coeff, Ntt, Poly};

/// A complex number (slot value).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Complex64 {
    /// Real part.
    pub re: f64,
    /// Imaginary part.
    pub im: f64,
}

impl Complex64 {
    /// `re + i im`.
    pub const fn new(re: f64, im: f64) -> Self {
        Self { re, im }
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        Self::new(self.re + o.re, self.im + o.im)
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        Self::new(self.re - o.re, self.im - o.im)
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        Self::new(
            self.re * o.re - self.im * o.im,
            self.re * o.im + self.im * o.re,
        )
    }
}

/// An encoded message: a polynomial in NTT form at some level, with its scale and slot count.
#[derive(Debug, Clone, PartialEq)]
pub struct Plaintext {
    pub(crate) poly: Poly<Ntt>,
    pub(crate) scale: f64,
    pub(crate) slots: usize,
}

impl Plaintext {
    /// Level (number of primes minus one).
    pub fn level(&self) -> usize {
        self.poly.nq - 1
    }
    /// Scale of the encoding.
    pub fn scale(&self) -> f64 {
        self.scale
    }
    /// Number of slots (a power of two).
    pub fn slots(&self) -> usize {
        self.slots
    }
    /// The underlying polynomial (NTT form).
    pub fn poly(&self) -> &Poly<Ntt> {
        &self.poly
    }
}

/// An encoded message kept as its integer coefficients (one `i64` each, whatever the level):
/// `level + 1` times smaller than a [`Plaintext`]. Products with it
/// ([`crate::Evaluator::multiply_compact_acc`]) transform it to NTT form limb by limb on the
/// fly and are bit-identical to products with the [`Plaintext`] of the same values.
#[derive(Debug, Clone, PartialEq)]
pub struct CompactPlaintext {
    pub(crate) coeffs: Vec<i64>,
    pub(crate) level: usize,
    pub(crate) scale: f64,
    pub(crate) slots: usize,
}

impl CompactPlaintext {
    /// Level (number of primes minus one) of the equivalent [`Plaintext`].
    pub fn level(&self) -> usize {
        self.level
    }
    /// Scale of the encoding.
    pub fn scale(&self) -> f64 {
        self.scale
    }
    /// Number of slots (a power of two).
    pub fn slots(&self) -> usize {
        self.slots
    }
    /// The rounded integer coefficients.
    pub fn coeffs(&self) -> &[i64] {
        &self.coeffs
    }
    /// Bytes held by the coefficients.
    pub fn heap_bytes(&self) -> usize {
        self.coeffs.len() * std::mem::size_of::<i64>()
    }
    /// The same plaintext in NTT form.
    pub fn expand(&self, params: &Parameters) -> Plaintext {
        let ctx = &params.ctx;
        let mut p = Poly::<Coeff>::zero_ctx(ctx, self.level + 1, 0);
        p.set_signed_ctx(ctx, &self.coeffs);
        Plaintext {
            poly: p.into_ntt_ctx(ctx),
            scale: self.scale,
            slots: self.slots,
        }
    }
}

/// Encodes and decodes slot vectors. Holds the FFT tables; create once per parameter set.
#[derive(Debug, Clone)]
pub struct Encoder {
    params: Parameters,
    /// exp(2 pi i k / 2N) for k in 0..=2N.
    ksi: Vec<Complex64>,
    /// 5^j mod 2N for j < N/2.
    rot_group: Vec<usize>,
}

fn bit_reverse<T>(v: &mut [T]) {
    let n = v.len();
    if n <= 2 {
        return;
    }
    let bits = n.trailing_zeros();
    for i in 0..n {
        let j = i.reverse_bits() >> (usize::BITS - bits);
        if i < j {
            v.swap(i, j);
        }
    }
}

impl Encoder {
    /// Builds the tables for `params`.
    pub fn new(params: &Parameters) -> Self {
        let m = 2 * params.n();
        let ksi = (0..=m)
            .map(|k| {
                let a = 2.0 * std::f64::consts::PI * k as f64 / m as f64;
                Complex64::new(a.cos(), a.sin())
            })
            .collect();
        let mut rot_group = Vec::with_capacity(m / 4);
        let mut g = 1usize;
        for _ in 0..m / 4 {
            rot_group.push(g);
            g = g * 5 % m;
        }
        Self {
            params: params.clone(),
            ksi,
            rot_group,
        }
    }

    /// The parameters of this encoder.
    pub fn params(&self) -> &Parameters {
        &self.params
    }

    fn m(&self) -> usize {
        2 * self.params.n()
    }

    /// Slots -> coefficients (inverse of the canonical embedding restricted to the slot orbit).
    fn fft_special_inv(&self, vals: &mut [Complex64]) {
        let size = vals.len();
        let m = self.m();
        let mut len = size;
        while len >= 1 {
            let lenh = len >> 1;
            let lenq = len << 2;
            let gap = m / lenq;
            for i in (0..size).step_by(len) {
                for j in 0..lenh {
                    let idx = (lenq - (self.rot_group[j] % lenq)) * gap;
                    let u = vals[i + j].add(vals[i + j + lenh]);
                    let v = vals[i + j].sub(vals[i + j + lenh]).mul(self.ksi[idx]);
                    vals[i + j] = u;
                    vals[i + j + lenh] = v;
                }
            }
            len >>= 1;
        }
        bit_reverse(vals);
        let inv = 1.0 / size as f64;
        for v in vals.iter_mut() {
            v.re *= inv;
            v.im *= inv;
        }
    }

    /// Coefficients -> slots.
    fn fft_special(&self, vals: &mut [Complex64]) {
        let size = vals.len();
        let m = self.m();
        bit_reverse(vals);
        let mut len = 2;
        while len <= size {
            let lenh = len >> 1;
            let lenq = len << 2;
            let gap = m / lenq;
            for i in (0..size).step_by(len) {
                for j in 0..lenh {
                    let idx = (self.rot_group[j] % lenq) * gap;
                    let u = vals[i + j];
                    let v = vals[i + j + lenh].mul(self.ksi[idx]);
                    vals[i + j] = u.add(v);
                    vals[i + j + lenh] = u.sub(v);
                }
            }
            len <<= 1;
        }
    }

    fn check(&self, len: usize, level: usize, scale: f64) -> Result<usize> {
        let max = self.params.max_slots();
        if len > max {
            return Err(Error::TooManyValues { len, max });
        }
        if level > self.params.max_level() {
            return Err(Error::LevelOutOfRange {
                level,
                max: self.params.max_level(),
            });
        }
        if !(scale.is_finite() && scale >= 1.0 && scale < 2f64.powi(120)) {
            return Err(Error::InvalidScale {
                log2_scale: scale.log2(),
            });
        }
        Ok(len.max(1).next_power_of_two())
    }

    /// Encodes real values (at most N/2; fewer give sparse packing into the next power of two).
    pub fn encode(&self, values: &[f64], level: usize, scale: f64) -> Result<Plaintext> {
        let c: Vec<Complex64> = values.iter().map(|&x| Complex64::new(x, 0.0)).collect();
        self.encode_complex(&c, level, scale)
    }

    /// Encodes complex values.
    pub fn encode_complex(
        &self,
        values: &[Complex64],
        level: usize,
        scale: f64,
    ) -> Result<Plaintext> {
        let (coeffs, slots) = self.coefficients(values, level, scale, 126)?;
        let ctx = &self.params.ctx;
        let poly = poly_from_i128(ctx, &coeffs, level + 1).into_ntt_ctx(ctx);
        Ok(Plaintext { poly, scale, slots })
    }

    /// Encodes real values into a [`CompactPlaintext`] (coefficients must fit `i64`: values
    /// times the scale below about 2^62).
    pub fn encode_compact(
        &self,
        values: &[f64],
        level: usize,
        scale: f64,
    ) -> Result<CompactPlaintext> {
        let c: Vec<Complex64> = values.iter().map(|&x| Complex64::new(x, 0.0)).collect();
        let (coeffs, slots) = self.coefficients(&c, level, scale, 62)?;
        Ok(CompactPlaintext {
            coeffs: coeffs.into_iter().map(|c| c as i64).collect(),
            level,
            scale,
            slots,
        })
    }

    /// The rounded coefficients of `values` at `scale` (each below `2^log2_limit`) and the
    /// slot count.
    fn coefficients(
        &self,
        values: &[Complex64],
        level: usize,
        scale: f64,
        log2_limit: i32,
    ) -> Result<(Vec<i128>, usize)> {
        let slots = self.check(values.len(), level, scale)?;
        let mut vals = vec![Complex64::default(); slots];
        vals[..values.len()].copy_from_slice(values);
        self.fft_special_inv(&mut vals);
        let n = self.params.ctx.n;
        let gap = n / 2 / slots;
        let mut coeffs = vec![0i128; n];
        let limit = 2f64.powi(log2_limit);
        for (i, v) in vals.iter().enumerate() {
            for (k, x) in [(i * gap, v.re), (n / 2 + i * gap, v.im)] {
                let y = (x * scale).round();
                if y.is_nan() || y.abs() >= limit {
                    return Err(Error::EncodingOverflow {
                        value: x,
                        log2_scale: scale.log2(),
                    });
                }
                coeffs[k] = y as i128;
            }
        }
        Ok((coeffs, slots))
    }

    /// Decodes to real values (the real parts of the slots).
    pub fn decode(&self, pt: &Plaintext) -> Vec<f64> {
        self.decode_complex(pt).into_iter().map(|c| c.re).collect()
    }

    /// Decodes to complex slot values.
    pub fn decode_complex(&self, pt: &Plaintext) -> Vec<Complex64> {
        let ctx = &self.params.ctx;
        let n = ctx.n;
        let slots = pt.slots;
        let gap = n / 2 / slots;
        let coeff = pt.poly.clone().into_coeff_ctx(ctx);
        let lift = CrtLifter::new(ctx, coeff.nq);
        let mut vals: Vec<Complex64> = (0..slots)
            .map(|i| {
                Complex64::new(
                    lift.lift(&coeff, i * gap) / pt.scale,
                    lift.lift(&coeff, n / 2 + i * gap) / pt.scale,
                )
            })
            .collect();
        self.fft_special(&mut vals);
        vals
    }
}

/// Reduces big signed coefficients into an RNS polynomial with `nq` q-limbs.
pub(crate) fn poly_from_i128(ctx: &Context, coeffs: &[i128], nq: usize) -> Poly<Coeff> {
    let mut p = Poly::<Coeff>::zero_ctx(ctx, nq, 0);
    crate::poly::for_limbs(&mut p.data, ctx.n, |k, a| {
        let m = &ctx.moduli[k];
        for (x, &c) in a.iter_mut().zip(coeffs) {
            *x = m.reduce_i128(c);
        }
    });
    p
}

/// Centered CRT reconstruction (balanced mixed radix, Garner) of coefficients to `f64`.
pub(crate) struct CrtLifter<'a> {
    ctx: &'a Context,
    nq: usize,
    /// `prefix[i][j]` = q_0 ... q_{j-1} mod q_i for j <= i.
    prefix: Vec<Vec<u64>>,
    /// (q_0 ... q_{i-1})^{-1} mod q_i.
    inv_prefix: Vec<u64>,
}

impl<'a> CrtLifter<'a> {
    pub(crate) fn new(ctx: &'a Context, nq: usize) -> Self {
        let mut prefix = Vec::with_capacity(nq);
        let mut inv_prefix = Vec::with_capacity(nq);
        for i in 0..nq {
            let m = &ctx.moduli[i];
            let mut row = vec![1 % m.value()];
            for j in 0..i {
                let last = row[j];
                row.push(m.mul(last, m.reduce(ctx.moduli[j].value())));
            }
            inv_prefix.push(m.inv(row[i]).expect("distinct primes"));
            prefix.push(row);
        }
        Self {
            ctx,
            nq,
            prefix,
            inv_prefix,
        }
    }

    /// The centered integer value of coefficient `idx`, as `f64`.
    pub(crate) fn lift(&self, p: &Poly<Coeff>, idx: usize) -> f64 {
        let n = p.n;
        let mut digits = [0i64; 64];
        let mut digits_vec;
        let d: &mut [i64] = if self.nq <= 64 {
            &mut digits[..self.nq]
        } else {
            digits_vec = vec![0i64; self.nq];
            &mut digits_vec
        };
        for i in 0..self.nq {
            let m = &self.ctx.moduli[i];
            let x = p.data[i * n + idx];
            let mut acc = 0u64;
            for (j, &dj) in d[..i].iter().enumerate() {
                acc = m.add(acc, m.mul(m.reduce_i64(dj), self.prefix[i][j]));
            }
            d[i] = m.center(m.mul(m.sub(x, acc), self.inv_prefix[i]));
        }
        let mut v = 0f64;
        for i in (0..self.nq).rev() {
            v = v * self.ctx.moduli[i].value() as f64 + d[i] as f64;
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::Preset;
    use crate::precision::assert_precision;

    #[test]
    fn round_trip_full_and_sparse() {
        let params = Parameters::preset(Preset::N13L2);
        let enc = Encoder::new(&params);
        for len in [1usize, 3, 8, 100, 4096] {
            let vals: Vec<f64> = (0..len)
                .map(|i| ((i * 37 % 101) as f64 / 50.0) - 1.0)
                .collect();
            for level in [0, 2] {
                let pt = enc.encode(&vals, level, 2f64.powi(40)).unwrap();
                assert_eq!(pt.slots(), len.next_power_of_two());
                assert_eq!(pt.level(), level);
                let out = enc.decode(&pt);
                assert!(out[len..].iter().all(|x| x.abs() < 1e-9));
                assert_precision(&vals, &out[..len], 30.0);
            }
        }
    }

    #[test]
    fn complex_round_trip_and_large_scale() {
        let params = Parameters::preset(Preset::N13L2);
        let enc = Encoder::new(&params);
        let vals: Vec<Complex64> = (0..64)
            .map(|i| Complex64::new((i as f64).sin(), (i as f64 * 0.3).cos()))
            .collect();
        // A scale above 2^63 exercises the 128-bit path (needs Q > 2^100: level 2).
        let pt = enc.encode_complex(&vals, 2, 2f64.powi(80)).unwrap();
        let out = enc.decode_complex(&pt);
        let re: Vec<f64> = vals.iter().map(|c| c.re).collect();
        let im: Vec<f64> = vals.iter().map(|c| c.im).collect();
        assert_precision(&re, &out.iter().map(|c| c.re).collect::<Vec<_>>(), 40.0);
        assert_precision(&im, &out.iter().map(|c| c.im).collect::<Vec<_>>(), 40.0);
    }

    #[test]
    fn encoding_errors() {
        let params = Parameters::preset(Preset::N13L2);
        let enc = Encoder::new(&params);
        assert!(matches!(
            enc.encode(&vec![0.0; 4097], 0, 1e9),
            Err(Error::TooManyValues {
                len: 4097,
                max: 4096
            })
        ));
        assert!(matches!(
            enc.encode(&[1.0], 3, 1e9),
            Err(Error::LevelOutOfRange { level: 3, max: 2 })
        ));
        assert!(matches!(
            enc.encode(&[1.0], 0, f64::NAN),
            Err(Error::InvalidScale { .. })
        ));
        assert!(matches!(
            enc.encode(&[1e30], 0, 2f64.powi(110)),
            Err(Error::EncodingOverflow { .. })
        ));
    }
}
