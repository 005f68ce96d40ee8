//! Polynomial evaluation on ciphertexts, in power or Chebyshev basis, at optimal depth.
//!
//! A polynomial of degree `d` is evaluated with `⌈log2(d+1)⌉` levels. It is split recursively,
//! `p = q·B_{2^k} + r` with `2^k ≤ deg p < 2^{k+1}` (giant steps), until a part can be formed as
//! a linear combination of the baby steps `B_1..B_g` within its level budget (Paterson–Stockmeyer
//! / BSGS). Each part is evaluated straight at the level and scale where it is consumed, so
//! every addition meets exactly matching scales; products are relinearized lazily (sums of
//! unrelinearized products are relinearized once, when they become a multiplicand or the
//! result), and always before rescaling. A Chebyshev interval `[a, b]` other than `[-1, 1]` is
//! first mapped to `[-1, 1]` by one constant product (one extra level); fold that map into the
//! preceding linear layer with [`Polynomial::normalized`] to save it. (Doing it by reinterpreting the scale would be free,
//! but the scale error then squares with every product and overflows the modulus for wide
//! intervals.)

use std::collections::BTreeMap;

use crate::backend::SlotBackend;
use crate::error::{Error, Result};
use crate::plan::OpPlan;

/// Polynomial basis.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Basis {
    /// Monomials `x^i`.
    Power,
    /// Chebyshev polynomials `T_i(y)` of `y = (2x - a - b) / (b - a)`, for `x` in `[a, b]`.
    Chebyshev {
        /// Lower end of the interval.
        a: f64,
        /// Upper end of the interval.
        b: f64,
    },
}

/// A polynomial: coefficients in a basis (`coeffs[i]` multiplies the `i`-th basis element).
#[derive(Debug, Clone, PartialEq)]
pub struct Polynomial {
    basis: Basis,
    coeffs: Vec<f64>,
}

impl Polynomial {
    /// `Σ coeffs[i] x^i`.
    pub fn power(coeffs: Vec<f64>) -> Result<Self> {
        Self::new(Basis::Power, coeffs)
    }

    /// `Σ coeffs[i] T_i(y)` on `[a, b]`.
    pub fn chebyshev(coeffs: Vec<f64>, a: f64, b: f64) -> Result<Self> {
        if !(a.is_finite() && b.is_finite() && a < b) {
            return Err(Error::InvalidParameter {
                name: "Chebyshev interval",
                value: format!("[{a}, {b}]"),
            });
        }
        Self::new(Basis::Chebyshev { a, b }, coeffs)
    }

    fn new(basis: Basis, mut coeffs: Vec<f64>) -> Result<Self> {
        if let Some(c) = coeffs.iter().find(|c| !c.is_finite()) {
            return Err(Error::InvalidParameter {
                name: "polynomial coefficient",
                value: c.to_string(),
            });
        }
        while coeffs.len() > 1 && coeffs.last() == Some(&0.0) {
            coeffs.pop();
        }
        if coeffs.is_empty() {
            coeffs.push(0.0);
        }
        Ok(Self { basis, coeffs })
    }

    /// Chebyshev interpolant of degree `degree` of `f` on `[a, b]` (at the Chebyshev nodes).
    pub fn fit_chebyshev(f: impl Fn(f64) -> f64, a: f64, b: f64, degree: usize) -> Result<Self> {
        let m = degree + 1;
        let nodes: Vec<f64> = (0..m)
            .map(|j| (std::f64::consts::PI * (j as f64 + 0.5) / m as f64).cos())
            .collect();
        let values: Vec<f64> = nodes
            .iter()
            .map(|y| f(0.5 * (b - a) * y + 0.5 * (a + b)))
            .collect();
        let coeffs = (0..m)
            .map(|k| {
                let s: f64 = nodes
                    .iter()
                    .zip(&values)
                    .map(|(y, v)| v * (k as f64 * y.acos()).cos())
                    .sum();
                if k == 0 {
                    s / m as f64
                } else {
                    2.0 * s / m as f64
                }
            })
            .collect();
        Self::chebyshev(coeffs, a, b)
    }

    /// Basis.
    pub fn basis(&self) -> Basis {
        self.basis
    }
    /// Coefficients.
    pub fn coeffs(&self) -> &[f64] {
        &self.coeffs
    }
    /// Degree.
    pub fn degree(&self) -> usize {
        self.coeffs.len() - 1
    }
    /// Levels consumed by [`eval`]: `⌈log2(degree + 1)⌉`, plus one for a Chebyshev interval
    /// other than `[-1, 1]` (see [`Polynomial::normalized`]).
    pub fn depth(&self) -> usize {
        self.tree_depth() + usize::from(self.needs_affine())
    }

    fn tree_depth(&self) -> usize {
        ceil_log2(self.degree() + 1)
    }

    fn affine(&self) -> (f64, f64) {
        match self.basis {
            Basis::Power => (1.0, 0.0),
            Basis::Chebyshev { a, b } => (2.0 / (b - a), -(a + b) / (b - a)),
        }
    }

    fn needs_affine(&self) -> bool {
        self.degree() > 0 && self.affine() != (1.0, 0.0)
    }

    /// `(alpha, beta, p')` with `p(x) = p'(alpha·x + beta)` and `p'` on `[-1, 1]` (or `p` itself
    /// for the power basis): apply `alpha·x + beta` in the previous linear layer (scale its
    /// weights by `alpha`, its bias by `alpha` then add `beta`) and evaluate `p'` at optimal depth.
    pub fn normalized(&self) -> (f64, f64, Polynomial) {
        let (alpha, beta) = self.affine();
        let basis = match self.basis {
            Basis::Power => Basis::Power,
            Basis::Chebyshev { .. } => Basis::Chebyshev { a: -1.0, b: 1.0 },
        };
        (
            alpha,
            beta,
            Polynomial {
                basis,
                coeffs: self.coeffs.clone(),
            },
        )
    }

    /// Evaluates at a real `x` (Horner / Clenshaw).
    pub fn eval_f64(&self, x: f64) -> f64 {
        match self.basis {
            Basis::Power => self.coeffs.iter().rev().fold(0.0, |acc, c| acc * x + c),
            Basis::Chebyshev { a, b } => {
                let y = (2.0 * x - a - b) / (b - a);
                let (mut b1, mut b2) = (0.0, 0.0);
                for &c in self.coeffs[1..].iter().rev() {
                    let t = 2.0 * y * b1 - b2 + c;
                    b2 = b1;
                    b1 = t;
                }
                y * b1 - b2 + self.coeffs[0]
            }
        }
    }

    /// Key switches, depth (and no rotations) of [`eval`].
    pub fn plan(&self) -> OpPlan {
        let depth = self.tree_depth();
        if self.degree() == 0 {
            return OpPlan {
                name: "polynomial degree 0".into(),
                ..OpPlan::default()
            };
        }
        let tree = build(
            self.chebyshev_basis(),
            &self.coeffs,
            depth,
            baby_size(depth),
        );
        let mut need = BTreeMap::new();
        tree.basis_needed(self.chebyshev_basis(), &mut need);
        let products = need.keys().filter(|&&i| i >= 2).count() as u64;
        OpPlan {
            name: format!("polynomial degree {}", self.degree()),
            relinearizations: products + tree.relins(true),
            depth: self.depth(),
            ..OpPlan::default()
        }
    }

    fn chebyshev_basis(&self) -> bool {
        matches!(self.basis, Basis::Chebyshev { .. })
    }
}

fn ceil_log2(x: usize) -> usize {
    x.next_power_of_two().trailing_zeros() as usize
}

/// Depth of basis element `i`.
fn elem_depth(i: usize) -> usize {
    if i <= 1 { 0 } else { ceil_log2(i) }
}

/// Baby steps `B_1..B_g` with `g = 2^⌈depth/2⌉`.
fn baby_size(depth: usize) -> usize {
    1 << depth.div_ceil(2).max(1)
}

/// The evaluation tree, built from the coefficients and the level budget.
#[derive(Debug)]
enum Node {
    /// `Σ c_i B_i`.
    Leaf(Vec<f64>),
    /// `q · B_{2^k} + r`.
    Split {
        k: usize,
        q: Box<Node>,
        r: Option<Box<Node>>,
    },
}

/// Splits `p = q·B_n + r` with `n ≤ deg p < 2n`.
fn divide(cheb: bool, c: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let d = c.len() - 1;
    let mut r = c[..n].to_vec();
    let mut q = vec![0.0; d - n + 1];
    q[0] = c[n];
    for j in 1..=d - n {
        if cheb {
            q[j] = 2.0 * c[n + j];
            r[n - j] -= c[n + j];
        } else {
            q[j] = c[n + j];
        }
    }
    (q, r)
}

fn trim(mut c: Vec<f64>) -> Vec<f64> {
    while c.len() > 1 && c.last() == Some(&0.0) {
        c.pop();
    }
    c
}

fn build(cheb: bool, c: &[f64], budget: usize, g: usize) -> Node {
    let d = c.len() - 1;
    let leaf_ok = d <= 1 || (d <= g && elem_depth(d) < budget);
    if leaf_ok {
        return Node::Leaf(c.to_vec());
    }
    let k = usize::BITS as usize - 1 - d.leading_zeros() as usize;
    let (q, r) = divide(cheb, c, 1 << k);
    let r = trim(r);
    let r = if r.iter().all(|&x| x == 0.0) {
        None
    } else {
        Some(Box::new(build(cheb, &r, budget, g)))
    };
    Node::Split {
        k,
        q: Box::new(build(cheb, &trim(q), budget - 1, g)),
        r,
    }
}

impl Node {
    /// Basis elements needed (with their own dependencies).
    fn basis_needed(&self, cheb: bool, need: &mut BTreeMap<usize, ()>) {
        match self {
            Node::Leaf(c) => {
                for (i, &x) in c.iter().enumerate().skip(1) {
                    if x != 0.0 {
                        mark(i, cheb, need);
                    }
                }
                if c.len() == 1 || c[1..].iter().all(|&x| x == 0.0) {
                    mark(1, cheb, need);
                }
            }
            Node::Split { k, q, r } => {
                mark(1 << k, cheb, need);
                q.basis_needed(cheb, need);
                if let Some(r) = r {
                    r.basis_needed(cheb, need);
                }
            }
        }
    }

    /// Relinearizations of the tree: split products are relinearized when they are a
    /// multiplicand (`q` of a split) or the final result.
    fn relins(&self, is_mult_or_root: bool) -> u64 {
        match self {
            Node::Leaf(_) => 0,
            Node::Split { q, r, .. } => {
                u64::from(is_mult_or_root)
                    + q.relins(true)
                    + r.as_ref().map_or(0, |r| r.relins(false))
            }
        }
    }
}

/// How basis element `i` is formed: `B_i = B_hi · B_lo` (times 2, minus `B_diff`, for Chebyshev).
fn factors(i: usize) -> (usize, usize) {
    let hi = if i.is_power_of_two() {
        i / 2
    } else {
        1 << (usize::BITS - 1 - i.leading_zeros())
    };
    (hi, i - hi)
}

fn mark(i: usize, cheb: bool, need: &mut BTreeMap<usize, ()>) {
    if i == 0 || need.contains_key(&i) {
        return;
    }
    need.insert(i, ());
    if i >= 2 {
        let (hi, lo) = factors(i);
        mark(hi, cheb, need);
        mark(lo, cheb, need);
        if cheb && hi != lo {
            mark(hi - lo, cheb, need);
        }
    }
}

/// Evaluation state: the basis elements computed so far.
struct Evaluator<'a, B: SlotBackend> {
    b: &'a B,
    cheb: bool,
    basis: BTreeMap<usize, B::Ct>,
}

impl<B: SlotBackend> Evaluator<'_, B> {
    fn elem(&mut self, i: usize) -> Result<B::Ct> {
        if let Some(c) = self.basis.get(&i) {
            return Ok(c.clone());
        }
        let b = self.b;
        let (hi, lo) = factors(i);
        let x = self.elem(hi)?;
        let y = self.elem(lo)?;
        let l = b.level(&x).min(b.level(&y));
        let p = b.mul(&b.drop_to_level(&x, l)?, &b.drop_to_level(&y, l)?)?;
        let mut p = b.rescale(b.relinearize(p)?)?;
        if self.cheb {
            p = b.add(&p, &p)?;
            if hi == lo {
                p = b.add_const(&p, -1.0)?;
            } else {
                // Bring B_{hi-lo} to p's level and scale with a rescaled unit constant.
                let z = self.elem(hi - lo)?;
                let z = b.drop_to_level(&z, l)?;
                let cs = b.scale(&p) * b.rescale_factor(l) / b.scale(&z);
                let z = b.rescale(b.mul_const(&z, 1.0, cs)?)?;
                p = b.sub(&p, &z)?;
            }
        }
        self.basis.insert(i, p.clone());
        Ok(p)
    }

    /// Evaluates `node` for consumption at `level` and `scale`: the returned ciphertext is one
    /// level above, at scale `scale · q_{level+1}`, not yet rescaled and possibly of degree 2;
    /// [`Evaluator::finish`] relinearizes *then* rescales it (rescaling a degree-2 ciphertext
    /// would multiply its rounding error by the secret's square).
    fn eval(&mut self, node: &Node, level: usize, scale: f64) -> Result<B::Ct> {
        let b = self.b;
        let target = scale * b.rescale_factor(level + 1);
        let mut out = match node {
            Node::Leaf(c) => {
                let mut terms: Vec<(usize, f64)> = c
                    .iter()
                    .enumerate()
                    .skip(1)
                    .filter(|(_, x)| **x != 0.0)
                    .map(|(i, &x)| (i, x))
                    .collect();
                if terms.is_empty() {
                    terms.push((1, 0.0));
                }
                let mut acc = None;
                for (i, ci) in terms {
                    let e = b.drop_to_level(&self.elem(i)?, level + 1)?;
                    let t = b.mul_const(&e, ci, target / b.scale(&e))?;
                    acc = Some(match acc {
                        None => t,
                        Some(a) => b.add(&a, &t)?,
                    });
                }
                acc.ok_or_else(|| Error::Unsupported("internal: empty leaf".into()))?
            }
            Node::Split { k, q, r } => {
                let g = b.drop_to_level(&self.elem(1 << k)?, level + 1)?;
                let qs = target / b.scale(&g);
                let mut prod = match q.as_ref() {
                    Node::Leaf(c) if c.len() == 1 => b.mul_const(&g, c[0], qs)?,
                    other => {
                        let qc = self.eval(other, level + 1, qs)?;
                        b.mul(&self.finish(qc, qs)?, &g)?
                    }
                };
                prod = b.set_scale(&prod, target)?;
                if let Some(r) = r.as_deref() {
                    if let Node::Leaf(c) = r
                        && c.len() == 1
                    {
                        return b.add_const(&prod, c[0]);
                    }
                    let rc = self.eval(r, level, scale)?;
                    b.add_assign(&mut prod, &rc)?;
                }
                return Ok(prod);
            }
        };
        out = b.set_scale(&out, target)?;
        if let Node::Leaf(c) = node
            && c[0] != 0.0
        {
            out = b.add_const(&out, c[0])?;
        }
        Ok(out)
    }

    /// Relinearizes, rescales and pins the scale to `scale` (removing float drift).
    fn finish(&self, ct: B::Ct, scale: f64) -> Result<B::Ct> {
        let b = self.b;
        b.set_scale(&b.rescale(b.relinearize(ct)?)?, scale)
    }
}

/// Evaluates `p` on every slot of `ct`. The result is [`Polynomial::depth`] levels lower, at
/// `ct`'s scale.
pub fn eval<B: SlotBackend>(b: &B, ct: &B::Ct, p: &Polynomial) -> Result<B::Ct> {
    let depth = p.depth();
    let level = b.level(ct);
    if b.degree(ct) > 1 {
        return Err(Error::Degree {
            got: b.degree(ct),
            max: 1,
        });
    }
    if depth > level {
        return Err(Error::NotEnoughLevels {
            needed: depth,
            available: level,
        });
    }
    let scale = b.scale(ct);
    if p.degree() == 0 {
        // 0 encoded at scale 1 is exact: no level is consumed.
        return b.add_const(&b.mul_const(ct, 0.0, 1.0)?, p.coeffs[0]);
    }
    let x = if p.needs_affine() {
        let (alpha, beta) = p.affine();
        let y = b.rescale(b.mul_const(ct, alpha, b.rescale_factor(level))?)?;
        b.add_const(&b.set_scale(&y, scale)?, beta)?
    } else {
        ct.clone()
    };
    let cheb = p.chebyshev_basis();
    let tree_depth = p.tree_depth();
    let tree = build(cheb, &p.coeffs, tree_depth, baby_size(tree_depth));
    let mut ev = Evaluator {
        b,
        cheb,
        basis: BTreeMap::from([(1, x)]),
    };
    let out = ev.eval(&tree, level - depth, scale)?;
    ev.finish(out, scale)
}
