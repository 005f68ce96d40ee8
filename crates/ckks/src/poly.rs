//! RNS polynomials in `Z_Q[X]/(X^N + 1)` with the representation as a type parameter:
//! [`Poly<Coeff>`] (coefficients) or [`Poly<Ntt>`] (evaluations); products exist only for `Ntt`.

use std::marker::PhantomData;

use crate::params::{Context, Parameters};

/// Coefficient representation marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coeff;
/// NTT (evaluation) representation marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ntt;

/// Representation marker trait (sealed).
pub trait Form: private::Sealed + Send + Sync + 'static {}
impl Form for Coeff {}
impl Form for Ntt {}
mod private {
    pub trait Sealed {}
    impl Sealed for super::Coeff {}
    impl Sealed for super::Ntt {}
}

/// An RNS polynomial over the first `nq` ciphertext primes and, optionally, the special primes.
/// Limb `k` holds the residues modulo prime `k` (q-limbs first, then P-limbs), each fully reduced.
#[derive(Clone, PartialEq, Eq)]
pub struct Poly<F: Form> {
    pub(crate) data: Vec<u64>,
    pub(crate) nq: usize,
    pub(crate) np: usize,
    pub(crate) n: usize,
    _form: PhantomData<F>,
}

impl<F: Form> std::fmt::Debug for Poly<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Poly")
            .field("form", &std::any::type_name::<F>())
            .field("n", &self.n)
            .field("q_limbs", &self.nq)
            .field("p_limbs", &self.np)
            .finish_non_exhaustive()
    }
}

/// Runs `f(limb_index, limb)` over the limbs of `data`, in parallel with the `parallel` feature.
pub(crate) fn for_limbs<G>(data: &mut [u64], n: usize, f: G)
where
    G: Fn(usize, &mut [u64]) + Send + Sync,
{
    #[cfg(feature = "parallel")]
    {
        use rayon::prelude::*;
        data.par_chunks_exact_mut(n)
            .enumerate()
            .for_each(|(k, l)| f(k, l));
    }
    #[cfg(not(feature = "parallel"))]
    data.chunks_exact_mut(n)
        .enumerate()
        .for_each(|(k, l)| f(k, l));
}

/// Like [`for_limbs`] with a second, read-only operand split the same way.
pub(crate) fn for_limbs2<G>(data: &mut [u64], other: &[u64], n: usize, f: G)
where
    G: Fn(usize, &mut [u64], &[u64]) + Send + Sync,
{
    #[cfg(feature = "parallel")]
    {
        use rayon::prelude::*;
        data.par_chunks_exact_mut(n)
            .zip(other.par_chunks_exact(n))
            .enumerate()
            .for_each(|(k, (l, o))| f(k, l, o));
    }
    #[cfg(not(feature = "parallel"))]
    data.chunks_exact_mut(n)
        .zip(other.chunks_exact(n))
        .enumerate()
        .for_each(|(k, (l, o))| f(k, l, o));
}

/// Maps `0..count` to values, in parallel with the `parallel` feature (order preserved).
pub(crate) fn par_map<T: Send, G>(count: usize, f: G) -> Vec<T>
where
    G: Fn(usize) -> T + Send + Sync,
{
    #[cfg(feature = "parallel")]
    {
        use rayon::prelude::*;
        (0..count).into_par_iter().map(f).collect()
    }
    #[cfg(not(feature = "parallel"))]
    (0..count).map(f).collect()
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with a per-thread scratch buffer of `n` words (contents unspecified). `f` must not
/// re-enter `with_scratch` (kernels using it do not call into rayon).
pub(crate) fn with_scratch<R>(n: usize, f: impl FnOnce(&mut [u64]) -> R) -> R {
    SCRATCH.with(|s| {
        let mut v = s.borrow_mut();
        if v.len() < n {
            v.resize(n, 0);
        }
        f(&mut v[..n])
    })
}

impl<F: Form> Poly<F> {
    pub(crate) fn zero_ctx(ctx: &Context, nq: usize, np: usize) -> Self {
        debug_assert!(nq <= ctx.q_count && np <= ctx.p_count && (np == 0 || np == ctx.p_count));
        Self {
            data: vec![0; ctx.n * (nq + np)],
            nq,
            np,
            n: ctx.n,
            _form: PhantomData,
        }
    }

    pub(crate) fn from_data(data: Vec<u64>, n: usize, nq: usize, np: usize) -> Self {
        debug_assert_eq!(data.len(), n * (nq + np));
        Self {
            data,
            nq,
            np,
            n,
            _form: PhantomData,
        }
    }

    /// The zero polynomial over `nq` ciphertext primes (and all special primes if `with_p`).
    pub fn zero(params: &Parameters, nq: usize, with_p: bool) -> Self {
        let np = if with_p { params.ctx.p_count } else { 0 };
        Self::zero_ctx(&params.ctx, nq.min(params.ctx.q_count), np)
    }

    /// Ring degree.
    pub fn n(&self) -> usize {
        self.n
    }
    /// Number of ciphertext-prime limbs.
    pub fn q_limbs(&self) -> usize {
        self.nq
    }
    /// Number of special-prime limbs.
    pub fn p_limbs(&self) -> usize {
        self.np
    }
    /// Residues modulo limb `k`.
    pub fn limb(&self, k: usize) -> &[u64] {
        &self.data[k * self.n..(k + 1) * self.n]
    }
    /// Mutable residues modulo limb `k` (callers keep them reduced).
    pub fn limb_mut(&mut self, k: usize) -> &mut [u64] {
        &mut self.data[k * self.n..(k + 1) * self.n]
    }

    fn same_shape(&self, other: &Self) -> bool {
        self.nq == other.nq && self.np == other.np && self.n == other.n
    }

    /// `self += other` (same basis required).
    pub fn add_assign(&mut self, params: &Parameters, other: &Self) {
        self.add_assign_ctx(&params.ctx, other)
    }

    pub(crate) fn add_assign_ctx(&mut self, ctx: &Context, other: &Self) {
        assert!(self.same_shape(other), "polynomial basis mismatch");
        let nq = self.nq;
        for_limbs2(&mut self.data, &other.data, self.n, |k, a, b| {
            let q = ctx.moduli[ctx.modulus_index(nq, k)].value();
            for (x, &y) in a.iter_mut().zip(b) {
                let s = *x + y;
                *x = if s >= q { s - q } else { s };
            }
        });
    }

    /// `self -= other` (same basis required).
    pub fn sub_assign(&mut self, params: &Parameters, other: &Self) {
        self.sub_assign_ctx(&params.ctx, other)
    }

    pub(crate) fn sub_assign_ctx(&mut self, ctx: &Context, other: &Self) {
        assert!(self.same_shape(other), "polynomial basis mismatch");
        let nq = self.nq;
        for_limbs2(&mut self.data, &other.data, self.n, |k, a, b| {
            let q = ctx.moduli[ctx.modulus_index(nq, k)].value();
            for (x, &y) in a.iter_mut().zip(b) {
                *x = if *x >= y { *x - y } else { *x + q - y };
            }
        });
    }

    /// `self = -self`.
    pub fn neg_assign(&mut self, params: &Parameters) {
        self.neg_assign_ctx(&params.ctx)
    }

    pub(crate) fn neg_assign_ctx(&mut self, ctx: &Context) {
        let nq = self.nq;
        for_limbs(&mut self.data, self.n, |k, a| {
            let q = ctx.moduli[ctx.modulus_index(nq, k)].value();
            for x in a.iter_mut() {
                *x = if *x == 0 { 0 } else { q - *x };
            }
        });
    }

    /// Multiplies by a per-limb scalar given as residues (`scalars[k]` for limb `k`).
    pub(crate) fn mul_scalar_rns_ctx(&mut self, ctx: &Context, scalars: &[u64]) {
        let nq = self.nq;
        for_limbs(&mut self.data, self.n, |k, a| {
            let m = &ctx.moduli[ctx.modulus_index(nq, k)];
            let w = scalars[k];
            let ws = m.shoup(w);
            for x in a.iter_mut() {
                *x = m.mul_shoup(*x, w, ws);
            }
        });
    }

    /// A copy of the first `nq` ciphertext limbs (no special-prime limbs).
    pub(crate) fn prefix_q(&self, nq: usize) -> Self {
        debug_assert!(nq <= self.nq);
        Self::from_data(self.data[..nq * self.n].to_vec(), self.n, nq, 0)
    }

    /// Keeps only the first `nq` ciphertext limbs (drops the top primes and any P limbs).
    pub(crate) fn truncate_q(&mut self, nq: usize) {
        debug_assert!(nq <= self.nq);
        self.data.truncate(nq * self.n);
        self.nq = nq;
        self.np = 0;
    }
}

impl Poly<Coeff> {
    /// Builds a polynomial from small signed coefficients.
    pub fn from_signed(params: &Parameters, coeffs: &[i64], nq: usize, with_p: bool) -> Self {
        let mut p = Self::zero(params, nq, with_p);
        p.set_signed_ctx(&params.ctx, coeffs);
        p
    }

    pub(crate) fn set_signed_ctx(&mut self, ctx: &Context, coeffs: &[i64]) {
        assert_eq!(coeffs.len(), self.n);
        let nq = self.nq;
        for_limbs(&mut self.data, self.n, |k, a| {
            let m = &ctx.moduli[ctx.modulus_index(nq, k)];
            for (x, &c) in a.iter_mut().zip(coeffs) {
                *x = m.reduce_i64(c);
            }
        });
    }

    /// Forward NTT of every limb.
    pub fn into_ntt(self, params: &Parameters) -> Poly<Ntt> {
        self.into_ntt_ctx(&params.ctx)
    }

    pub(crate) fn into_ntt_ctx(mut self, ctx: &Context) -> Poly<Ntt> {
        let nq = self.nq;
        for_limbs(&mut self.data, self.n, |k, a| {
            ctx.plans[ctx.modulus_index(nq, k)].fwd(a)
        });
        Poly::from_data(self.data, self.n, self.nq, self.np)
    }
}

impl Poly<Ntt> {
    /// Inverse NTT of every limb.
    pub fn into_coeff(self, params: &Parameters) -> Poly<Coeff> {
        self.into_coeff_ctx(&params.ctx)
    }

    pub(crate) fn into_coeff_ctx(mut self, ctx: &Context) -> Poly<Coeff> {
        let nq = self.nq;
        for_limbs(&mut self.data, self.n, |k, a| {
            let plan = &ctx.plans[ctx.modulus_index(nq, k)];
            plan.inv(a);
            plan.normalize(a);
        });
        Poly::from_data(self.data, self.n, self.nq, self.np)
    }

    /// `self *= other` pointwise (same basis required).
    pub fn mul_assign(&mut self, params: &Parameters, other: &Self) {
        self.mul_assign_ctx(&params.ctx, other)
    }

    pub(crate) fn mul_assign_ctx(&mut self, ctx: &Context, other: &Self) {
        assert!(
            self.nq <= other.nq && self.np == other.np,
            "polynomial basis mismatch"
        );
        let nq = self.nq;
        let n = self.n;
        // `other` may carry more q-limbs (a plaintext at a higher level): use its prefix.
        let other_data: Vec<&[u64]> = (0..self.nq + self.np)
            .map(|k| {
                let ko = if k < nq { k } else { other.nq + (k - nq) };
                &other.data[ko * n..(ko + 1) * n]
            })
            .collect();
        for_limbs(&mut self.data, n, |k, a| {
            let m = &ctx.moduli[ctx.modulus_index(nq, k)];
            for (x, &y) in a.iter_mut().zip(other_data[k]) {
                *x = m.mul(*x, y);
            }
        });
    }

    /// Whether `other` has every limb of `self` (possibly more q-limbs: its prefix is used).
    fn covered_by(&self, other: &Self) -> bool {
        self.n == other.n && other.nq >= self.nq && (self.np == 0 || other.np == self.np)
    }

    /// `self += a * b` pointwise (vectorized Barrett kernel from tfhe-ntt; no allocation).
    /// `a` and `b` may carry more q-limbs than `self` (a plaintext at a higher level): their
    /// prefix is used.
    pub(crate) fn mul_acc_ctx(&mut self, ctx: &Context, a: &Self, b: &Self) {
        assert!(
            self.covered_by(a) && self.covered_by(b),
            "polynomial basis mismatch"
        );
        let (nq, n) = (self.nq, self.n);
        let pick = |p: &Self, k: usize| -> std::ops::Range<usize> {
            let ko = if k < nq { k } else { p.nq + (k - nq) };
            ko * n..(ko + 1) * n
        };
        for_limbs(&mut self.data, n, |k, acc| {
            ctx.plans[ctx.modulus_index(nq, k)].mul_accumulate(
                acc,
                &a.data[pick(a, k)],
                &b.data[pick(b, k)],
            );
        });
    }

    /// `self = a * b` pointwise, reusing `self`'s buffer (reallocated only if too small); `b`
    /// may carry more q-limbs than `a` (its prefix is used).
    pub(crate) fn set_mul_ctx(&mut self, ctx: &Context, a: &Self, b: &Self) {
        self.data.resize(a.data.len(), 0);
        self.nq = a.nq;
        self.np = a.np;
        self.n = a.n;
        for_limbs(&mut self.data, self.n, |_, limb| limb.fill(0));
        self.mul_acc_ctx(ctx, a, b);
    }

    /// `self *= b` pointwise in place without allocation; `b` may carry more q-limbs.
    pub(crate) fn mul_plain_assign_ctx(&mut self, ctx: &Context, b: &Self) {
        assert!(self.covered_by(b), "polynomial basis mismatch");
        let (nq, n) = (self.nq, self.n);
        for_limbs(&mut self.data, n, |k, limb| {
            let ko = if k < nq { k } else { b.nq + (k - nq) };
            with_scratch(n, |tmp| {
                tmp.copy_from_slice(limb);
                limb.fill(0);
                ctx.plans[ctx.modulus_index(nq, k)].mul_accumulate(
                    limb,
                    tmp,
                    &b.data[ko * n..(ko + 1) * n],
                );
            })
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::{ParametersLiteral, SecretDistribution};

    fn toy(log_n: u32) -> Parameters {
        Parameters::new_insecure(&ParametersLiteral {
            log_n,
            log_q: vec![50, 40, 40],
            log_p: vec![50],
            log_scale: 40,
            dnum: 0,
            secret: SecretDistribution::Ternary,
            error_std: 3.2,
        })
        .unwrap()
    }

    fn schoolbook(a: &[u64], b: &[u64], q: u64) -> Vec<u64> {
        let n = a.len();
        let mut r = vec![0u128; n];
        let qq = q as u128;
        for (i, &ai) in a.iter().enumerate() {
            for (j, &bj) in b.iter().enumerate() {
                let p = ai as u128 * bj as u128 % qq;
                let k = i + j;
                if k < n {
                    r[k] = (r[k] + p) % qq;
                } else {
                    r[k - n] = (r[k - n] + qq - p) % qq;
                }
            }
        }
        r.into_iter().map(|x| x as u64).collect()
    }

    #[test]
    fn ntt_product_matches_schoolbook_negacyclic() {
        for log_n in [4, 6, 8] {
            let params = toy(log_n);
            let n = params.n();
            let mut s = 99u64 + log_n as u64;
            let mut rnd = |m: u64| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 11) % m
            };
            let mut a = Poly::<Coeff>::zero(&params, 3, true);
            let mut b = Poly::<Coeff>::zero(&params, 3, true);
            let moduli: Vec<u64> = params
                .q_moduli()
                .into_iter()
                .chain(params.p_moduli())
                .collect();
            for (k, &q) in moduli.iter().enumerate() {
                for x in a.limb_mut(k) {
                    *x = rnd(q);
                }
                for x in b.limb_mut(k) {
                    *x = rnd(q);
                }
            }
            let expect: Vec<Vec<u64>> = moduli
                .iter()
                .enumerate()
                .map(|(k, &q)| schoolbook(a.limb(k), b.limb(k), q))
                .collect();
            let a0 = a.clone();
            let mut an = a.into_ntt(&params);
            let bn = b.into_ntt(&params);
            let mut acc = Poly::<Ntt>::zero(&params, 3, true);
            acc.mul_acc_ctx(&params.ctx, &an, &bn);
            an.mul_assign(&params, &bn);
            assert_eq!(an, acc);
            let prod = an.into_coeff(&params);
            for (k, e) in expect.iter().enumerate() {
                assert_eq!(prod.limb(k), &e[..], "limb {k}, n {n}");
            }
            assert_eq!(a0.clone().into_ntt(&params).into_coeff(&params), a0);
        }
    }

    #[test]
    fn add_sub_neg() {
        let params = toy(5);
        let coeffs: Vec<i64> = (0..32).map(|i| i * 7 - 100).collect();
        let a = Poly::from_signed(&params, &coeffs, 2, false);
        let mut b = a.clone();
        b.add_assign(&params, &a);
        b.sub_assign(&params, &a);
        assert_eq!(a, b);
        b.neg_assign(&params);
        b.add_assign(&params, &a);
        assert!(b.data.iter().all(|&x| x == 0));
    }
}
