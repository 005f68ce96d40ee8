//! Hybrid key switching (Han-Ki): digit decomposition, basis extension to Q_l * P (ModUp),
//! inner product with the key, and division by P (ModDown). Also the NTT-domain automorphisms.

use crate::arith::Modulus;
use crate::params::Context;
use crate::poly::{Coeff, Ntt, Poly, for_limbs, par_map, with_scratch};

/// A key-switching key: one `(b_j, a_j)` pair per digit, over all q primes and all special primes,
/// with `b_j = -a_j s + e_j + P [j-th digit indicator] s'`.
#[derive(Clone, PartialEq)]
pub(crate) struct KeySwitchKey {
    pub b: Vec<Poly<Ntt>>,
    pub a: Vec<Poly<Ntt>>,
    /// Seed from which every `a_j` is regenerated (compact serialization).
    pub seed: [u8; 32],
}

/// The primes `[lo, hi)` of digit `j` at a level with `nq` primes.
fn digit_range(ctx: &Context, j: usize, nq: usize) -> (usize, usize) {
    let lo = j * ctx.alpha;
    (lo, ((j + 1) * ctx.alpha).min(nq))
}

/// Number of digits at a level with `nq` primes.
pub(crate) fn digit_count(ctx: &Context, nq: usize) -> usize {
    nq.div_ceil(ctx.alpha)
}

/// Fast basis conversion constants from a set of source primes to target primes.
struct BaseConv {
    /// `(qhat_i^{-1} mod q_i, Shoup constant)` per source prime.
    qhat_inv: Vec<(u64, u64)>,
    /// `(qhat_i mod target, Shoup constant)` for each target (row) and source (column).
    qhat_mod: Vec<Vec<(u64, u64)>>,
    /// All source primes are below 2^50 (the IFMA kernel's input bound).
    small_src: bool,
}

impl BaseConv {
    fn new(src: &[Modulus], dst: &[Modulus]) -> Self {
        let qhat_inv = src
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let mut prod = 1u64;
                for (t, o) in src.iter().enumerate() {
                    if t != i {
                        prod = m.mul(prod, m.reduce(o.value()));
                    }
                }
                let inv = m.inv(prod).expect("distinct primes");
                (inv, m.shoup(inv))
            })
            .collect();
        let qhat_mod = dst
            .iter()
            .map(|d| {
                (0..src.len())
                    .map(|i| {
                        let mut prod = 1u64;
                        for (t, o) in src.iter().enumerate() {
                            if t != i {
                                prod = d.mul(prod, d.reduce(o.value()));
                            }
                        }
                        (prod, d.shoup(prod))
                    })
                    .collect()
            })
            .collect();
        let small_src = src.iter().all(|m| m.value() < 1 << 50);
        Self {
            qhat_inv,
            qhat_mod,
            small_src,
        }
    }

    /// `y_i = x_i * qhat_i^{-1} mod q_i` for each source limb.
    fn premultiply(&self, src: &[Modulus], limbs: &[&[u64]]) -> Vec<Vec<u64>> {
        src.iter()
            .zip(limbs)
            .zip(&self.qhat_inv)
            .map(|((m, x), &(w, ws))| x.iter().map(|&v| m.mul_shoup(v, w, ws)).collect())
            .collect()
    }

    /// `out = sum_i y_i * qhat_i mod target` (target row `t`).
    fn convert(&self, t: usize, target: &Modulus, ys: &[Vec<u64>], out: &mut [u64]) {
        let c = &self.qhat_mod[t];
        let tv = target.value();
        if self.small_src
            && ys
                .iter()
                .zip(c)
                .enumerate()
                .all(|(i, (y, &(w, _)))| crate::simd::mul_shoup_acc(out, y, w, tv, i == 0))
        {
            return;
        }
        let (w0, s0) = c[0];
        for (o, &y) in out.iter_mut().zip(&ys[0]) {
            *o = target.mul_shoup(y, w0, s0);
        }
        for (y, &(w, ws)) in ys.iter().zip(c).skip(1) {
            for (o, &v) in out.iter_mut().zip(y) {
                *o = target.add(*o, target.mul_shoup(v, w, ws));
            }
        }
    }
}

impl BaseConv {
    /// Exact centered conversion: like [`BaseConv::convert`] but subtracts `u * prod(src)` with
    /// `u = round(sum_i y_i / q_i)`, giving the representative in `(-prod/2, prod/2]` (floating-point
    /// estimate of `u`, as in Halevi-Polyakov-Shoup). `u_table[u] = u * prod(src) mod target`.
    fn convert_centered(
        &self,
        t: usize,
        target: &Modulus,
        ys: &[Vec<u64>],
        src_inv: &[f64],
        u_table: &[u64],
        out: &mut [u64],
    ) {
        self.convert(t, target, ys, out);
        let pq = u_table.get(1).copied().unwrap_or(0);
        if self.small_src && crate::simd::sub_rounded_multiple(out, ys, src_inv, pq, target.value())
        {
            return;
        }
        for (x, o) in out.iter_mut().enumerate() {
            let v: f64 = ys
                .iter()
                .zip(src_inv)
                .map(|(y, &inv)| y[x] as f64 * inv)
                .sum();
            let u = (v.round() as usize).min(u_table.len() - 1);
            *o = target.sub(*o, u_table[u]);
        }
    }
}

/// The per-digit data needed to produce any limb of the extended digit.
struct DigitExt<'a> {
    lo: usize,
    hi: usize,
    conv: BaseConv,
    ys: Vec<Vec<u64>>,
    /// The input in NTT form (its own limbs are copied, not recomputed).
    c_ntt: &'a Poly<Ntt>,
}

impl<'a> DigitExt<'a> {
    fn new(ctx: &Context, j: usize, c_ntt: &'a Poly<Ntt>, coeff: &Poly<Coeff>) -> Self {
        let nq = c_ntt.nq;
        let (lo, hi) = digit_range(ctx, j, nq);
        let src: Vec<Modulus> = ctx.moduli[lo..hi].to_vec();
        let dst: Vec<Modulus> = (0..nq + ctx.p_count)
            .filter(|&k| k < lo || k >= hi)
            .map(|k| ctx.moduli[ctx.modulus_index(nq, k)])
            .collect();
        let conv = BaseConv::new(&src, &dst);
        let limbs: Vec<&[u64]> = (lo..hi).map(|i| coeff.limb(i)).collect();
        let ys = conv.premultiply(&src, &limbs);
        Self {
            lo,
            hi,
            conv,
            ys,
            c_ntt,
        }
    }

    /// Limb `k` (of the basis Q_l * P) of the extended digit in NTT form: the input's own limb
    /// (borrowed) or a converted limb written into `out` (returns `None`).
    fn limb_or_write(&self, ctx: &Context, k: usize, out: &mut [u64]) -> Option<&'a [u64]> {
        if (self.lo..self.hi).contains(&k) {
            return Some(self.c_ntt.limb(k));
        }
        self.limb(ctx, k, out);
        None
    }

    /// Writes limb `k` (of the basis Q_l * P) of the extended digit, in NTT form, into `out`.
    fn limb(&self, ctx: &Context, k: usize, out: &mut [u64]) {
        let nq = self.c_ntt.nq;
        if (self.lo..self.hi).contains(&k) {
            out.copy_from_slice(self.c_ntt.limb(k));
        } else {
            let t = if k < self.lo {
                k
            } else {
                k - (self.hi - self.lo)
            };
            let mi = ctx.modulus_index(nq, k);
            self.conv.convert(t, &ctx.moduli[mi], &self.ys, out);
            ctx.plans[mi].fwd(out);
        }
    }
}

/// Runs `f(k, a_k, b_k)` over the limbs of two equally shaped buffers (parallel with `parallel`).
fn for_limb_pairs<G>(a: &mut [u64], b: &mut [u64], n: usize, f: G)
where
    G: Fn(usize, &mut [u64], &mut [u64]) + Send + Sync,
{
    #[cfg(feature = "parallel")]
    {
        use rayon::prelude::*;
        a.par_chunks_exact_mut(n)
            .zip(b.par_chunks_exact_mut(n))
            .enumerate()
            .for_each(|(k, (x, y))| f(k, x, y));
    }
    #[cfg(not(feature = "parallel"))]
    a.chunks_exact_mut(n)
        .zip(b.chunks_exact_mut(n))
        .enumerate()
        .for_each(|(k, (x, y))| f(k, x, y));
}

/// Index of limb `k` of a level-`nq` basis inside a full-basis key polynomial.
#[inline]
fn key_limb(ctx: &Context, nq: usize, k: usize) -> usize {
    if k < nq { k } else { ctx.q_count + (k - nq) }
}

/// Key-switches `c` (NTT form, `nq` limbs): returns `(d0, d1)` over Q_l with
/// `d0 + d1 s ~= c s'` where the key switches from `s'` to `s`.
pub(crate) fn key_switch(
    ctx: &Context,
    c: &Poly<Ntt>,
    key: &KeySwitchKey,
) -> (Poly<Ntt>, Poly<Ntt>) {
    let nq = c.nq;
    let n = ctx.n;
    let coeff = c.clone().into_coeff_ctx(ctx);
    let exts: Vec<DigitExt<'_>> =
        par_map(digit_count(ctx, nq), |j| DigitExt::new(ctx, j, c, &coeff));
    let mut acc0 = Poly::<Ntt>::zero_ctx(ctx, nq, ctx.p_count);
    let mut acc1 = Poly::<Ntt>::zero_ctx(ctx, nq, ctx.p_count);
    // Limb-outer: each target limb extends every digit and accumulates lazily.
    for_limb_pairs(&mut acc0.data, &mut acc1.data, n, |k, x0, x1| {
        inner_product_limb(ctx, nq, k, key, exts.len(), x0, x1, |j, buf| {
            exts[j].limb_or_write(ctx, k, buf)
        })
    });
    (mod_down(ctx, acc0), mod_down(ctx, acc1))
}

/// `(x0, x1) = sum_j digit_j * (b_j, a_j)` on limb `k`, where `fill(j, buf)` either writes limb
/// `k` of the j-th extended digit into `buf` (returning `None`) or returns it borrowed. Accumulates
/// in registers with one reduction per coefficient when the IFMA kernel applies.
#[allow(clippy::too_many_arguments)]
fn inner_product_limb<'x>(
    ctx: &Context,
    nq: usize,
    k: usize,
    key: &KeySwitchKey,
    digits: usize,
    x0: &mut [u64],
    x1: &mut [u64],
    fill: impl Fn(usize, &mut [u64]) -> Option<&'x [u64]>,
) {
    let n = ctx.n;
    let kl = key_limb(ctx, nq, k);
    let mi = ctx.modulus_index(nq, k);
    let t = ctx.moduli[mi].value();
    with_scratch(digits * n, |s| {
        let mut ds: Vec<&[u64]> = Vec::with_capacity(digits);
        for (j, buf) in s.chunks_exact_mut(n).enumerate() {
            match fill(j, buf) {
                Some(src) => ds.push(src),
                None => ds.push(buf),
            }
        }
        let bs: Vec<&[u64]> = (0..digits).map(|j| key.b[j].limb(kl)).collect();
        let as_: Vec<&[u64]> = (0..digits).map(|j| key.a[j].limb(kl)).collect();
        if !crate::simd::dot2_reduce(x0, x1, &ds, &bs, &as_, t) {
            let plan = &ctx.plans[mi];
            for j in 0..digits {
                plan.mul_accumulate(x0, ds[j], bs[j]);
                plan.mul_accumulate(x1, ds[j], as_[j]);
            }
        }
    })
}

/// The extended digits of `c` (NTT form over Q_l * P), shared by hoisted rotations.
pub(crate) fn decompose(ctx: &Context, c: &Poly<Ntt>) -> Vec<Poly<Ntt>> {
    let nq = c.nq;
    let coeff = c.clone().into_coeff_ctx(ctx);
    par_map(digit_count(ctx, nq), |j| {
        let ext = DigitExt::new(ctx, j, c, &coeff);
        let mut d = Poly::<Ntt>::zero_ctx(ctx, nq, ctx.p_count);
        for_limbs(&mut d.data, ctx.n, |k, out| ext.limb(ctx, k, out));
        d
    })
}

/// Key-switches a decomposed polynomial (the digits of [`decompose`]).
pub(crate) fn key_switch_decomposed(
    ctx: &Context,
    digits: &[Poly<Ntt>],
    key: &KeySwitchKey,
) -> (Poly<Ntt>, Poly<Ntt>) {
    let nq = digits[0].nq;
    let n = ctx.n;
    let mut acc0 = Poly::<Ntt>::zero_ctx(ctx, nq, ctx.p_count);
    let mut acc1 = Poly::<Ntt>::zero_ctx(ctx, nq, ctx.p_count);
    for_limb_pairs(&mut acc0.data, &mut acc1.data, n, |k, x0, x1| {
        inner_product_limb(ctx, nq, k, key, digits.len(), x0, x1, |j, _| {
            Some(digits[j].limb(k))
        })
    });
    (mod_down(ctx, acc0), mod_down(ctx, acc1))
}

/// Divides a Q_l * P polynomial (NTT form) by P, rounding to nearest (centered, so the rounding
/// error has zero mean); returns the Q_l part.
pub(crate) fn mod_down(ctx: &Context, mut acc: Poly<Ntt>) -> Poly<Ntt> {
    let nq = acc.nq;
    let n = ctx.n;
    let np = ctx.p_count;
    let p_mod: Vec<Modulus> = ctx.moduli[ctx.q_count..].to_vec();
    let q_mod: Vec<Modulus> = ctx.moduli[..nq].to_vec();
    let (q_part, p_part) = acc.data.split_at_mut(nq * n);
    for_limbs(p_part, n, |j, limb| {
        let plan = &ctx.plans[ctx.q_count + j];
        plan.inv(limb);
        plan.normalize(limb);
    });
    let conv = BaseConv::new(&p_mod, &q_mod);
    let limbs: Vec<&[u64]> = p_part.chunks_exact(n).collect();
    let ys = conv.premultiply(&p_mod, &limbs);
    let p_inv: Vec<u64> = q_mod
        .iter()
        .map(|m| {
            let mut p = 1u64;
            for pm in &p_mod {
                p = m.mul(p, m.reduce(pm.value()));
            }
            m.inv(p).expect("distinct primes")
        })
        .collect();
    let src_inv: Vec<f64> = p_mod.iter().map(|p| 1.0 / p.value() as f64).collect();
    for_limbs(q_part, n, |i, limb| {
        let m = &q_mod[i];
        let p_mod_q = p_mod
            .iter()
            .fold(1u64, |acc, pm| m.mul(acc, m.reduce(pm.value())));
        let u_table: Vec<u64> = (0..=np as u64)
            .map(|u| m.mul(u % m.value(), p_mod_q))
            .collect();
        with_scratch(n, |buf| {
            conv.convert_centered(i, m, &ys, &src_inv, &u_table, buf);
            ctx.plans[i].fwd(buf);
            if !crate::simd::sub_mul_shoup(limb, buf, p_inv[i], m.value()) {
                let (w, ws) = (p_inv[i], m.shoup(p_inv[i]));
                for (x, &y) in limb.iter_mut().zip(buf.iter()) {
                    *x = m.mul_shoup(m.sub(*x, y), w, ws);
                }
            }
        })
    });
    acc.truncate_q(nq);
    acc
}

/// `dst[i] = src[perm[i]]`.
#[inline]
pub(crate) fn permute(src: &[u64], perm: &[u32], dst: &mut [u64]) {
    for (d, &p) in dst.iter_mut().zip(perm) {
        *d = src[p as usize];
    }
}

/// The NTT-domain permutation realizing `a(X) -> a(X^g)`: `out[i] = in[perm[i]]`.
/// tfhe-ntt's output index `i` holds the evaluation at `psi^(2 bitrev(i) + 1)`.
pub(crate) fn galois_perm(ctx: &Context, g: u64) -> Vec<u32> {
    let two_n = 2 * ctx.n as u64;
    (0..ctx.n)
        .map(|i| {
            let e = (2 * ctx.bitrev[i] as u64 + 1) * g % two_n;
            ctx.bitrev[((e - 1) / 2) as usize]
        })
        .collect()
}

/// Applies `σ⁻¹` (the inverse of [`apply_galois`] with the same `perm`) to an NTT-form
/// polynomial.
pub(crate) fn apply_galois_inverse(ctx: &Context, p: &Poly<Ntt>, perm: &[u32]) -> Poly<Ntt> {
    let mut out = Poly::<Ntt>::zero_ctx(ctx, p.nq, p.np);
    crate::poly::for_limbs2(&mut out.data, &p.data, ctx.n, |_, o, s| {
        for (&d, &x) in perm.iter().zip(s) {
            o[d as usize] = x;
        }
    });
    out
}

/// Applies `a(X) -> a(X^g)` to an NTT-form polynomial.
pub(crate) fn apply_galois(ctx: &Context, p: &Poly<Ntt>, perm: &[u32]) -> Poly<Ntt> {
    let mut out = Poly::<Ntt>::zero_ctx(ctx, p.nq, p.np);
    crate::poly::for_limbs2(&mut out.data, &p.data, ctx.n, |_, o, s| permute(s, perm, o));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::{Parameters, ParametersLiteral, SecretDistribution};

    #[test]
    fn ntt_domain_automorphism_matches_coefficient_domain() {
        let params = Parameters::new_insecure(&ParametersLiteral {
            log_n: 6,
            log_q: vec![50, 40],
            log_p: vec![50],
            log_scale: 40,
            dnum: 0,
            secret: SecretDistribution::Ternary,
            error_std: 3.2,
        })
        .unwrap();
        let ctx = &params.ctx;
        let n = ctx.n;
        let coeffs: Vec<i64> = (0..n as i64).map(|i| i * i - 40).collect();
        for g in [5u64, 25, 2 * n as u64 - 1, 5u64.pow(7) % (2 * n as u64)] {
            let p = Poly::from_signed(&params, &coeffs, 2, true);
            let mut want = vec![0i64; n];
            for (i, &c) in coeffs.iter().enumerate() {
                let e = (i as u64 * g) % (2 * n as u64);
                if e < n as u64 {
                    want[e as usize] += c;
                } else {
                    want[e as usize - n] -= c;
                }
            }
            let perm = galois_perm(ctx, g);
            let got = apply_galois(ctx, &p.into_ntt(&params), &perm).into_coeff(&params);
            assert_eq!(got, Poly::from_signed(&params, &want, 2, true), "g = {g}");
        }
    }
}
