//! Word-size modular arithmetic (Barrett and Shoup reductions) and NTT-friendly prime search.

/// A prime modulus below 2^61 with precomputed reduction constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Modulus {
    q: u64,
    /// floor(2^128 / q), low and high words.
    ratio: (u64, u64),
}

impl Modulus {
    /// Creates the reduction context for `q` (must satisfy 2 <= q < 2^61).
    pub fn new(q: u64) -> Self {
        debug_assert!((2..1 << 61).contains(&q));
        let r = u128::MAX / q as u128;
        // u128::MAX / q equals floor(2^128 / q) unless q divides 2^128, impossible for odd q > 1.
        Self {
            q,
            ratio: (r as u64, (r >> 64) as u64),
        }
    }

    /// The modulus value.
    #[inline(always)]
    pub fn value(&self) -> u64 {
        self.q
    }

    /// Barrett reduction of any 128-bit value.
    #[inline(always)]
    pub fn reduce_u128(&self, x: u128) -> u64 {
        let (x0, x1) = (x as u64, (x >> 64) as u64);
        let (r0, r1) = self.ratio;
        // floor(x * ratio / 2^128), possibly underestimated by at most 2.
        let carry = ((x0 as u128 * r0 as u128) >> 64) as u64;
        let t = x0 as u128 * r1 as u128 + carry as u128;
        let u = x1 as u128 * r0 as u128 + (t as u64) as u128;
        let est = x1
            .wrapping_mul(r1)
            .wrapping_add((t >> 64) as u64)
            .wrapping_add((u >> 64) as u64);
        let mut r = x0.wrapping_sub(est.wrapping_mul(self.q));
        while r >= self.q {
            r -= self.q;
        }
        r
    }

    /// Reduces a 64-bit value.
    #[inline(always)]
    pub fn reduce(&self, x: u64) -> u64 {
        if x < self.q {
            x
        } else {
            // One high product with floor(2^64 / q) (the ratio's high word): the estimate of
            // floor(x / q) is short by at most 2.
            let est = ((x as u128 * self.ratio.1 as u128) >> 64) as u64;
            let mut r = x.wrapping_sub(est.wrapping_mul(self.q));
            if r >= self.q {
                r -= self.q;
            }
            if r >= self.q {
                r -= self.q;
            }
            r
        }
    }

    /// Reduces a signed value into `[0, q)`.
    #[inline(always)]
    pub fn reduce_i64(&self, x: i64) -> u64 {
        let r = self.reduce(x.unsigned_abs());
        if x < 0 { self.neg(r) } else { r }
    }

    /// Reduces a signed 128-bit value into `[0, q)`.
    #[inline(always)]
    pub fn reduce_i128(&self, x: i128) -> u64 {
        let r = self.reduce_u128(x.unsigned_abs());
        if x < 0 { self.neg(r) } else { r }
    }

    /// `a * b mod q` for reduced inputs.
    #[inline(always)]
    pub fn mul(&self, a: u64, b: u64) -> u64 {
        self.reduce_u128(a as u128 * b as u128)
    }

    /// `a + b mod q` for reduced inputs.
    #[inline(always)]
    pub fn add(&self, a: u64, b: u64) -> u64 {
        let s = a + b;
        if s >= self.q { s - self.q } else { s }
    }

    /// `a - b mod q` for reduced inputs.
    #[inline(always)]
    pub fn sub(&self, a: u64, b: u64) -> u64 {
        if a >= b { a - b } else { a + self.q - b }
    }

    /// `-a mod q` for a reduced input.
    #[inline(always)]
    pub fn neg(&self, a: u64) -> u64 {
        if a == 0 { 0 } else { self.q - a }
    }

    /// Shoup constant `floor(w * 2^64 / q)` for a reduced `w`.
    #[inline]
    pub fn shoup(&self, w: u64) -> u64 {
        (((w as u128) << 64) / self.q as u128) as u64
    }

    /// `a * w mod q` given `w_shoup = self.shoup(w)`; `a` may be any 64-bit value.
    #[inline(always)]
    pub fn mul_shoup(&self, a: u64, w: u64, w_shoup: u64) -> u64 {
        let est = ((a as u128 * w_shoup as u128) >> 64) as u64;
        let r = a.wrapping_mul(w).wrapping_sub(est.wrapping_mul(self.q));
        if r >= self.q { r - self.q } else { r }
    }

    /// `a^e mod q`.
    pub fn pow(&self, mut a: u64, mut e: u64) -> u64 {
        let mut r = 1 % self.q;
        a = self.reduce(a);
        while e > 0 {
            if e & 1 == 1 {
                r = self.mul(r, a);
            }
            a = self.mul(a, a);
            e >>= 1;
        }
        r
    }

    /// Inverse modulo the prime `q` (Fermat); `None` for zero.
    pub fn inv(&self, a: u64) -> Option<u64> {
        let a = self.reduce(a);
        (a != 0).then(|| self.pow(a, self.q - 2))
    }

    /// Centered lift of a reduced value to `(-q/2, q/2]`.
    #[inline(always)]
    pub fn center(&self, a: u64) -> i64 {
        if a > self.q / 2 {
            a as i64 - self.q as i64
        } else {
            a as i64
        }
    }
}

/// Deterministic Miller-Rabin primality test for 64-bit integers.
pub fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    for p in [2u64, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37] {
        if n.is_multiple_of(p) {
            return n == p;
        }
    }
    let m = Modulus::new_any(n);
    let (mut d, mut s) = (n - 1, 0);
    while d.is_multiple_of(2) {
        d /= 2;
        s += 1;
    }
    'witness: for a in [2u64, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37] {
        let mut x = m.pow(a, d);
        if x == 1 || x == n - 1 {
            continue;
        }
        for _ in 1..s {
            x = m.mul(x, x);
            if x == n - 1 {
                continue 'witness;
            }
        }
        return false;
    }
    true
}

impl Modulus {
    /// Like [`Modulus::new`] but allows any modulus >= 2 (used by the primality test).
    fn new_any(q: u64) -> Self {
        let r = u128::MAX / q as u128;
        Self {
            q,
            ratio: (r as u64, (r >> 64) as u64),
        }
    }
}

/// Finds NTT-friendly primes (`q = 1 mod 2N`).
///
/// `below_only`: take the largest primes below `2^bits`; otherwise take primes alternately just
/// above and just below `2^bits` (keeps rescaled scales close to `2^bits`). Primes in `exclude`
/// are skipped. Returns `None` if the search range runs out.
pub fn ntt_primes(
    bits: u32,
    two_n: u64,
    count: usize,
    below_only: bool,
    exclude: &[u64],
) -> Option<Vec<u64>> {
    let center = 1u64 << bits;
    let lower_limit = 1u64 << (bits - 1);
    let upper_limit = 1u64 << (bits + 1).min(62);
    let mut out = Vec::with_capacity(count);
    let mut down = center + 1 - two_n; // largest 1 mod 2N below 2^bits
    let mut up = center + 1 + two_n;
    let mut take_up = !below_only;
    while out.len() < count {
        let down_ok = down > lower_limit;
        let up_ok = !below_only && up < upper_limit;
        if !down_ok && !up_ok {
            return None;
        }
        let use_up = up_ok && (take_up || !down_ok);
        let cand = if use_up {
            let c = up;
            up += two_n;
            c
        } else {
            let c = down;
            down -= two_n;
            c
        };
        if is_prime(cand) && !exclude.contains(&cand) && !out.contains(&cand) {
            out.push(cand);
            if !below_only {
                take_up = !take_up;
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn barrett_matches_u128_remainder() {
        let mut s = 0x1234_5678_9abc_def0u64;
        for q in [
            3u64,
            65537,
            (1 << 40) + 0x2_8001,
            (1 << 50) - 27,
            (1 << 61) - 1,
        ] {
            let m = Modulus::new(q);
            for _ in 0..2000 {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let x = (s as u128) << 64 | s.rotate_left(7) as u128;
                assert_eq!(m.reduce_u128(x) as u128, x % q as u128);
                for y in [s, u64::MAX - (s >> 40), q.wrapping_mul(s >> 3)] {
                    assert_eq!(m.reduce(y), y % q);
                    assert_eq!(
                        m.reduce_i64(y as i64),
                        (y as i64).rem_euclid(q as i64) as u64
                    );
                }
                let (a, b) = (s % q, s.rotate_left(21) % q);
                assert_eq!(m.mul(a, b) as u128, a as u128 * b as u128 % q as u128);
                let ws = m.shoup(b);
                assert_eq!(
                    m.mul_shoup(s, b, ws) as u128,
                    s as u128 * b as u128 % q as u128
                );
            }
        }
    }

    #[test]
    fn primality() {
        let primes = [
            2u64,
            3,
            65537,
            1_000_000_007,
            (1 << 61) - 1,
            4_611_686_018_427_387_847,
        ];
        for p in primes {
            assert!(is_prime(p), "{p}");
        }
        let composites = [
            1u64,
            4,
            561,
            1_000_000_007 * 3,
            3_215_031_751,
            (1 << 61) + 1,
        ];
        for c in composites {
            assert!(!is_prime(c), "{c}");
        }
    }

    #[test]
    fn prime_search() {
        let two_n = 1 << 15;
        let ps = ntt_primes(40, two_n, 10, false, &[]).unwrap();
        for (i, &p) in ps.iter().enumerate() {
            assert!(is_prime(p) && p % two_n == 1);
            assert!(((p as f64).log2() - 40.0).abs() < 0.01);
            assert!(!ps[..i].contains(&p));
        }
        let below = ntt_primes(50, two_n, 3, true, &ps).unwrap();
        assert!(below.iter().all(|&p| p < 1 << 50 && p % two_n == 1));
        assert!(ntt_primes(20, 1 << 17, 100, true, &[]).is_none());
    }
}
