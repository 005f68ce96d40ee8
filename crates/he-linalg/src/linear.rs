//! Plaintext-weight × ciphertext matmul `Y = X·W + bias` on packed activations.
//!
//! With the layout of [`crate::Layout`] a rotation by `k·row_stride` slots shifts the physical
//! columns of a ciphertext cyclically by `k` while keeping every token in place, so each token
//! row is an independent matrix-vector product over the columns: the Halevi–Shoup diagonal
//! method runs on all tokens at once. For input ciphertext `a` and output ciphertext `b`,
//!
//! `Y_b = Σ_a Σ_i diag_{a,b,i} ⊙ rot(X_a, i·row_stride)`,
//! `diag_{a,b,i}[j·row_stride + t] = W_phys[a·chunks + (j+i) mod chunks, b·chunks + j]`.
//!
//! [`LinearMethod::Bsgs`] splits `i = g·k2 + k1`: the `k1` rotations of each input are hoisted
//! and shared by all outputs, the `k2` rotations are applied once per output to sums of
//! pre-rotated diagonals. [`LinearMethod::Diagonal`] is the plain baseline (one non-hoisted
//! rotation per nonzero diagonal index and input ciphertext). Zero diagonals are skipped, so
//! any sizes work, padded or not.

use std::collections::{BTreeMap, BTreeSet};

use rayon::prelude::*;
use serde::Serialize;

use crate::backend::{PlaintextSize, SlotBackend, scales_match};
use crate::error::{Error, Result};
use crate::layout::{ColumnOrder, Layout, PackedMatrix, check_slots};
use crate::matrix::Matrix;
use crate::plan::OpPlan;

/// How the diagonals are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum LinearMethod {
    /// Baby-step/giant-step with hoisted baby rotations (the production method).
    Bsgs,
    /// Plain diagonal method without BSGS or hoisting (the benchmark baseline).
    Diagonal,
}

/// One term of a giant-step group: input ciphertext, baby index, encoded diagonal.
#[derive(Debug)]
struct Term<P> {
    input: usize,
    baby: usize,
    pt: P,
}

/// Weights encoded once for a fixed input layout, level and scale.
#[derive(Debug)]
pub struct EncodedLinear<P> {
    in_layout: Layout,
    out_layout: Layout,
    level: usize,
    scale: f64,
    method: LinearMethod,
    giant: usize,
    /// Per input ciphertext: baby indices `k1` (rotation by `k1·row_stride`).
    baby: Vec<Vec<usize>>,
    /// Per output ciphertext: `(k2, terms)` groups.
    blocks: Vec<Vec<(usize, Vec<Term<P>>)>>,
    bias: Option<Vec<P>>,
}

/// Nonzero diagonal indices per (input ct, output ct).
type DiagSet = Vec<Vec<BTreeSet<usize>>>;

fn key_switches_for(nz: &DiagSet, g: usize) -> (usize, usize) {
    let baby: usize = nz
        .iter()
        .map(|row| {
            let s: BTreeSet<usize> = row.iter().flatten().map(|i| i % g).collect();
            s.iter().filter(|&&k| k != 0).count()
        })
        .sum();
    let n_out = nz.first().map_or(0, Vec::len);
    let giant: usize = (0..n_out)
        .map(|b| {
            let s: BTreeSet<usize> = nz.iter().flat_map(|row| &row[b]).map(|i| i / g).collect();
            s.iter().filter(|&&k| k != 0).count()
        })
        .sum();
    (baby, giant)
}

impl<P> EncodedLinear<P> {
    /// Encodes `weights` (`d_in × d_out`) and an optional bias (`d_out`) for inputs laid out by
    /// `in_layout` at `level` with scale `scale`; outputs use the same rows and `out_order`.
    /// The output is one level lower, at the same scale.
    #[allow(clippy::too_many_arguments)]
    pub fn new<B: SlotBackend<Pt = P>>(
        b: &B,
        weights: &Matrix,
        bias: Option<&[f64]>,
        in_layout: &Layout,
        out_order: ColumnOrder,
        level: usize,
        scale: f64,
        method: LinearMethod,
    ) -> Result<Self> {
        check_slots(b, in_layout)?;
        if weights.rows() != in_layout.cols() {
            return Err(Error::DimensionMismatch {
                what: "weight rows vs input columns",
                expected: in_layout.cols(),
                got: weights.rows(),
            });
        }
        if let Some(bias) = bias
            && bias.len() != weights.cols()
        {
            return Err(Error::DimensionMismatch {
                what: "bias length vs output columns",
                expected: weights.cols(),
                got: bias.len(),
            });
        }
        if level == 0 || level > b.max_level() {
            return Err(Error::NotEnoughLevels {
                needed: 1,
                available: level.min(b.max_level()),
            });
        }
        let out_layout = in_layout.with_cols(weights.cols(), out_order)?;
        let f = in_layout.chunks();
        let stride = in_layout.row_stride();
        let slots = b.slots();
        let (c_in, c_out) = (in_layout.n_cts(), out_layout.n_cts());

        // Physical weights, indexed [p_in][p_out].
        let pw_cols = out_layout.phys_cols();
        let mut pw = vec![0.0; in_layout.phys_cols() * pw_cols];
        let mut nz: DiagSet = vec![vec![BTreeSet::new(); c_out]; c_in];
        let out_phys: Vec<usize> = (0..weights.cols())
            .map(|c| out_layout.phys_col(c))
            .collect();
        for r in 0..weights.rows() {
            let pi = in_layout.phys_col(r);
            for (c, &po) in out_phys.iter().enumerate() {
                let w = weights.get(r, c);
                if w != 0.0 {
                    pw[pi * pw_cols + po] = w;
                    let i = (pi % f + f - po % f) % f;
                    nz[pi / f][po / f].insert(i);
                }
            }
        }
        // Every output needs at least one term to produce a ciphertext.
        for bo in 0..c_out {
            if nz.iter().all(|row| row[bo].is_empty()) {
                nz[0][bo].insert(0);
            }
        }

        let giant = match method {
            LinearMethod::Diagonal => f,
            LinearMethod::Bsgs => {
                let mut best = (usize::MAX, usize::MAX, f);
                let mut g = 1;
                while g <= f {
                    let (bs, gs) = key_switches_for(&nz, g);
                    if (bs + gs, gs) < (best.0, best.1) {
                        best = (bs + gs, gs, g);
                    }
                    g *= 2;
                }
                best.2
            }
        };

        let baby: Vec<Vec<usize>> = nz
            .iter()
            .map(|row| {
                let s: BTreeSet<usize> = row.iter().flatten().map(|i| i % giant).collect();
                s.into_iter().collect()
            })
            .collect();
        let wscale = b.rescale_factor(level);
        let n = in_layout.rows();
        let mut blocks = Vec::with_capacity(c_out);
        for bo in 0..c_out {
            let mut groups: BTreeMap<usize, Vec<Term<P>>> = BTreeMap::new();
            for (a, row) in nz.iter().enumerate() {
                for &i in &row[bo] {
                    let (k2, k1) = (i / giant, i % giant);
                    let shift = (giant * k2 * stride) % slots;
                    let mut v = vec![0.0; slots];
                    for j in 0..f {
                        let w = pw[(a * f + (j + i) % f) * pw_cols + bo * f + j];
                        if w == 0.0 {
                            continue;
                        }
                        for t in 0..n {
                            v[(j * stride + t + shift) % slots] = w;
                        }
                    }
                    let pt = b.encode(&v, level, wscale)?;
                    let baby_idx = baby[a].binary_search(&k1).map_err(|_| {
                        Error::Unsupported("internal: baby step missing".to_string())
                    })?;
                    groups.entry(k2).or_default().push(Term {
                        input: a,
                        baby: baby_idx,
                        pt,
                    });
                }
            }
            blocks.push(groups.into_iter().collect());
        }

        let bias = match bias {
            None => None,
            Some(bias) => {
                let m = Matrix::from_fn(n, weights.cols(), |_, c| bias[c]);
                Some(
                    out_layout
                        .pack(&m)?
                        .iter()
                        .map(|v| b.encode(v, level - 1, scale))
                        .collect::<Result<Vec<_>>>()?,
                )
            }
        };

        Ok(Self {
            in_layout: in_layout.clone(),
            out_layout,
            level,
            scale,
            method,
            giant,
            baby,
            blocks,
            bias,
        })
    }

    /// Input layout.
    pub fn in_layout(&self) -> &Layout {
        &self.in_layout
    }
    /// Output layout.
    pub fn out_layout(&self) -> &Layout {
        &self.out_layout
    }
    /// Level the inputs are expected at (higher inputs are dropped to it).
    pub fn level(&self) -> usize {
        self.level
    }
    /// Method.
    pub fn method(&self) -> LinearMethod {
        self.method
    }
    /// Giant-step size `g` (diagonal index `i = g·k2 + k1`).
    pub fn giant_step(&self) -> usize {
        self.giant
    }
    /// Number of encoded diagonals.
    pub fn n_plaintexts(&self) -> usize {
        self.blocks
            .iter()
            .flat_map(|g| g.iter().map(|(_, t)| t.len()))
            .sum()
    }

    /// Bytes of encoded weights (diagonals and bias).
    pub fn heap_bytes(&self) -> usize
    where
        P: PlaintextSize,
    {
        let diags: usize = self
            .blocks
            .iter()
            .flatten()
            .flat_map(|(_, t)| t.iter().map(|t| t.pt.heap_bytes()))
            .sum();
        diags
            + self
                .bias
                .iter()
                .flatten()
                .map(|p| p.heap_bytes())
                .sum::<usize>()
    }

    /// Rotation steps, key switches and depth of [`EncodedLinear::apply`].
    pub fn plan(&self) -> OpPlan {
        let stride = self.in_layout.row_stride();
        let slots = self.in_layout.slots();
        let mut steps = BTreeSet::new();
        let mut baby_rots = 0u64;
        for row in &self.baby {
            for &k1 in row {
                let s = (k1 * stride) % slots;
                if s != 0 {
                    steps.insert(s);
                    baby_rots += 1;
                }
            }
        }
        let mut giant_rots = 0u64;
        for groups in &self.blocks {
            for (k2, _) in groups {
                let s = (self.giant * k2 * stride) % slots;
                if s != 0 {
                    steps.insert(s);
                    giant_rots += 1;
                }
            }
        }
        OpPlan {
            name: format!(
                "linear {}x{}·{}x{} ({:?})",
                self.in_layout.rows(),
                self.in_layout.cols(),
                self.in_layout.cols(),
                self.out_layout.cols(),
                self.method
            ),
            rotation_steps: steps,
            rotations: baby_rots + giant_rots,
            hoisted_rotations: if self.method == LinearMethod::Bsgs {
                baby_rots
            } else {
                0
            },
            relinearizations: 0,
            depth: 1,
        }
    }

    /// `X·W + bias`, one level down at the input scale.
    pub fn apply<B: SlotBackend<Pt = P>>(
        &self,
        b: &B,
        x: &PackedMatrix<B::Ct>,
    ) -> Result<PackedMatrix<B::Ct>>
    where
        P: Send + Sync,
    {
        if x.layout() != &self.in_layout {
            return Err(Error::LayoutMismatch {
                what: "linear input layout",
            });
        }
        let stride = self.in_layout.row_stride();
        let slots = b.slots();
        // Input ciphertexts and output ciphertexts are independent: both loops run in
        // parallel (results are bit-identical to a serial run: every output's sum is formed in
        // the same order by one task).
        let rotated: Vec<Vec<B::Ct>> = x
            .cts()
            .par_iter()
            .enumerate()
            .map(|(a, ct)| {
                if b.level(ct) < self.level {
                    return Err(Error::NotEnoughLevels {
                        needed: self.level,
                        available: b.level(ct),
                    });
                }
                if !scales_match(b.scale(ct), self.scale) {
                    return Err(Error::ScaleMismatch {
                        left: b.scale(ct),
                        right: self.scale,
                    });
                }
                // No copy when the input already is at the working level.
                let dropped;
                let ct = if b.level(ct) == self.level {
                    ct
                } else {
                    dropped = b.drop_to_level(ct, self.level)?;
                    &dropped
                };
                let steps: Vec<usize> = self.baby[a].iter().map(|k| (k * stride) % slots).collect();
                match self.method {
                    LinearMethod::Bsgs => b.rotate_hoisted(ct, &steps),
                    LinearMethod::Diagonal => steps.iter().map(|&s| b.rotate(ct, s)).collect(),
                }
            })
            .collect::<Result<_>>()?;
        let out = self
            .blocks
            .par_iter()
            .enumerate()
            .map(|(bo, groups)| {
                let mut acc: Option<B::Ct> = None;
                for (k2, terms) in groups {
                    let mut inner: Option<B::Ct> = None;
                    for t in terms {
                        let src = &rotated[t.input][t.baby];
                        match inner.as_mut() {
                            None => inner = Some(b.mul_plain(src, &t.pt)?),
                            Some(s) => b.mul_plain_add(s, src, &t.pt)?,
                        }
                    }
                    let Some(mut inner) = inner else { continue };
                    let s = (self.giant * k2 * stride) % slots;
                    if s != 0 {
                        inner = b.rotate(&inner, s)?;
                    }
                    match acc.as_mut() {
                        None => acc = Some(inner),
                        Some(a) => b.add_assign(a, &inner)?,
                    }
                }
                let acc = acc.ok_or_else(|| Error::Unsupported("internal: empty output".into()))?;
                let mut y = b.rescale(&acc)?;
                if let Some(bias) = &self.bias {
                    y = b.add_plain(&y, &bias[bo])?;
                }
                Ok(y)
            })
            .collect::<Result<Vec<_>>>()?;
        PackedMatrix::new(self.out_layout.clone(), out)
    }
}
