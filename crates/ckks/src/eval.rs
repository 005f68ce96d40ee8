//! Homomorphic operations. Every operation exists in place (`op_assign`) and allocating (`op`).
//!
//! Scales are tracked exactly as `f64`: a product has the product of the scales, a rescale divides
//! by the dropped prime. Additions require equal levels and scales (relative difference below
//! [`SCALE_TOLERANCE`]); align explicitly with [`Evaluator::drop_to_level_assign`] or
//! [`Ciphertext::set_scale`].

use crate::encoder::{CompactPlaintext, Plaintext};
use crate::encrypt::Ciphertext;
use crate::error::{Error, Result};
use crate::keys::{GaloisKey, GaloisKeys, RelinKey};
use crate::ks;
use crate::params::{Context, Parameters};
use crate::poly::{Ntt, Poly, for_limbs, with_scratch};

/// Largest relative difference between two scales treated as equal (here and in every layer
/// above).
pub const SCALE_TOLERANCE: f64 = 1e-9;

/// Performs homomorphic operations under one parameter set (holds no secret).
#[derive(Debug, Clone)]
pub struct Evaluator {
    params: Parameters,
}

/// Whether two scales are equal up to [`SCALE_TOLERANCE`].
pub fn scales_match(a: f64, b: f64) -> bool {
    (a - b).abs() <= SCALE_TOLERANCE * a.abs().max(b.abs())
}

fn check_scale(a: f64, b: f64) -> Result<()> {
    if scales_match(a, b) {
        Ok(())
    } else {
        Err(Error::ScaleMismatch {
            left: a.log2(),
            right: b.log2(),
        })
    }
}

fn check_slots(a: usize, b: usize) -> Result<()> {
    if a == b {
        Ok(())
    } else {
        Err(Error::SlotsMismatch { left: a, right: b })
    }
}

fn check_level(left: usize, right: usize) -> Result<()> {
    if left == right {
        Ok(())
    } else {
        Err(Error::LevelMismatch { left, right })
    }
}

fn check_degree(ct: &Ciphertext, expected: usize) -> Result<()> {
    if ct.degree() == expected {
        Ok(())
    } else {
        Err(Error::DegreeMismatch {
            degree: ct.degree(),
            expected,
        })
    }
}

/// The first `nq` limbs of a plaintext at a level >= the ciphertext's.
fn pt_at(pt: &Plaintext, nq: usize) -> Result<std::borrow::Cow<'_, Poly<Ntt>>> {
    if pt.poly.nq < nq {
        return Err(Error::LevelMismatch {
            left: nq - 1,
            right: pt.level(),
        });
    }
    if pt.poly.nq == nq {
        return Ok(std::borrow::Cow::Borrowed(&pt.poly));
    }
    Ok(std::borrow::Cow::Owned(pt.poly.prefix_q(nq)))
}

/// Divides an NTT-form polynomial by its last prime with rounding and drops that prime.
fn rescale_poly(ctx: &Context, p: &mut Poly<Ntt>) {
    let n = ctx.n;
    let l = p.nq - 1;
    let ql = ctx.moduli[l].value();
    let mut last = p.limb(l).to_vec();
    ctx.plans[l].inv(&mut last);
    ctx.plans[l].normalize(&mut last);
    let half = ql / 2;
    for_limbs(&mut p.data[..l * n], n, |i, limb| {
        let m = &ctx.moduli[i];
        let ql_mod = m.reduce(ql);
        let inv = m.inv(ql_mod).expect("distinct primes");
        let inv_s = m.shoup(inv);
        with_scratch(n, |buf| {
            let q = m.value();
            if !crate::simd::centered_reduce(buf, &last, q, ql, ql_mod) {
                for (b, &t) in buf.iter_mut().zip(&last) {
                    let r = m.reduce(t);
                    *b = if t > half { m.sub(r, ql_mod) } else { r };
                }
            }
            ctx.plans[i].fwd(buf);
            if !crate::simd::sub_mul_shoup(limb, buf, inv, q) {
                for (x, &y) in limb.iter_mut().zip(buf.iter()) {
                    *x = m.mul_shoup(m.sub(*x, y), inv, inv_s);
                }
            }
        })
    });
    p.truncate_q(l);
}

impl Evaluator {
    /// An evaluator for `params`.
    pub fn new(params: &Parameters) -> Self {
        Self {
            params: params.clone(),
        }
    }

    /// The parameters.
    pub fn params(&self) -> &Parameters {
        &self.params
    }

    fn ctx(&self) -> &Context {
        &self.params.ctx
    }

    fn check_cc(&self, a: &Ciphertext, b: &Ciphertext) -> Result<()> {
        check_level(a.level(), b.level())?;
        check_scale(a.scale, b.scale)?;
        check_slots(a.slots, b.slots)
    }

    // ----- addition, subtraction, negation -----

    /// `a += b`.
    pub fn add_assign(&self, a: &mut Ciphertext, b: &Ciphertext) -> Result<()> {
        self.check_cc(a, b)?;
        let ctx = self.ctx();
        for (i, pb) in b.polys.iter().enumerate() {
            if i < a.polys.len() {
                a.polys[i].add_assign_ctx(ctx, pb);
            } else {
                a.polys.push(pb.clone());
            }
        }
        Ok(())
    }

    /// `a + b`.
    pub fn add(&self, a: &Ciphertext, b: &Ciphertext) -> Result<Ciphertext> {
        let mut out = a.clone();
        self.add_assign(&mut out, b)?;
        Ok(out)
    }

    /// `a -= b`.
    pub fn sub_assign(&self, a: &mut Ciphertext, b: &Ciphertext) -> Result<()> {
        self.check_cc(a, b)?;
        let ctx = self.ctx();
        for (i, pb) in b.polys.iter().enumerate() {
            if i < a.polys.len() {
                a.polys[i].sub_assign_ctx(ctx, pb);
            } else {
                let mut p = pb.clone();
                p.neg_assign_ctx(ctx);
                a.polys.push(p);
            }
        }
        Ok(())
    }

    /// `a - b`.
    pub fn sub(&self, a: &Ciphertext, b: &Ciphertext) -> Result<Ciphertext> {
        let mut out = a.clone();
        self.sub_assign(&mut out, b)?;
        Ok(out)
    }

    /// `ct = -ct`.
    pub fn negate_assign(&self, ct: &mut Ciphertext) {
        for p in &mut ct.polys {
            p.neg_assign_ctx(self.ctx());
        }
    }

    /// `-ct`.
    pub fn negate(&self, ct: &Ciphertext) -> Ciphertext {
        let mut out = ct.clone();
        self.negate_assign(&mut out);
        out
    }

    /// `ct += pt` (the plaintext may be at a higher level; its lower primes are used).
    pub fn add_plain_assign(&self, ct: &mut Ciphertext, pt: &Plaintext) -> Result<()> {
        check_scale(ct.scale, pt.scale)?;
        check_slots(ct.slots, pt.slots)?;
        let p = pt_at(pt, ct.level() + 1)?;
        ct.polys[0].add_assign_ctx(self.ctx(), &p);
        Ok(())
    }

    /// `ct + pt`.
    pub fn add_plain(&self, ct: &Ciphertext, pt: &Plaintext) -> Result<Ciphertext> {
        let mut out = ct.clone();
        self.add_plain_assign(&mut out, pt)?;
        Ok(out)
    }

    /// `ct -= pt`.
    pub fn sub_plain_assign(&self, ct: &mut Ciphertext, pt: &Plaintext) -> Result<()> {
        check_scale(ct.scale, pt.scale)?;
        check_slots(ct.slots, pt.slots)?;
        let p = pt_at(pt, ct.level() + 1)?;
        ct.polys[0].sub_assign_ctx(self.ctx(), &p);
        Ok(())
    }

    /// `ct - pt`.
    pub fn sub_plain(&self, ct: &Ciphertext, pt: &Plaintext) -> Result<Ciphertext> {
        let mut out = ct.clone();
        self.sub_plain_assign(&mut out, pt)?;
        Ok(out)
    }

    /// Adds the real constant `c` to every slot.
    pub fn add_const_assign(&self, ct: &mut Ciphertext, c: f64) -> Result<()> {
        let v = (c * ct.scale).round();
        if v.is_nan() || v.abs() >= 2f64.powi(126) {
            return Err(Error::EncodingOverflow {
                value: c,
                log2_scale: ct.scale.log2(),
            });
        }
        let v = v as i128;
        let ctx = self.ctx();
        // A constant polynomial evaluates to the same value at every NTT point.
        for_limbs(&mut ct.polys[0].data, ctx.n, |i, limb| {
            let m = &ctx.moduli[i];
            let r = m.reduce_i128(v);
            for x in limb.iter_mut() {
                *x = m.add(*x, r);
            }
        });
        Ok(())
    }

    /// `ct + c` in every slot.
    pub fn add_const(&self, ct: &Ciphertext, c: f64) -> Result<Ciphertext> {
        let mut out = ct.clone();
        self.add_const_assign(&mut out, c)?;
        Ok(out)
    }

    // ----- multiplication -----

    /// `a *= b` without relinearization (result has degree 2; scales multiply).
    pub fn multiply_assign(&self, a: &mut Ciphertext, b: &Ciphertext) -> Result<()> {
        *a = self.multiply(a, b)?;
        Ok(())
    }

    /// `a * b` without relinearization (degree 2).
    pub fn multiply(&self, a: &Ciphertext, b: &Ciphertext) -> Result<Ciphertext> {
        let nq = a.level() + 1;
        let mut out = Ciphertext {
            polys: (0..3)
                .map(|_| Poly::<Ntt>::zero_ctx(self.ctx(), nq, 0))
                .collect(),
            scale: a.scale * b.scale,
            slots: a.slots,
        };
        self.multiply_acc(&mut out, a, b)?;
        Ok(out)
    }

    /// Fused `acc += a * b` (tensor product, no relinearization), bit-identical to
    /// `add_assign(acc, &multiply(a, b))`. `acc` becomes degree 2; it must be at the level of
    /// `a` and `b` with scale `a.scale() * b.scale()`.
    pub fn multiply_acc(&self, acc: &mut Ciphertext, a: &Ciphertext, b: &Ciphertext) -> Result<()> {
        check_degree(a, 1)?;
        check_degree(b, 1)?;
        check_level(a.level(), b.level())?;
        check_slots(a.slots, b.slots)?;
        Self::check_accumulator(acc, a, b.scale)?;
        let ctx = self.ctx();
        let nq = a.level() + 1;
        while acc.polys.len() < 3 {
            acc.polys.push(Poly::<Ntt>::zero_ctx(ctx, nq, 0));
        }
        let (a0, a1, b0, b1) = (&a.polys[0], &a.polys[1], &b.polys[0], &b.polys[1]);
        acc.polys[0].mul_acc_ctx(ctx, a0, b0);
        acc.polys[1].mul_acc_ctx(ctx, a0, b1);
        acc.polys[1].mul_acc_ctx(ctx, a1, b0);
        acc.polys[2].mul_acc_ctx(ctx, a1, b1);
        Ok(())
    }

    /// `Σ a_i ⊗ b_i` over `pairs` (tensor products, not relinearized: degree 2), bit-identical
    /// to chaining [`Evaluator::multiply_acc`] but with one modular reduction per coefficient
    /// for many products (AVX-512 IFMA where available). All operands at one level, all
    /// products at one scale.
    pub fn multiply_sum(&self, pairs: &[(&Ciphertext, &Ciphertext)]) -> Result<Ciphertext> {
        let mut out = self.multiply_sums(&[pairs])?;
        Ok(out.pop().expect("one sum"))
    }

    /// Several [`Evaluator::multiply_sum`]s at once, coefficient block by coefficient block,
    /// so that operands shared by many sums are read from memory once. All operands of all
    /// sums at one level; each sum's products at one scale.
    pub fn multiply_sums(&self, sums: &[&[(&Ciphertext, &Ciphertext)]]) -> Result<Vec<Ciphertext>> {
        let first = sums
            .first()
            .and_then(|s| s.first())
            .ok_or(Error::EmptySum)?
            .0;
        let mut terms = Vec::new();
        let mut outs = Vec::with_capacity(sums.len());
        for (i, pairs) in sums.iter().enumerate() {
            let (a, b) = pairs.first().ok_or(Error::EmptySum)?;
            let scale = a.scale * b.scale;
            for (x, y) in pairs.iter() {
                check_degree(x, 1)?;
                check_degree(y, 1)?;
                for z in [x, y] {
                    check_level(first.level(), z.level())?;
                    check_slots(first.slots, z.slots)?;
                }
                check_scale(scale, x.scale * y.scale)?;
                let (x0, x1, y0, y1) = (&x.polys[0], &x.polys[1], &y.polys[0], &y.polys[1]);
                let o = 3 * i;
                terms.extend([
                    (o, x0, y0),
                    (o + 1, x0, y1),
                    (o + 1, x1, y0),
                    (o + 2, x1, y1),
                ]);
            }
            outs.push((3, scale));
        }
        Ok(self.assemble(
            self.dot(3 * sums.len(), first.level() + 1, &terms),
            &outs,
            first.slots,
        ))
    }

    /// `Σ ct_i ⊙ pt_i` over `pairs`, bit-identical to chaining
    /// [`Evaluator::multiply_plain_acc`] but with one modular reduction per coefficient for many
    /// products. Ciphertexts at one level and degree, plaintexts at that level or above, all
    /// products at one scale.
    pub fn multiply_plain_sum(&self, pairs: &[(&Ciphertext, &Plaintext)]) -> Result<Ciphertext> {
        let mut out = self.multiply_plain_sums(&[pairs])?;
        Ok(out.pop().expect("one sum"))
    }

    /// Several [`Evaluator::multiply_plain_sum`]s at once (operands shared by many sums are
    /// read from memory once). All ciphertexts of all sums at one level; within a sum, one
    /// degree and one product scale.
    pub fn multiply_plain_sums(
        &self,
        sums: &[&[(&Ciphertext, &Plaintext)]],
    ) -> Result<Vec<Ciphertext>> {
        let first = sums
            .first()
            .and_then(|s| s.first())
            .ok_or(Error::EmptySum)?
            .0;
        let mut terms = Vec::new();
        let mut outs = Vec::with_capacity(sums.len());
        let mut base = 0;
        for pairs in sums {
            let (c, p) = pairs.first().ok_or(Error::EmptySum)?;
            let scale = c.scale * p.scale;
            for (x, pt) in pairs.iter() {
                Self::check_plain_product(x, pt)?;
                check_degree(x, c.degree())?;
                check_level(first.level(), x.level())?;
                check_slots(first.slots, x.slots)?;
                check_scale(scale, x.scale * pt.scale)?;
                terms.extend(
                    x.polys
                        .iter()
                        .enumerate()
                        .map(|(i, q)| (base + i, q, &pt.poly)),
                );
            }
            outs.push((c.polys.len(), scale));
            base += c.polys.len();
        }
        Ok(self.assemble(
            self.dot(base, first.level() + 1, &terms),
            &outs,
            first.slots,
        ))
    }

    /// Groups consecutive polynomials into ciphertexts of the given `(polynomials, scale)`.
    fn assemble(
        &self,
        polys: Vec<Poly<Ntt>>,
        outs: &[(usize, f64)],
        slots: usize,
    ) -> Vec<Ciphertext> {
        let mut polys = polys.into_iter();
        outs.iter()
            .map(|&(k, scale)| Ciphertext {
                polys: polys.by_ref().take(k).collect(),
                scale,
                slots,
            })
            .collect()
    }

    /// `outs[o] = Σ x ⊙ y` over the terms `(o, x, y)`, on the first `nq` q-limbs.
    fn dot(
        &self,
        outs: usize,
        nq: usize,
        terms: &[(usize, &Poly<Ntt>, &Poly<Ntt>)],
    ) -> Vec<Poly<Ntt>> {
        self.per_limb(outs, nq, |k, out| {
            let limb_terms: Vec<(usize, &[u64], &[u64])> = terms
                .iter()
                .map(|&(o, x, y)| (o, x.limb(k), y.limb(k)))
                .collect();
            self.dot_limb(k, out, &limb_terms);
        })
    }

    /// `out[o] = Σ x ⊙ y mod q_k` over the terms `(o, x, y)` of limb `k` (`out` zero).
    fn dot_limb(&self, k: usize, out: &mut [&mut [u64]], terms: &[(usize, &[u64], &[u64])]) {
        let ctx = self.ctx();
        // The outputs start at zero; the fallback accumulates into them.
        if !crate::simd::dot_sum(out, terms, ctx.moduli[k].value()) {
            for &(o, x, y) in terms {
                ctx.plans[k].mul_accumulate(out[o], x, y);
            }
        }
    }

    /// `outs` zero polynomials of `nq` q-limbs, filled by `f(k, limb k of each)` limb by limb
    /// (in parallel).
    fn per_limb<F>(&self, outs: usize, nq: usize, f: F) -> Vec<Poly<Ntt>>
    where
        F: Fn(usize, &mut [&mut [u64]]) + Send + Sync,
    {
        let ctx = self.ctx();
        let n = ctx.n;
        let mut polys: Vec<Poly<Ntt>> = (0..outs)
            .map(|_| Poly::<Ntt>::zero_ctx(ctx, nq, 0))
            .collect();
        // Limb k of every output polynomial, grouped by k.
        let mut limbs: Vec<Vec<&mut [u64]>> = (0..nq).map(|_| Vec::new()).collect();
        for p in &mut polys {
            for (k, l) in p.data.chunks_exact_mut(n).enumerate() {
                limbs[k].push(l);
            }
        }
        #[cfg(feature = "parallel")]
        {
            use rayon::prelude::*;
            limbs
                .par_iter_mut()
                .enumerate()
                .for_each(|(k, out)| f(k, out));
        }
        #[cfg(not(feature = "parallel"))]
        limbs.iter_mut().enumerate().for_each(|(k, out)| f(k, out));
        polys
    }

    fn check_key(&self, p: &Parameters) -> Result<()> {
        self.params.check_same(p)
    }

    /// Relinearizes a degree-2 ciphertext in place.
    pub fn relinearize_assign(&self, ct: &mut Ciphertext, rlk: &RelinKey) -> Result<()> {
        self.check_key(&rlk.params)?;
        check_degree(ct, 2)?;
        let ctx = self.ctx();
        let c2 = ct.polys.pop().expect("degree 2");
        let (k0, k1) = ks::key_switch(ctx, &c2, &rlk.key);
        ct.polys[0].add_assign_ctx(ctx, &k0);
        ct.polys[1].add_assign_ctx(ctx, &k1);
        Ok(())
    }

    /// Relinearized copy of a degree-2 ciphertext.
    pub fn relinearize(&self, ct: &Ciphertext, rlk: &RelinKey) -> Result<Ciphertext> {
        let mut out = ct.clone();
        self.relinearize_assign(&mut out, rlk)?;
        Ok(out)
    }

    /// `a *= b` followed by relinearization.
    pub fn multiply_relin_assign(
        &self,
        a: &mut Ciphertext,
        b: &Ciphertext,
        rlk: &RelinKey,
    ) -> Result<()> {
        *a = self.multiply_relin(a, b, rlk)?;
        Ok(())
    }

    /// `a * b`, relinearized.
    pub fn multiply_relin(
        &self,
        a: &Ciphertext,
        b: &Ciphertext,
        rlk: &RelinKey,
    ) -> Result<Ciphertext> {
        self.check_key(&rlk.params)?;
        let mut out = self.multiply(a, b)?;
        self.relinearize_assign(&mut out, rlk)?;
        Ok(out)
    }

    fn check_plain_product(ct: &Ciphertext, pt: &Plaintext) -> Result<()> {
        Self::check_plaintext_operand(ct, pt.slots, pt.level())
    }

    /// A plaintext of `slots` slots at `level` can multiply `ct`.
    fn check_plaintext_operand(ct: &Ciphertext, slots: usize, level: usize) -> Result<()> {
        check_slots(ct.slots, slots)?;
        if level < ct.level() {
            return Err(Error::LevelMismatch {
                left: ct.level(),
                right: level,
            });
        }
        Ok(())
    }

    /// `acc` can accumulate `ct` times a plaintext of scale `pt_scale`.
    fn check_accumulator(acc: &Ciphertext, ct: &Ciphertext, pt_scale: f64) -> Result<()> {
        check_level(acc.level(), ct.level())?;
        check_scale(acc.scale, ct.scale * pt_scale)?;
        check_slots(acc.slots, ct.slots)
    }

    /// `ct *= pt` (scales multiply; the plaintext may be at a higher level).
    pub fn multiply_plain_assign(&self, ct: &mut Ciphertext, pt: &Plaintext) -> Result<()> {
        Self::check_plain_product(ct, pt)?;
        let ctx = self.ctx();
        for p in &mut ct.polys {
            p.mul_plain_assign_ctx(ctx, &pt.poly);
        }
        ct.scale *= pt.scale;
        Ok(())
    }

    /// `ct * pt`.
    pub fn multiply_plain(&self, ct: &Ciphertext, pt: &Plaintext) -> Result<Ciphertext> {
        Self::check_plain_product(ct, pt)?;
        let ctx = self.ctx();
        let polys = ct
            .polys
            .iter()
            .map(|p| {
                let mut out = Poly::<Ntt>::zero_ctx(ctx, p.nq, 0);
                out.mul_acc_ctx(ctx, p, &pt.poly);
                out
            })
            .collect();
        Ok(Ciphertext {
            polys,
            scale: ct.scale * pt.scale,
            slots: ct.slots,
        })
    }

    /// `out = ct * pt`, reusing the buffers of `out` (whatever its previous level, scale or
    /// degree): no allocation once `out` has held a ciphertext of this size. Starts an
    /// accumulation continued with [`Evaluator::multiply_plain_acc`].
    pub fn multiply_plain_into(
        &self,
        out: &mut Ciphertext,
        ct: &Ciphertext,
        pt: &Plaintext,
    ) -> Result<()> {
        Self::check_plain_product(ct, pt)?;
        let ctx = self.ctx();
        out.polys.truncate(ct.polys.len());
        for (i, p) in ct.polys.iter().enumerate() {
            if i < out.polys.len() {
                out.polys[i].set_mul_ctx(ctx, p, &pt.poly);
            } else {
                let mut q = Poly::<Ntt>::zero_ctx(ctx, p.nq, 0);
                q.mul_acc_ctx(ctx, p, &pt.poly);
                out.polys.push(q);
            }
        }
        out.scale = ct.scale * pt.scale;
        out.slots = ct.slots;
        Ok(())
    }

    /// Fused `acc += ct * pt` without allocation (when `acc.degree() >= ct.degree()`),
    /// bit-identical to `add_assign(acc, &multiply_plain(ct, pt))`. Requires `acc` at the level
    /// of `ct` with scale `ct.scale() * pt.scale()`; the plaintext may be at a higher level.
    pub fn multiply_plain_acc(
        &self,
        acc: &mut Ciphertext,
        ct: &Ciphertext,
        pt: &Plaintext,
    ) -> Result<()> {
        Self::check_plain_product(ct, pt)?;
        Self::check_accumulator(acc, ct, pt.scale)?;
        let ctx = self.ctx();
        for (i, p) in ct.polys.iter().enumerate() {
            if i < acc.polys.len() {
                acc.polys[i].mul_acc_ctx(ctx, p, &pt.poly);
            } else {
                let mut q = Poly::<Ntt>::zero_ctx(ctx, p.nq, 0);
                q.mul_acc_ctx(ctx, p, &pt.poly);
                acc.polys.push(q);
            }
        }
        Ok(())
    }

    /// Fused `acc += ct * pt` for a [`CompactPlaintext`]: per limb, the plaintext's
    /// coefficients are reduced and transformed to NTT form in a per-thread scratch buffer,
    /// then multiplied in. Bit-identical to [`Evaluator::multiply_plain_acc`] with
    /// `pt.expand()`; same requirements.
    pub fn multiply_compact_acc(
        &self,
        acc: &mut Ciphertext,
        ct: &Ciphertext,
        pt: &CompactPlaintext,
    ) -> Result<()> {
        Self::check_plaintext_operand(ct, pt.slots, pt.level)?;
        Self::check_accumulator(acc, ct, pt.scale)?;
        let ctx = self.ctx();
        let (n, nq) = (ctx.n, ct.level() + 1);
        while acc.polys.len() < ct.polys.len() {
            acc.polys.push(Poly::<Ntt>::zero_ctx(ctx, nq, 0));
        }
        // Limb k of every accumulator polynomial, grouped by k.
        let mut limbs: Vec<Vec<&mut [u64]>> = (0..nq).map(|_| Vec::new()).collect();
        for p in acc.polys.iter_mut().take(ct.polys.len()) {
            for (k, l) in p.data.chunks_exact_mut(n).enumerate() {
                limbs[k].push(l);
            }
        }
        let kernel = |k: usize, out: &mut Vec<&mut [u64]>| {
            let m = &ctx.moduli[k];
            with_scratch(n, |buf| {
                for (b, &c) in buf.iter_mut().zip(&pt.coeffs) {
                    *b = m.reduce_i64(c);
                }
                ctx.plans[k].fwd(buf);
                for (o, src) in out.iter_mut().zip(&ct.polys) {
                    ctx.plans[k].mul_accumulate(o, src.limb(k), buf);
                }
            })
        };
        #[cfg(feature = "parallel")]
        {
            use rayon::prelude::*;
            limbs
                .par_iter_mut()
                .enumerate()
                .for_each(|(k, out)| kernel(k, out));
        }
        #[cfg(not(feature = "parallel"))]
        limbs
            .iter_mut()
            .enumerate()
            .for_each(|(k, out)| kernel(k, out));
        Ok(())
    }

    /// `ct * pt` for a [`CompactPlaintext`] (see [`Evaluator::multiply_compact_acc`]).
    pub fn multiply_compact(&self, ct: &Ciphertext, pt: &CompactPlaintext) -> Result<Ciphertext> {
        let ctx = self.ctx();
        let mut out = Ciphertext {
            polys: (0..ct.polys.len())
                .map(|_| Poly::<Ntt>::zero_ctx(ctx, ct.polys[0].nq, 0))
                .collect(),
            scale: ct.scale * pt.scale,
            slots: ct.slots,
        };
        self.multiply_compact_acc(&mut out, ct, pt)?;
        Ok(out)
    }

    fn mul_big_int(&self, ct: &mut Ciphertext, v: i128) {
        let ctx = self.ctx();
        let nq = ct.level() + 1;
        let scalars: Vec<u64> = (0..nq).map(|i| ctx.moduli[i].reduce_i128(v)).collect();
        for p in &mut ct.polys {
            p.mul_scalar_rns_ctx(ctx, &scalars);
        }
    }

    /// Multiplies every slot by the real constant `c`, encoded as `round(c q_l)` so that the next
    /// rescale restores the current scale exactly (the scale is multiplied by `q_l`).
    pub fn multiply_const_assign(&self, ct: &mut Ciphertext, c: f64) -> Result<()> {
        let ql = self.ctx().moduli[ct.level()].value() as f64;
        let v = (c * ql).round();
        if v.is_nan() || v.abs() >= 2f64.powi(126) {
            return Err(Error::EncodingOverflow {
                value: c,
                log2_scale: ql.log2(),
            });
        }
        self.mul_big_int(ct, v as i128);
        ct.scale *= ql;
        Ok(())
    }

    /// Multiplies every slot by `c` encoded at `const_scale` (as `round(c * const_scale)`); the
    /// scale is multiplied by `const_scale`. Choosing `const_scale = target * q_l / ct.scale()`
    /// makes the next rescale land exactly on `target` (aligning scales without error).
    pub fn multiply_const_with_scale_assign(
        &self,
        ct: &mut Ciphertext,
        c: f64,
        const_scale: f64,
    ) -> Result<()> {
        let v = (c * const_scale).round();
        if !(const_scale.is_finite() && const_scale >= 1.0)
            || v.is_nan()
            || v.abs() >= 2f64.powi(126)
        {
            return Err(Error::EncodingOverflow {
                value: c,
                log2_scale: const_scale.log2(),
            });
        }
        self.mul_big_int(ct, v as i128);
        ct.scale *= const_scale;
        Ok(())
    }

    /// `ct * c` at an explicit constant scale (see
    /// [`Evaluator::multiply_const_with_scale_assign`]).
    pub fn multiply_const_with_scale(
        &self,
        ct: &Ciphertext,
        c: f64,
        const_scale: f64,
    ) -> Result<Ciphertext> {
        let mut out = ct.clone();
        self.multiply_const_with_scale_assign(&mut out, c, const_scale)?;
        Ok(out)
    }

    /// `ct * c` (see [`Evaluator::multiply_const_assign`]).
    pub fn multiply_const(&self, ct: &Ciphertext, c: f64) -> Result<Ciphertext> {
        let mut out = ct.clone();
        self.multiply_const_assign(&mut out, c)?;
        Ok(out)
    }

    /// Multiplies every slot by the integer `k` (exact; the scale is unchanged).
    pub fn multiply_int_assign(&self, ct: &mut Ciphertext, k: i64) {
        self.mul_big_int(ct, k as i128);
    }

    /// `ct * k` for an integer `k`.
    pub fn multiply_int(&self, ct: &Ciphertext, k: i64) -> Ciphertext {
        let mut out = ct.clone();
        self.multiply_int_assign(&mut out, k);
        out
    }

    // ----- levels -----

    /// Divides by the last prime `q_l` (scale /= q_l) and drops it.
    pub fn rescale_assign(&self, ct: &mut Ciphertext) -> Result<()> {
        let level = ct.level();
        if level == 0 {
            return Err(Error::LevelExhausted { level, drop: 1 });
        }
        let ctx = self.ctx();
        let ql = ctx.moduli[level].value() as f64;
        for p in &mut ct.polys {
            rescale_poly(ctx, p);
        }
        ct.scale /= ql;
        Ok(())
    }

    /// Rescaled copy.
    pub fn rescale(&self, ct: &Ciphertext) -> Result<Ciphertext> {
        let mut out = ct.clone();
        self.rescale_assign(&mut out)?;
        Ok(out)
    }

    /// Drops `levels` primes without changing the message or the scale.
    pub fn drop_level_assign(&self, ct: &mut Ciphertext, levels: usize) -> Result<()> {
        let level = ct.level();
        if levels > level {
            return Err(Error::LevelExhausted {
                level,
                drop: levels,
            });
        }
        for p in &mut ct.polys {
            p.truncate_q(level + 1 - levels);
        }
        Ok(())
    }

    /// Copy with `levels` primes dropped.
    pub fn drop_level(&self, ct: &Ciphertext, levels: usize) -> Result<Ciphertext> {
        let level = ct.level();
        if levels > level {
            return Err(Error::LevelExhausted {
                level,
                drop: levels,
            });
        }
        // Copies only the limbs that are kept.
        Ok(Ciphertext {
            polys: ct
                .polys
                .iter()
                .map(|p| p.prefix_q(level + 1 - levels))
                .collect(),
            scale: ct.scale,
            slots: ct.slots,
        })
    }

    /// Drops primes until the ciphertext is at `level`.
    pub fn drop_to_level_assign(&self, ct: &mut Ciphertext, level: usize) -> Result<()> {
        let cur = ct.level();
        if level > cur {
            return Err(Error::LevelMismatch {
                left: cur,
                right: level,
            });
        }
        self.drop_level_assign(ct, cur - level)
    }

    // ----- rotations -----

    fn apply_key(&self, ct: &Ciphertext, gk: &GaloisKey) -> Ciphertext {
        let ctx = self.ctx();
        let (k0, k1) = ks::key_switch(ctx, &ct.polys[1], &gk.key);
        Self::galois_output(ctx, &ct.polys[0], (k0, k1), gk, ct)
    }

    /// `(σ(c0 + k0), σ(k1))`: the automorphism of [`GaloisKey`] `gk` applied to `c0` plus the
    /// key switch `(k0, k1)` of `c1` with it, at the scale and slot count of `like`.
    fn galois_output(
        ctx: &Context,
        c0: &Poly<Ntt>,
        (mut k0, k1): (Poly<Ntt>, Poly<Ntt>),
        gk: &GaloisKey,
        like: &Ciphertext,
    ) -> Ciphertext {
        k0.add_assign_ctx(ctx, c0);
        Ciphertext {
            polys: vec![
                ks::apply_galois(ctx, &k0, &gk.perm),
                ks::apply_galois(ctx, &k1, &gk.perm),
            ],
            scale: like.scale,
            slots: like.slots,
        }
    }

    /// The key realizing a rotation by `r` (already reduced modulo the slot count), if present.
    fn direct_key<'k>(&self, gks: &'k GaloisKeys, r: i64, slots: usize) -> Option<&'k GaloisKey> {
        [r, r - slots as i64]
            .into_iter()
            .find_map(|s| gks.keys.get(&self.params.galois_element(s)))
    }

    /// Steps (each with a key) whose composition rotates by `r`, or `None`.
    fn rotation_plan(&self, gks: &GaloisKeys, r: i64, slots: usize) -> Option<Vec<i64>> {
        if self.direct_key(gks, r, slots).is_some() {
            return Some(vec![r]);
        }
        for (target, sign) in [(r, 1i64), (slots as i64 - r, -1)] {
            let steps: Vec<i64> = (0..63)
                .filter(|b| target >> b & 1 == 1)
                .map(|b| sign * (1i64 << b))
                .collect();
            if steps
                .iter()
                .all(|&s| gks.keys.contains_key(&self.params.galois_element(s)))
            {
                return Some(steps);
            }
        }
        None
    }

    /// Rotates the slots left by `step` (negative = right). Uses the key for `step` if present,
    /// otherwise composes keys for powers of two.
    pub fn rotate(&self, ct: &Ciphertext, step: i64, gks: &GaloisKeys) -> Result<Ciphertext> {
        self.check_key(&gks.params)?;
        check_degree(ct, 1)?;
        let r = step.rem_euclid(ct.slots as i64);
        if r == 0 {
            return Ok(ct.clone());
        }
        let plan = self
            .rotation_plan(gks, r, ct.slots)
            .ok_or(Error::MissingRotationKey { step })?;
        let key = |s: i64| &gks.keys[&self.params.galois_element(s)];
        let (&first, rest) = plan
            .split_first()
            .ok_or(Error::MissingRotationKey { step })?;
        let mut out = self.apply_key(ct, key(first));
        for &s in rest {
            out = self.apply_key(&out, key(s));
        }
        Ok(out)
    }

    /// In-place [`Evaluator::rotate`].
    pub fn rotate_assign(&self, ct: &mut Ciphertext, step: i64, gks: &GaloisKeys) -> Result<()> {
        *ct = self.rotate(ct, step, gks)?;
        Ok(())
    }

    /// Rotations by many steps sharing one decomposition of `c1` (hoisting). Steps without a
    /// direct key fall back to composed rotations.
    pub fn rotate_hoisted(
        &self,
        ct: &Ciphertext,
        steps: &[i64],
        gks: &GaloisKeys,
    ) -> Result<Vec<Ciphertext>> {
        self.check_key(&gks.params)?;
        check_degree(ct, 1)?;
        let ctx = self.ctx();
        let mut digits = None;
        steps
            .iter()
            .map(|&step| {
                let r = step.rem_euclid(ct.slots as i64);
                if r == 0 {
                    return Ok(ct.clone());
                }
                let Some(key) = self.direct_key(gks, r, ct.slots) else {
                    return self.rotate(ct, step, gks);
                };
                let d = digits.get_or_insert_with(|| ks::decompose(ctx, &ct.polys[1]));
                let switched = ks::key_switch_decomposed(ctx, d, &key.key);
                Ok(Self::galois_output(ctx, &ct.polys[0], switched, key, ct))
            })
            .collect()
    }

    /// Complex conjugation of every slot.
    pub fn conjugate(&self, ct: &Ciphertext, gks: &GaloisKeys) -> Result<Ciphertext> {
        self.check_key(&gks.params)?;
        check_degree(ct, 1)?;
        let key = gks
            .keys
            .get(&self.params.conjugation_element())
            .ok_or(Error::MissingConjugationKey)?;
        Ok(self.apply_key(ct, key))
    }

    /// In-place [`Evaluator::conjugate`].
    pub fn conjugate_assign(&self, ct: &mut Ciphertext, gks: &GaloisKeys) -> Result<()> {
        *ct = self.conjugate(ct, gks)?;
        Ok(())
    }

    /// Replaces slot `i` by the sum of slots `i .. i + span` (cyclically); `span` a power of two.
    pub fn rotate_and_sum_assign(
        &self,
        ct: &mut Ciphertext,
        span: usize,
        gks: &GaloisKeys,
    ) -> Result<()> {
        if !span.is_power_of_two() || span > ct.slots {
            return Err(Error::InvalidSpan {
                span,
                slots: ct.slots,
            });
        }
        let mut s = 1;
        while s < span {
            let r = self.rotate(ct, s as i64, gks)?;
            self.add_assign(ct, &r)?;
            s *= 2;
        }
        Ok(())
    }

    /// Copy with [`Evaluator::rotate_and_sum_assign`] applied.
    pub fn rotate_and_sum(
        &self,
        ct: &Ciphertext,
        span: usize,
        gks: &GaloisKeys,
    ) -> Result<Ciphertext> {
        let mut out = ct.clone();
        self.rotate_and_sum_assign(&mut out, span, gks)?;
        Ok(out)
    }
}
