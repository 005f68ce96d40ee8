//! SIMD kernel: `out (+)= y * w mod t` with AVX-512 IFMA (52-bit Shoup multiplication), used by
//! the RNS basis conversions. Falls back to the caller's scalar code when IFMA is unavailable.
//!
//! `pulp::simd_type!` expands to `unsafe` target-feature dispatch code (runtime CPU detection
//! guards it); the kernel body itself uses only pulp's safe intrinsic wrappers.

#[cfg(target_arch = "x86_64")]
mod imp {
    use std::arch::x86_64::__m512i;

    pulp::simd_type! {
        struct Ifma {
            pub sse: "sse",
            pub sse2: "sse2",
            pub fxsr: "fxsr",
            pub sse3: "sse3",
            pub ssse3: "ssse3",
            pub sse4_1: "sse4.1",
            pub sse4_2: "sse4.2",
            pub popcnt: "popcnt",
            pub avx: "avx",
            pub avx2: "avx2",
            pub bmi1: "bmi1",
            pub bmi2: "bmi2",
            pub fma: "fma",
            pub lzcnt: "lzcnt",
            pub avx512f: "avx512f",
            pub avx512bw: "avx512bw",
            pub avx512cd: "avx512cd",
            pub avx512dq: "avx512dq",
            pub avx512vl: "avx512vl",
            pub avx512ifma: "avx512ifma",
        }
    }

    /// See [`super::mul_shoup_acc`].
    pub fn mul_shoup_acc(out: &mut [u64], y: &[u64], w: u64, t: u64, first: bool) -> bool {
        if t >= 1 << 50 {
            return false;
        }
        let Some(simd) = Ifma::try_new() else {
            return false;
        };
        let w52 = (((w as u128) << 52) / t as u128) as u64;
        simd.vectorize(
            #[inline(always)]
            || {
                let f = simd.avx512f;
                let m = simd.avx512ifma;
                let zero = f._mm512_set1_epi64(0);
                let vw = f._mm512_set1_epi64(w as i64);
                let vw52 = f._mm512_set1_epi64(w52 as i64);
                let vt = f._mm512_set1_epi64(t as i64);
                let mask = f._mm512_set1_epi64(((1u64 << 52) - 1) as i64);
                let (out8, out_rest) = pulp::as_arrays_mut::<8, u64>(out);
                let (y8, y_rest) = pulp::as_arrays::<8, u64>(y);
                for (o, yv) in out8.iter_mut().zip(y8) {
                    let yv: __m512i = pulp::cast(*yv);
                    let q = m._mm512_madd52hi_epu64(zero, yv, vw52);
                    let r = f._mm512_sub_epi64(
                        m._mm512_madd52lo_epu64(zero, yv, vw),
                        m._mm512_madd52lo_epu64(zero, q, vt),
                    );
                    let r = f._mm512_and_si512(r, mask);
                    let mut r = f._mm512_min_epu64(r, f._mm512_sub_epi64(r, vt));
                    if !first {
                        let ov: __m512i = pulp::cast(*o);
                        let s = f._mm512_add_epi64(ov, r);
                        r = f._mm512_min_epu64(s, f._mm512_sub_epi64(s, vt));
                    }
                    *o = pulp::cast(r);
                }
                for (o, &yv) in out_rest.iter_mut().zip(y_rest) {
                    let r = ((yv as u128 * w as u128) % t as u128) as u64;
                    *o = if first { r } else { (*o + r) % t };
                }
            },
        );
        true
    }
    /// Eight lanes starting at `i`.
    #[inline(always)]
    fn load8(s: &[u64], i: usize) -> __m512i {
        let a: [u64; 8] = s[i..i + 8].try_into().expect("8 lanes");
        pulp::cast(a)
    }

    /// Reduction of `hi·2^52 + lo` modulo `t < 2^50`, its constants splatted once:
    /// `c = 2^52 mod t`, `c52` / `one52` the Shoup constants of `c` and 1.
    #[derive(Clone, Copy)]
    struct Reduce52 {
        t: __m512i,
        c: __m512i,
        c52: __m512i,
        one52: __m512i,
    }

    impl Reduce52 {
        #[inline(always)]
        fn new(simd: Ifma, t: u64) -> Self {
            let c = ((1u128 << 52) % t as u128) as u64;
            let c52 = (((c as u128) << 52) / t as u128) as u64;
            let one52 = ((1u128 << 52) / t as u128) as u64;
            let splat = |x: u64| simd.avx512f._mm512_set1_epi64(x as i64);
            Self {
                t: splat(t),
                c: splat(c),
                c52: splat(c52),
                one52: splat(one52),
            }
        }

        /// `(hi 2^52 + lo) mod t` for `hi + (lo >> 52) < 2^52`: Shoup reductions of both halves.
        #[inline(always)]
        fn apply(self, simd: Ifma, lo: __m512i, hi: __m512i) -> __m512i {
            let f = simd.avx512f;
            let m = simd.avx512ifma;
            let zero = f._mm512_set1_epi64(0);
            let mask = f._mm512_set1_epi64(((1u64 << 52) - 1) as i64);
            let vt = self.t;
            let big_h = f._mm512_add_epi64(hi, f._mm512_srli_epi64::<52>(lo));
            let big_l = f._mm512_and_si512(lo, mask);
            let q = m._mm512_madd52hi_epu64(zero, big_h, self.c52);
            let r1 = f._mm512_and_si512(
                f._mm512_sub_epi64(
                    m._mm512_madd52lo_epu64(zero, big_h, self.c),
                    m._mm512_madd52lo_epu64(zero, q, vt),
                ),
                mask,
            );
            let r1 = f._mm512_min_epu64(r1, f._mm512_sub_epi64(r1, vt));
            let q = m._mm512_madd52hi_epu64(zero, big_l, self.one52);
            let r2 = f._mm512_and_si512(
                f._mm512_sub_epi64(big_l, m._mm512_madd52lo_epu64(zero, q, vt)),
                mask,
            );
            let r2 = f._mm512_min_epu64(r2, f._mm512_sub_epi64(r2, vt));
            self.add(simd, r1, r2)
        }

        /// `a + b mod t` for `a, b < t`.
        #[inline(always)]
        fn add(self, simd: Ifma, a: __m512i, b: __m512i) -> __m512i {
            let f = simd.avx512f;
            let s = f._mm512_add_epi64(a, b);
            f._mm512_min_epu64(s, f._mm512_sub_epi64(s, self.t))
        }
    }

    /// See [`super::dot2_reduce`].
    pub fn dot2_reduce(
        out0: &mut [u64],
        out1: &mut [u64],
        ds: &[&[u64]],
        bs: &[&[u64]],
        as_: &[&[u64]],
        t: u64,
    ) -> bool {
        if t >= 1 << 50 || ds.len() > 15 || !out0.len().is_multiple_of(8) {
            return false;
        }
        let Some(simd) = Ifma::try_new() else {
            return false;
        };
        simd.vectorize(
            #[inline(always)]
            || {
                let m = simd.avx512ifma;
                let zero = simd.avx512f._mm512_set1_epi64(0);
                let red = Reduce52::new(simd, t);
                for i in (0..out0.len()).step_by(8) {
                    let (mut lo0, mut hi0, mut lo1, mut hi1) = (zero, zero, zero, zero);
                    for ((d, b), a) in ds.iter().zip(bs).zip(as_) {
                        let x = load8(d, i);
                        let (vb, va) = (load8(b, i), load8(a, i));
                        lo0 = m._mm512_madd52lo_epu64(lo0, x, vb);
                        hi0 = m._mm512_madd52hi_epu64(hi0, x, vb);
                        lo1 = m._mm512_madd52lo_epu64(lo1, x, va);
                        hi1 = m._mm512_madd52hi_epu64(hi1, x, va);
                    }
                    let r0 = red.apply(simd, lo0, hi0);
                    let r1 = red.apply(simd, lo1, hi1);
                    out0[i..i + 8].copy_from_slice(&pulp::cast::<__m512i, [u64; 8]>(r0));
                    out1[i..i + 8].copy_from_slice(&pulp::cast::<__m512i, [u64; 8]>(r1));
                }
            },
        );
        true
    }

    /// Coefficients per block of [`dot_sum`] (four vectors): each output's accumulators stay in
    /// registers while its terms stream through, and one block of every operand stays in cache
    /// for all the outputs that share it.
    const BLOCK: usize = 32;

    /// See [`super::dot_sum`].
    pub fn dot_sum(outs: &mut [&mut [u64]], terms: &[(usize, &[u64], &[u64])], t: u64) -> bool {
        let n = outs.first().map_or(0, |o| o.len());
        if t >= 1 << 50
            || !n.is_multiple_of(BLOCK)
            || outs.iter().any(|o| o.len() != n)
            || terms
                .iter()
                .any(|&(o, x, y)| o >= outs.len() || x.len() < n || y.len() < n)
        {
            return false;
        }
        let Some(simd) = Ifma::try_new() else {
            return false;
        };
        let max_terms = super::max_lazy_terms(t);
        let mut by_out: Vec<Vec<(&[u64], &[u64])>> = vec![Vec::new(); outs.len()];
        for &(o, x, y) in terms {
            by_out[o].push((x, y));
        }
        simd.vectorize(
            #[inline(always)]
            || {
                let m = simd.avx512ifma;
                let zero = simd.avx512f._mm512_set1_epi64(0);
                let red = Reduce52::new(simd, t);
                for i0 in (0..n).step_by(BLOCK) {
                    for (out, list) in outs.iter_mut().zip(&by_out) {
                        let mut r = [zero; 4];
                        let mut lo = [zero; 4];
                        let mut hi = [zero; 4];
                        let mut count = 0;
                        for &(x, y) in list {
                            if count == max_terms {
                                for v in 0..4 {
                                    r[v] = red.add(simd, r[v], red.apply(simd, lo[v], hi[v]));
                                }
                                lo = [zero; 4];
                                hi = [zero; 4];
                                count = 0;
                            }
                            count += 1;
                            for v in 0..4 {
                                let xv = load8(x, i0 + 8 * v);
                                let yv = load8(y, i0 + 8 * v);
                                lo[v] = m._mm512_madd52lo_epu64(lo[v], xv, yv);
                                hi[v] = m._mm512_madd52hi_epu64(hi[v], xv, yv);
                            }
                        }
                        for v in 0..4 {
                            let s = red.add(simd, r[v], red.apply(simd, lo[v], hi[v]));
                            out[i0 + 8 * v..i0 + 8 * v + 8].copy_from_slice(&pulp::cast::<
                                __m512i,
                                [u64; 8],
                            >(
                                s
                            ));
                        }
                    }
                }
            },
        );
        true
    }

    /// See [`super::centered_reduce`].
    pub fn centered_reduce(out: &mut [u64], src: &[u64], q: u64, ql: u64, ql_mod: u64) -> bool {
        if ql >= 2 * q || q >= 1 << 62 {
            return false;
        }
        let Some(simd) = Ifma::try_new() else {
            return false;
        };
        let half = ql / 2;
        simd.vectorize(
            #[inline(always)]
            || {
                let f = simd.avx512f;
                let vq = f._mm512_set1_epi64(q as i64);
                let vhalf = f._mm512_set1_epi64(half as i64);
                let vqlm = f._mm512_set1_epi64(ql_mod as i64);
                let (o8, o_rest) = pulp::as_arrays_mut::<8, u64>(out);
                let (s8, s_rest) = pulp::as_arrays::<8, u64>(src);
                for (o, s) in o8.iter_mut().zip(s8) {
                    let t: __m512i = pulp::cast(*s);
                    let r = f._mm512_min_epu64(t, f._mm512_sub_epi64(t, vq));
                    let r2 = f._mm512_sub_epi64(r, vqlm);
                    let r2 = f._mm512_min_epu64(r2, f._mm512_add_epi64(r2, vq));
                    let neg = f._mm512_cmpgt_epu64_mask(t, vhalf);
                    *o = pulp::cast(f._mm512_mask_blend_epi64(neg, r, r2));
                }
                for (o, &t) in o_rest.iter_mut().zip(s_rest) {
                    let r = if t >= q { t - q } else { t };
                    *o = if t > half { (r + q - ql_mod) % q } else { r };
                }
            },
        );
        true
    }

    /// See [`super::sub_mul_shoup`].
    pub fn sub_mul_shoup(x: &mut [u64], y: &[u64], w: u64, t: u64) -> bool {
        if t >= 1 << 50 {
            return false;
        }
        let Some(simd) = Ifma::try_new() else {
            return false;
        };
        let w52 = (((w as u128) << 52) / t as u128) as u64;
        simd.vectorize(
            #[inline(always)]
            || {
                let f = simd.avx512f;
                let m = simd.avx512ifma;
                let zero = f._mm512_set1_epi64(0);
                let vw = f._mm512_set1_epi64(w as i64);
                let vw52 = f._mm512_set1_epi64(w52 as i64);
                let vt = f._mm512_set1_epi64(t as i64);
                let mask = f._mm512_set1_epi64(((1u64 << 52) - 1) as i64);
                let (x8, x_rest) = pulp::as_arrays_mut::<8, u64>(x);
                let (y8, y_rest) = pulp::as_arrays::<8, u64>(y);
                for (o, yv) in x8.iter_mut().zip(y8) {
                    let xv: __m512i = pulp::cast(*o);
                    let yv: __m512i = pulp::cast(*yv);
                    // z = x + t - y in [1, 2t) < 2^51.
                    let z = f._mm512_sub_epi64(f._mm512_add_epi64(xv, vt), yv);
                    let q = m._mm512_madd52hi_epu64(zero, z, vw52);
                    let r = f._mm512_sub_epi64(
                        m._mm512_madd52lo_epu64(zero, z, vw),
                        m._mm512_madd52lo_epu64(zero, q, vt),
                    );
                    let r = f._mm512_and_si512(r, mask);
                    *o = pulp::cast(f._mm512_min_epu64(r, f._mm512_sub_epi64(r, vt)));
                }
                for (o, &yv) in x_rest.iter_mut().zip(y_rest) {
                    *o = ((*o + t - yv) as u128 * w as u128 % t as u128) as u64;
                }
            },
        );
        true
    }

    /// See [`super::sub_rounded_multiple`].
    pub fn sub_rounded_multiple(
        out: &mut [u64],
        ys: &[Vec<u64>],
        inv: &[f64],
        pq: u64,
        t: u64,
    ) -> bool {
        if t >= 1 << 50 || ys.len() > 3 || ys.is_empty() {
            return false;
        }
        let Some(simd) = Ifma::try_new() else {
            return false;
        };
        simd.vectorize(
            #[inline(always)]
            || {
                let f = simd.avx512f;
                let dq = simd.avx512dq;
                let m = simd.avx512ifma;
                let zero = f._mm512_set1_epi64(0);
                let vt = f._mm512_set1_epi64(t as i64);
                let vpq = f._mm512_set1_epi64(pq as i64);
                let n = out.len() / 8 * 8;
                for base in (0..n).step_by(8) {
                    let mut v = f._mm512_set1_pd(0.0);
                    for (y, &iv) in ys.iter().zip(inv) {
                        let yv: [u64; 8] = y[base..base + 8].try_into().expect("8 lanes");
                        let yd = dq._mm512_cvtepu64_pd(pulp::cast(yv));
                        v = f._mm512_fmadd_pd(yd, f._mm512_set1_pd(iv), v);
                    }
                    // Round to nearest (default rounding mode), u <= len(ys).
                    let u = dq._mm512_cvtpd_epu64(v);
                    let mut c = m._mm512_madd52lo_epu64(zero, u, vpq);
                    for _ in 0..ys.len() {
                        c = f._mm512_min_epu64(c, f._mm512_sub_epi64(c, vt));
                    }
                    let o: [u64; 8] = out[base..base + 8].try_into().expect("8 lanes");
                    let r = f._mm512_sub_epi64(pulp::cast(o), c);
                    let r = f._mm512_min_epu64(r, f._mm512_add_epi64(r, vt));
                    out[base..base + 8].copy_from_slice(&pulp::cast::<__m512i, [u64; 8]>(r));
                }
                for x in n..out.len() {
                    let v: f64 = ys.iter().zip(inv).map(|(y, &iv)| y[x] as f64 * iv).sum();
                    let c = (v.round() as u128 * pq as u128 % t as u128) as u64;
                    out[x] = if out[x] >= c {
                        out[x] - c
                    } else {
                        out[x] + t - c
                    };
                }
            },
        );
        true
    }
}

/// `out0 = sum_j ds_j * bs_j mod t`, `out1 = sum_j ds_j * as_j mod t` lane-wise, accumulating in
/// registers with one reduction per lane (inputs below 2^50, at most 15 terms, lengths multiples
/// of 8). Returns `false` (doing nothing) when no kernel applies.
#[inline]
pub(crate) fn dot2_reduce(
    out0: &mut [u64],
    out1: &mut [u64],
    ds: &[&[u64]],
    bs: &[&[u64]],
    as_: &[&[u64]],
    t: u64,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        imp::dot2_reduce(out0, out1, ds, bs, as_, t)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (out0, out1, ds, bs, as_, t);
        false
    }
}

/// Terms of a lazily reduced sum of products modulo `t` (inputs below `t`): `lo` collects the
/// low 52 bits of each product (at most 4095 terms fit in 64 bits) and `hi` the high bits, and
/// [`dot_sum`]'s reduction needs `hi + (lo >> 52) < 2^52`.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) fn max_lazy_terms(t: u64) -> usize {
    let hmax = ((t as u128 - 1) * (t as u128 - 1)) >> 52;
    (((1u128 << 52) / (hmax + 1)) as usize).min(4095)
}

/// `outs[o] = sum of x * y mod t` over the terms `(o, x, y)` (lane-wise, inputs below `t`),
/// accumulating 104-bit products with AVX-512 IFMA and reducing once per
/// [`max_lazy_terms`] terms. An output without terms is zeroed. Requires `t < 2^50`, output
/// lengths a multiple of 32 and operands at least as long. Returns `false` (doing nothing)
/// when no kernel applies.
#[inline]
pub(crate) fn dot_sum(outs: &mut [&mut [u64]], terms: &[(usize, &[u64], &[u64])], t: u64) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        imp::dot_sum(outs, terms, t)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (outs, terms, t);
        false
    }
}

/// `out = [src centered modulo ql] mod q`: each `src < ql` is lifted to `(-ql/2, ql/2]` and
/// reduced modulo `q` (`ql_mod = ql mod q`). Requires `ql < 2q`. Returns `false` when no kernel
/// applies.
#[inline]
pub(crate) fn centered_reduce(out: &mut [u64], src: &[u64], q: u64, ql: u64, ql_mod: u64) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        imp::centered_reduce(out, src, q, ql, ql_mod)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (out, src, q, ql, ql_mod);
        false
    }
}

/// `x = (x - y) * w mod t` with AVX-512 IFMA; inputs reduced modulo `t`. Returns `false` (doing
/// nothing) when no IFMA kernel applies.
#[inline]
pub(crate) fn sub_mul_shoup(x: &mut [u64], y: &[u64], w: u64, t: u64) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        imp::sub_mul_shoup(x, y, w, t)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, y, w, t);
        false
    }
}

/// `out = out - round(sum_j ys_j * inv_j) * pq mod t` (the exact-conversion correction of a
/// centered ModDown), with AVX-512 IFMA/DQ. Requires 1..=3 terms, `ys < 2^52`, `pq < t`.
/// Returns `false` (doing nothing) when no kernel applies.
#[inline]
pub(crate) fn sub_rounded_multiple(
    out: &mut [u64],
    ys: &[Vec<u64>],
    inv: &[f64],
    pq: u64,
    t: u64,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        imp::sub_rounded_multiple(out, ys, inv, pq, t)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (out, ys, inv, pq, t);
        false
    }
}

/// `out = y * w mod t` (if `first`) or `out = out + y * w mod t`, vectorized with AVX-512 IFMA.
/// Requires `y < 2^52`, `w < t` and `out < t`. Returns `false` (doing nothing) when no IFMA
/// kernel applies (other CPU, other target, or `t >= 2^50`).
#[inline]
pub(crate) fn mul_shoup_acc(out: &mut [u64], y: &[u64], w: u64, t: u64, first: bool) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        imp::mul_shoup_acc(out, y, w, t, first)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (out, y, w, t, first);
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn dot_sum_matches_scalar() {
        let n = 512;
        for t in [(1u64 << 49) + 0x1_0001, (1u64 << 36) - 5, 97] {
            let ops: Vec<Vec<u64>> = (0..40u64)
                .map(|s| {
                    (0..n as u64)
                        .map(|i| (i * 0x9E37_79B9_7F4A + s * 0x0001_2345_6789) % t)
                        .collect()
                })
                .collect();
            // 37 terms into output 0 (more than one lazy chunk at 50 bits), 3 into output 2,
            // none into output 1.
            let mut terms: Vec<(usize, &[u64], &[u64])> = (0..37)
                .map(|j| (0, ops[j].as_slice(), ops[(j + 1) % 40].as_slice()))
                .collect();
            terms.extend((37..40).map(|j| (2, ops[j].as_slice(), ops[j - 20].as_slice())));
            let mut bufs = vec![vec![7u64; n]; 3];
            let mut outs: Vec<&mut [u64]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
            if !super::dot_sum(&mut outs, &terms, t) {
                continue;
            }
            for i in 0..n {
                let mut want = [0u128; 3];
                for &(o, x, y) in &terms {
                    want[o] = (want[o] + x[i] as u128 * y[i] as u128) % t as u128;
                }
                for o in 0..3 {
                    assert_eq!(bufs[o][i] as u128, want[o], "t {t} output {o} lane {i}");
                }
            }
        }
        assert_eq!(super::max_lazy_terms((1 << 50) - 27), 16);
        assert_eq!(super::max_lazy_terms(97), 4095);
    }

    #[test]
    fn ifma_kernel_matches_scalar() {
        let t = (1u64 << 49) + 0x1_0001; // any modulus below 2^50 (primality not needed)
        let y: Vec<u64> = (0..37u64)
            .map(|i| (i * 0x1234_5678_9abc) % (1 << 50))
            .collect();
        let w = 0x3_1415_9265_3589 % t;
        let mut out: Vec<u64> = (0..37u64).map(|i| (i * 977) % t).collect();
        let before = out.clone();
        if super::mul_shoup_acc(&mut out, &y, w, t, false) {
            for i in 0..y.len() {
                let want = (before[i] as u128 + y[i] as u128 * w as u128) % t as u128;
                assert_eq!(out[i] as u128, want, "lane {i}");
            }
        }
        let mut x = before.clone();
        if super::sub_mul_shoup(&mut x, &out, w, t) {
            for i in 0..x.len() {
                let d = (before[i] as u128 + t as u128 - out[i] as u128) % t as u128;
                assert_eq!(x[i] as u128, d * w as u128 % t as u128, "lane {i}");
            }
        }
        // Centered correction: out - round(sum y_j / p_j) * pq mod t.
        let ps = [(1u64 << 49) - 111, (1u64 << 48) + 77];
        let ys: Vec<Vec<u64>> = ps
            .iter()
            .map(|&p| (0..37u64).map(|i| (i * 0x9e37_79b9_7f4a) % p).collect())
            .collect();
        let inv: Vec<f64> = ps.iter().map(|&p| 1.0 / p as f64).collect();
        let pq = 0x2_7182_8182_8459 % t;
        let mut o = before.clone();
        if super::sub_rounded_multiple(&mut o, &ys, &inv, pq, t) {
            for i in 0..o.len() {
                let v: f64 = ys.iter().zip(&inv).map(|(y, iv)| y[i] as f64 * iv).sum();
                let c = v.round() as u128 * pq as u128 % t as u128;
                let want = (before[i] as u128 + t as u128 - c) % t as u128;
                assert_eq!(o[i] as u128, want, "lane {i}");
            }
        }
        let (q, ql) = ((1u64 << 40) + 0x3_0001, (1u64 << 40) + 0x7_0001);
        let src: Vec<u64> = (0..37u64).map(|i| (i * 0x0001_2345_6789) % ql).collect();
        let mut c = vec![0u64; 37];
        if super::centered_reduce(&mut c, &src, q, ql, ql % q) {
            for i in 0..37 {
                let v = if src[i] > ql / 2 {
                    src[i] as i128 - ql as i128
                } else {
                    src[i] as i128
                };
                assert_eq!(c[i] as i128, v.rem_euclid(q as i128), "lane {i}");
            }
        }
        // Register-accumulated inner products of 15 terms.
        let t = (1u64 << 50) - 27;
        let xs: Vec<Vec<u64>> = (0..15u64)
            .map(|j| {
                (0..32u64)
                    .map(|i| (i * 0x3_1415_9265 + j * 0x2_7182_8182) % t)
                    .collect()
            })
            .collect();
        let ds: Vec<&[u64]> = xs.iter().map(|v| &v[..]).collect();
        let bs: Vec<&[u64]> = (0..15).map(|j| &xs[(j + 1) % 15][..]).collect();
        let as_: Vec<&[u64]> = (0..15).map(|j| &xs[(j + 2) % 15][..]).collect();
        let (mut o0, mut o1) = (vec![0u64; 32], vec![0u64; 32]);
        if super::dot2_reduce(&mut o0, &mut o1, &ds, &bs, &as_, t) {
            for i in 0..32 {
                let dot = |k: usize| {
                    (0..15).fold(0u128, |acc, j| {
                        (acc + xs[j][i] as u128 * xs[(j + k) % 15][i] as u128) % t as u128
                    })
                };
                assert_eq!((o0[i] as u128, o1[i] as u128), (dot(1), dot(2)), "lane {i}");
            }
        }
        let mut out2 = vec![0u64; 37];
        if super::mul_shoup_acc(&mut out2, &y, w, t, true) {
            for i in 0..y.len() {
                assert_eq!(out2[i] as u128, y[i] as u128 * w as u128 % t as u128);
            }
        }
    }
}
