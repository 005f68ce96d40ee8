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
//! pre-rotated diagonals. [`EncodedLinear::new_shared`] and [`EncodedLinear::apply_many`]
//! share the hoisted baby rotations of one input between several maps (the Q, K and V
//! projections). [`LinearMethod::Diagonal`] is the plain baseline (one non-hoisted
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

/// Baby steps `i mod g` per input ciphertext of the diagonal sets `nzs` (union over them).
fn baby_sets(nzs: &[&DiagSet], g: usize) -> Vec<BTreeSet<usize>> {
    let c_in = nzs.first().map_or(0, |nz| nz.len());
    (0..c_in)
        .map(|a| {
            nzs.iter()
                .flat_map(|nz| nz[a].iter().flatten())
                .map(|i| i % g)
                .collect()
        })
        .collect()
}

/// `(baby, giant)` key switches of the maps with diagonal sets `nzs` sharing the hoisted baby
/// rotations of one input at giant step `g`.
fn key_switches_for(nzs: &[&DiagSet], g: usize) -> (usize, usize) {
    let baby: usize = baby_sets(nzs, g)
        .iter()
        .map(|s| s.iter().filter(|&&k| k != 0).count())
        .sum();
    let giant: usize = nzs
        .iter()
        .map(|nz| {
            let n_out = nz.first().map_or(0, Vec::len);
            (0..n_out)
                .map(|b| {
                    let s: BTreeSet<usize> =
                        nz.iter().flat_map(|row| &row[b]).map(|i| i / g).collect();
                    s.iter().filter(|&&k| k != 0).count()
                })
                .sum::<usize>()
        })
        .sum();
    (baby, giant)
}

/// One weight matrix of [`EncodedLinear::new_shared`]: `X·weights + bias` with outputs in
/// `out_order`.
#[derive(Debug, Clone, Copy)]
pub struct LinearSpec<'a> {
    /// Weights, `d_in × d_out`.
    pub weights: &'a Matrix,
    /// Optional bias, `d_out`.
    pub bias: Option<&'a [f64]>,
    /// Column order of the output layout.
    pub out_order: ColumnOrder,
    /// Scale of the output; `None` keeps the input's. A lower one (e.g. for a ciphertext about
    /// to be decrypted under a small modulus) is folded into the weights' encoding scale: no
    /// extra operation, the weights just carry fewer bits.
    pub out_scale: Option<f64>,
}

/// Physical weights and nonzero diagonals of one map, before encoding.
struct Prepared {
    out_layout: Layout,
    /// Physical weights, indexed `[p_in][p_out]`.
    pw: Vec<f64>,
    nz: DiagSet,
}

fn prepare(spec: &LinearSpec<'_>, in_layout: &Layout) -> Result<Prepared> {
    let weights = spec.weights;
    if weights.rows() != in_layout.cols() {
        return Err(Error::DimensionMismatch {
            what: "weight rows vs input columns",
            expected: in_layout.cols(),
            got: weights.rows(),
        });
    }
    if let Some(bias) = spec.bias
        && bias.len() != weights.cols()
    {
        return Err(Error::DimensionMismatch {
            what: "bias length vs output columns",
            expected: weights.cols(),
            got: bias.len(),
        });
    }
    let out_layout = in_layout.with_cols(weights.cols(), spec.out_order)?;
    let f = in_layout.chunks();
    let (c_in, c_out) = (in_layout.n_cts(), out_layout.n_cts());
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
    Ok(Prepared { out_layout, pw, nz })
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
        let spec = LinearSpec {
            weights,
            bias,
            out_order,
            out_scale: None,
        };
        Self::from_spec(b, spec, in_layout, level, scale, method)
    }

    /// [`EncodedLinear::new`] from a [`LinearSpec`] (which may set the output scale).
    pub fn from_spec<B: SlotBackend<Pt = P>>(
        b: &B,
        spec: LinearSpec<'_>,
        in_layout: &Layout,
        level: usize,
        scale: f64,
        method: LinearMethod,
    ) -> Result<Self> {
        let mut one = Self::new_shared(b, &[spec], in_layout, level, scale, method)?;
        one.pop()
            .ok_or_else(|| Error::Unsupported("internal: no map encoded".into()))
    }

    /// Encodes several maps of the same input (e.g. the Q, K and V projections) for
    /// [`EncodedLinear::apply_many`]: one giant step for all of them, chosen to minimise the
    /// key switches when the hoisted baby rotations of the input are shared (union of their
    /// baby steps once, plus every map's giant steps). Each map alone is also valid input to
    /// [`EncodedLinear::apply`].
    pub fn new_shared<B: SlotBackend<Pt = P>>(
        b: &B,
        specs: &[LinearSpec<'_>],
        in_layout: &Layout,
        level: usize,
        scale: f64,
        method: LinearMethod,
    ) -> Result<Vec<Self>> {
        check_slots(b, in_layout)?;
        if specs.is_empty() {
            return Err(Error::Unsupported(
                "new_shared needs at least one map".into(),
            ));
        }
        if level == 0 || level > b.max_level() {
            return Err(Error::NotEnoughLevels {
                needed: 1,
                available: level.min(b.max_level()),
            });
        }
        let prepared = specs
            .iter()
            .map(|s| prepare(s, in_layout))
            .collect::<Result<Vec<_>>>()?;
        let f = in_layout.chunks();
        let nzs: Vec<&DiagSet> = prepared.iter().map(|p| &p.nz).collect();
        let giant = match method {
            LinearMethod::Diagonal => f,
            LinearMethod::Bsgs => {
                let mut best = (usize::MAX, usize::MAX, f);
                let mut g = 1;
                while g <= f {
                    let (bs, gs) = key_switches_for(&nzs, g);
                    if (bs + gs, gs) < (best.0, best.1) {
                        best = (bs + gs, gs, g);
                    }
                    g *= 2;
                }
                best.2
            }
        };
        prepared
            .into_iter()
            .zip(specs)
            .map(|(p, spec)| {
                let out_scale = spec.out_scale.unwrap_or(scale);
                if !(out_scale.is_finite() && out_scale > 0.0) {
                    return Err(Error::Unsupported(format!("output scale {out_scale}")));
                }
                let scales = (scale, out_scale);
                Self::build(b, p, spec.bias, in_layout, level, scales, method, giant)
            })
            .collect()
    }

    /// Encodes the diagonals of a prepared map at giant step `giant`.
    #[allow(clippy::too_many_arguments)]
    fn build<B: SlotBackend<Pt = P>>(
        b: &B,
        p: Prepared,
        bias: Option<&[f64]>,
        in_layout: &Layout,
        level: usize,
        (scale, out_scale): (f64, f64),
        method: LinearMethod,
        giant: usize,
    ) -> Result<Self> {
        let Prepared { out_layout, pw, nz } = p;
        let f = in_layout.chunks();
        let stride = in_layout.row_stride();
        let slots = b.slots();
        let c_out = out_layout.n_cts();
        let pw_cols = out_layout.phys_cols();
        let baby: Vec<Vec<usize>> = baby_sets(&[&nz], giant)
            .into_iter()
            .map(|s| s.into_iter().collect())
            .collect();
        // The rescale divides by q_level: the weights' scale sets the output's.
        let wscale = b.rescale_factor(level) * out_scale / scale;
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
                let m = Matrix::from_fn(n, out_layout.cols(), |_, c| bias[c]);
                Some(
                    out_layout
                        .pack(&m)?
                        .iter()
                        .map(|v| b.encode(v, level - 1, out_scale))
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
        Self::plan_of(&[self])
    }

    /// Rotation steps, key switches and depth of [`EncodedLinear::apply_many`] on `maps`
    /// (which must come from one [`EncodedLinear::new_shared`] call or agree in input layout,
    /// level, scale, method and giant step).
    pub fn plan_many(maps: &[&Self]) -> Result<OpPlan> {
        check_shared(maps)?;
        Ok(Self::plan_of(maps))
    }

    fn plan_of(maps: &[&Self]) -> OpPlan {
        let first = maps[0];
        let stride = first.in_layout.row_stride();
        let slots = first.in_layout.slots();
        let mut steps = BTreeSet::new();
        let mut baby_rots = 0u64;
        for row in shared_baby(maps) {
            for k1 in row {
                let s = (k1 * stride) % slots;
                if s != 0 {
                    steps.insert(s);
                    baby_rots += 1;
                }
            }
        }
        let mut giant_rots = 0u64;
        for m in maps {
            for groups in &m.blocks {
                for (k2, _) in groups {
                    let s = (m.giant * k2 * stride) % slots;
                    if s != 0 {
                        steps.insert(s);
                        giant_rots += 1;
                    }
                }
            }
        }
        let outs: Vec<String> = maps
            .iter()
            .map(|m| m.out_layout.cols().to_string())
            .collect();
        OpPlan {
            name: format!(
                "linear {}x{}·{}x{} ({:?})",
                first.in_layout.rows(),
                first.in_layout.cols(),
                first.in_layout.cols(),
                outs.join("+"),
                first.method
            ),
            rotation_steps: steps,
            rotations: baby_rots + giant_rots,
            hoisted_rotations: if first.method == LinearMethod::Bsgs {
                baby_rots
            } else {
                0
            },
            relinearizations: 0,
            depth: 1,
        }
    }

    /// `X·W + bias`, one level down at the output scale (the input's unless the spec set one).
    pub fn apply<B: SlotBackend<Pt = P>>(
        &self,
        b: &B,
        x: &PackedMatrix<B::Ct>,
    ) -> Result<PackedMatrix<B::Ct>>
    where
        P: Send + Sync,
    {
        let mut out = Self::apply_many(b, &[self], x)?;
        out.pop()
            .ok_or_else(|| Error::Unsupported("internal: no output".into()))
    }

    /// `X·W_m + bias_m` for every map `m` of `maps` on the same input, rotating each input
    /// ciphertext once by the union of their baby steps (hoisted) instead of once per map.
    /// Bit-identical to separate [`EncodedLinear::apply`] calls; the maps must agree as in
    /// [`EncodedLinear::plan_many`].
    pub fn apply_many<B: SlotBackend<Pt = P>>(
        b: &B,
        maps: &[&Self],
        x: &PackedMatrix<B::Ct>,
    ) -> Result<Vec<PackedMatrix<B::Ct>>>
    where
        P: Send + Sync,
    {
        check_shared(maps)?;
        let first = maps[0];
        if x.layout() != &first.in_layout {
            return Err(Error::LayoutMismatch {
                what: "linear input layout",
            });
        }
        let stride = first.in_layout.row_stride();
        let slots = b.slots();
        let baby = shared_baby(maps);
        // Input ciphertexts and output ciphertexts are independent: both loops run in
        // parallel (results are bit-identical to a serial run: every output's sum is formed in
        // the same order by one task).
        let rotated: Vec<Vec<B::Ct>> = x
            .cts()
            .par_iter()
            .zip(&baby)
            .map(|(ct, ks)| {
                if b.level(ct) < first.level {
                    return Err(Error::NotEnoughLevels {
                        needed: first.level,
                        available: b.level(ct),
                    });
                }
                if !scales_match(b.scale(ct), first.scale) {
                    return Err(Error::ScaleMismatch {
                        left: b.scale(ct),
                        right: first.scale,
                    });
                }
                // No copy when the input already is at the working level.
                let dropped;
                let ct = if b.level(ct) == first.level {
                    ct
                } else {
                    dropped = b.drop_to_level(ct, first.level)?;
                    &dropped
                };
                let steps: Vec<usize> = ks.iter().map(|k| (k * stride) % slots).collect();
                match first.method {
                    LinearMethod::Bsgs => b.rotate_hoisted(ct, &steps),
                    LinearMethod::Diagonal => steps.iter().map(|&s| b.rotate(ct, s)).collect(),
                }
            })
            .collect::<Result<_>>()?;
        // Per map and input ciphertext: index of each own baby step in the shared list.
        let index: Vec<Vec<Vec<usize>>> = maps
            .iter()
            .map(|m| {
                m.baby
                    .iter()
                    .zip(&baby)
                    .map(|(own, all)| {
                        own.iter()
                            .map(|k| {
                                all.binary_search(k).map_err(|_| {
                                    Error::Unsupported("internal: shared baby step missing".into())
                                })
                            })
                            .collect::<Result<Vec<_>>>()
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<_>>()?;
        let jobs: Vec<(usize, usize)> = maps
            .iter()
            .enumerate()
            .flat_map(|(mi, m)| (0..m.blocks.len()).map(move |bo| (mi, bo)))
            .collect();
        let mut outs = jobs
            .par_iter()
            .map(|&(mi, bo)| {
                let m = maps[mi];
                let mut acc: Option<B::Ct> = None;
                for (k2, terms) in &m.blocks[bo] {
                    let mut inner: Option<B::Ct> = None;
                    for t in terms {
                        let src = &rotated[t.input][index[mi][t.input][t.baby]];
                        match inner.as_mut() {
                            None => inner = Some(b.mul_plain(src, &t.pt)?),
                            Some(s) => b.mul_plain_add(s, src, &t.pt)?,
                        }
                    }
                    let Some(mut inner) = inner else { continue };
                    let s = (m.giant * k2 * stride) % slots;
                    if s != 0 {
                        inner = b.rotate(&inner, s)?;
                    }
                    match acc.as_mut() {
                        None => acc = Some(inner),
                        Some(a) => b.add_assign(a, &inner)?,
                    }
                }
                let acc = acc.ok_or_else(|| Error::Unsupported("internal: empty output".into()))?;
                let mut y = b.rescale(acc)?;
                if let Some(bias) = &m.bias {
                    y = b.add_plain(&y, &bias[bo])?;
                }
                Ok(y)
            })
            .collect::<Result<Vec<_>>>()?
            .into_iter();
        maps.iter()
            .map(|m| {
                let cts: Vec<B::Ct> = outs.by_ref().take(m.blocks.len()).collect();
                PackedMatrix::new(m.out_layout.clone(), cts)
            })
            .collect()
    }
}

/// Checks that `maps` can share their input's baby rotations.
fn check_shared<P>(maps: &[&EncodedLinear<P>]) -> Result<()> {
    let Some(first) = maps.first() else {
        return Err(Error::Unsupported(
            "apply_many needs at least one map".into(),
        ));
    };
    for m in &maps[1..] {
        if m.in_layout != first.in_layout {
            return Err(Error::LayoutMismatch {
                what: "shared linear maps' input layouts",
            });
        }
        if !scales_match(m.scale, first.scale) {
            return Err(Error::ScaleMismatch {
                left: m.scale,
                right: first.scale,
            });
        }
        if m.level != first.level || m.method != first.method || m.giant != first.giant {
            return Err(Error::Unsupported(format!(
                "shared linear maps need one level, method and giant step: \
                 {}/{:?}/{} vs {}/{:?}/{}",
                first.level, first.method, first.giant, m.level, m.method, m.giant
            )));
        }
    }
    Ok(())
}

/// Union of the maps' baby steps, per input ciphertext, sorted.
fn shared_baby<P>(maps: &[&EncodedLinear<P>]) -> Vec<Vec<usize>> {
    let c_in = maps.first().map_or(0, |m| m.baby.len());
    (0..c_in)
        .map(|a| {
            let s: BTreeSet<usize> = maps
                .iter()
                .flat_map(|m| m.baby[a].iter().copied())
                .collect();
            s.into_iter().collect()
        })
        .collect()
}
