//! Ciphertext × ciphertext products of attention, for all heads at once.
//!
//! Q, K and V use the [`ColumnOrder::HeadInterleaved`] layout: ciphertext `a`, column group `k`
//! (chunks `k·H .. k·H+H`) holds feature `a·g + k` of every head `h` (chunk `k·H + h`), so a sum
//! over a head's features is a sum over ciphertexts (free) plus a cyclic rotate-and-sum over the
//! `g` groups of one ciphertext.
//!
//! Attention scores are kept in *diagonal form*: the scores matrix is `rows × (heads·n')` with
//! logical column `h·n' + r` holding `S_h[t, (t + r) mod n']` (`n'` = padded rows), itself laid
//! out head-interleaved. With `tokrot(K, r)` the token-rotation of K (two slot rotations and two
//! complementary token masks),
//!
//! `S_h[t, t+r] = Σ_{i ∈ head h} Q[t, i] · tokrot(K, r)[t, i]`,
//! `(A·V)_h[t, i] = Σ_r S_h[t, t+r] · tokrot(V, r)[t, i]`.
//!
//! Masks go on the operands, not on each product: for Q·Kᵀ the token masks on the rotated K and
//! the group selection (with the `1/√d` factor) on the products; for A·V the group selection on
//! the rotated attention weights and the token cut either on the rotated V or, with the weights
//! split by rows beforehand ([`RowSplit`]), nowhere ([`AvMasking`]). Products are summed
//! unrelinearized (lazy relinearization); Q·Kᵀ consumes three levels, A·V two. Row sums over
//! keys are a rotate-and-sum over the `g` groups, already broadcast over each head's row.

use std::borrow::Cow;
use std::collections::BTreeSet;

use rayon::prelude::*;

use crate::backend::{PlaintextSize, SlotBackend, scales_match};
use crate::error::{Error, Result};
use crate::layout::{ColumnOrder, Layout, PackedMatrix, check_slots};
use crate::matrix::Matrix;
use crate::plan::OpPlan;

mod values;

pub use values::{AttentionValues, AvMasking, RowSplit};

/// Heads, padded heads `H` and groups per ciphertext `g` of a head-interleaved layout.
fn heads_of(l: &Layout) -> Result<(usize, usize, usize, usize)> {
    match l.order() {
        ColumnOrder::HeadInterleaved { heads, head_dim } => {
            let (hp, g) = l.head_groups().unwrap_or((1, 1));
            Ok((heads, head_dim, hp, g))
        }
        ColumnOrder::Contiguous => Err(Error::LayoutMismatch {
            what: "attention needs a head-interleaved layout",
        }),
    }
}

/// Layout of the diagonal-form scores for Q/K laid out by `qk`.
pub fn scores_layout(qk: &Layout) -> Result<Layout> {
    let (heads, ..) = heads_of(qk)?;
    let n = qk.row_stride();
    qk.with_cols(
        heads * n,
        ColumnOrder::HeadInterleaved { heads, head_dim: n },
    )
}

/// Converts diagonal-form scores (decrypted, `rows × heads·n'`) into one `rows × rows` matrix per
/// head.
pub fn scores_to_heads(scores: &Layout, m: &Matrix) -> Result<Vec<Matrix>> {
    let (heads, np, ..) = heads_of(scores)?;
    let n = scores.rows();
    if m.rows() != n || m.cols() != heads * np {
        return Err(Error::DimensionMismatch {
            what: "scores matrix columns",
            expected: heads * np,
            got: m.cols(),
        });
    }
    Ok((0..heads)
        .map(|h| Matrix::from_fn(n, n, |t, u| m.get(t, h * np + (u + np - t) % np)))
        .collect())
}

/// Converts per-head `rows × rows` matrices into the diagonal-form scores matrix.
pub fn heads_to_scores(scores: &Layout, heads_m: &[Matrix]) -> Result<Matrix> {
    let (heads, np, ..) = heads_of(scores)?;
    let n = scores.rows();
    if heads_m.len() != heads {
        return Err(Error::DimensionMismatch {
            what: "number of head matrices",
            expected: heads,
            got: heads_m.len(),
        });
    }
    let mut out = Matrix::zeros(n, heads * np);
    for (h, m) in heads_m.iter().enumerate() {
        if m.rows() != n || m.cols() != n {
            return Err(Error::DimensionMismatch {
                what: "head matrix size",
                expected: n,
                got: m.rows().max(m.cols()),
            });
        }
        for t in 0..n {
            for u in 0..n {
                out.set(t, h * np + (u + np - t) % np, m.get(t, u));
            }
        }
    }
    Ok(out)
}

/// 0/1 mask (diagonal form) keeping keys `u < valid_keys` of rows `t < valid_keys`: padded
/// tokens neither attend nor are attended. Multiply it in with [`crate::ops::mul_plain`].
pub fn key_mask(scores: &Layout, valid_keys: usize) -> Result<Matrix> {
    let (heads, np, ..) = heads_of(scores)?;
    Ok(Matrix::from_fn(scores.rows(), heads * np, |t, c| {
        let u = (t + c % np) % np;
        if t < valid_keys && u < valid_keys {
            1.0
        } else {
            0.0
        }
    }))
}

/// Slot vector with `value` at chunks `group·H + h` (`h < heads`) and token rows `tokens`.
fn group_mask(
    l: &Layout,
    heads: usize,
    hp: usize,
    group: usize,
    tokens: std::ops::Range<usize>,
    value: f64,
) -> Vec<f64> {
    let np = l.row_stride();
    let mut v = vec![0.0; l.slots()];
    for h in 0..heads {
        let base = (group * hp + h) * np;
        for t in tokens.clone() {
            v[base + t] = value;
        }
    }
    v
}

/// Token ranges of `tokrot(·, r)`: rows using `rot(x, r)` and rows using `rot(x, r - n')`.
fn token_ranges(n: usize, np: usize, r: usize) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
    let cut = np - r;
    (0..n.min(cut), cut.min(n)..n)
}

fn check_input<'a, B: SlotBackend>(
    b: &B,
    x: &'a PackedMatrix<B::Ct>,
    layout: &Layout,
    level: usize,
    scale: f64,
    what: &'static str,
) -> Result<Vec<Cow<'a, B::Ct>>> {
    if x.layout() != layout {
        return Err(Error::LayoutMismatch { what });
    }
    x.cts()
        .iter()
        .map(|c| {
            if b.level(c) < level {
                return Err(Error::NotEnoughLevels {
                    needed: level,
                    available: b.level(c),
                });
            }
            if !scales_match(b.scale(c), scale) {
                return Err(Error::ScaleMismatch {
                    left: b.scale(c),
                    right: scale,
                });
            }
            // No copy when the input already is at `level`.
            if b.level(c) == level {
                Ok(Cow::Borrowed(c))
            } else {
                b.drop_to_level(c, level).map(Cow::Owned)
            }
        })
        .collect()
}

/// Whether row tokens wrap around for token shift `r` (some `t < n` has `t + r >= n'`).
fn wraps(n: usize, np: usize, r: usize) -> bool {
    r > 0 && !token_ranges(n, np, r).1.is_empty()
}

/// Left rotation of a slot vector by `step`.
fn rotated(v: &[f64], step: usize) -> Vec<f64> {
    let mut out = v.to_vec();
    out.rotate_left(step % v.len());
    out
}

/// Baby token rotations of K or V: `rot(x, k)` at index `k` for `k < kmax`, then
/// `rot(x, k - n')` for the `k` whose wrapped part some row needs.
#[derive(Debug, Clone)]
struct Baby {
    steps: Vec<usize>,
    hi_idx: Vec<Option<usize>>,
}

impl Baby {
    fn new(slots: usize, n: usize, np: usize, g: usize) -> Self {
        let kmax = g.min(np);
        let mut steps: Vec<usize> = (0..kmax).collect();
        let mut hi_idx = vec![None; kmax];
        for (k, idx) in hi_idx.iter_mut().enumerate() {
            if (0..np.div_ceil(g)).any(|b| b * g + k < np && wraps(n, np, b * g + k)) {
                *idx = Some(steps.len());
                steps.push(slots - np + k);
            }
        }
        Self { steps, hi_idx }
    }

    fn nonzero(&self) -> impl Iterator<Item = usize> + '_ {
        self.steps.iter().copied().filter(|&s| s != 0)
    }
}

/// Slot vector with `1.0` at token rows `tokens` of every chunk.
fn token_mask(l: &Layout, tokens: std::ops::Range<usize>) -> Vec<f64> {
    let np = l.row_stride();
    let mut v = vec![0.0; l.slots()];
    for chunk in v.chunks_exact_mut(np) {
        chunk[tokens.clone()].fill(1.0);
    }
    v
}

/// Per baby index `k`: the token masks of `rot(x, k)` and, where rows wrap, of `rot(x, k - n')`.
type TokenMasks<P> = Vec<(P, Option<P>)>;

/// Bytes of encoded token masks.
fn token_mask_bytes<P: PlaintextSize>(masks: &[TokenMasks<P>]) -> usize {
    masks
        .iter()
        .flatten()
        .map(|(lo, hi)| lo.heap_bytes() + hi.as_ref().map_or(0, |h| h.heap_bytes()))
        .sum()
}

/// Token masks (see [`token_ranges`]) of the shifts `g·b + k` of output ciphertext `b`, in the
/// frame rotated by `-g·b`, at `level` and `scale`: per baby index `k`, the mask of the rows
/// using `rot(x, k)` and, where rows wrap, of the rows using `rot(x, k - n')`.
fn shift_token_masks<B: SlotBackend>(
    b: &B,
    layout: &Layout,
    (g, bo): (usize, usize),
    level: usize,
    scale: f64,
) -> Result<TokenMasks<B::Pt>> {
    let (n, np, slots) = (layout.rows(), layout.row_stride(), layout.slots());
    let back = slots - (g * bo) % slots;
    let enc = |v: Vec<f64>| b.encode(&rotated(&v, back), level, scale);
    (0..g.min(np.saturating_sub(g * bo)))
        .map(|k| {
            let r = bo * g + k;
            let (lo_t, hi_t) = token_ranges(n, np, r);
            let hi = wraps(n, np, r)
                .then(|| enc(token_mask(layout, hi_t)))
                .transpose()?;
            Ok((enc(token_mask(layout, lo_t))?, hi))
        })
        .collect()
}

/// `tokrot(x_a, g·b + k)` (one level down) for every shift `k` of [`shift_token_masks`] `masks`
/// and every input ciphertext `a`, from the baby rotations `xb[a]` of [`Baby`]; each mask is
/// transformed once for all the inputs.
fn token_rotated<B: SlotBackend>(
    b: &B,
    xb: &[Vec<B::Ct>],
    baby: &Baby,
    masks: &[(B::Pt, Option<B::Pt>)],
) -> Result<Vec<Vec<B::Ct>>>
where
    B::Pt: Clone + Send + Sync,
{
    masks
        .par_iter()
        .enumerate()
        .map(|(kk, (lo, hi))| {
            let lo = b.expanded(lo);
            let hi = hi.as_ref().map(|h| b.expanded(h));
            xb.iter()
                .map(|xa| {
                    let mut x = b.mul_plain(&xa[kk], &lo)?;
                    if let (Some(h), Some(idx)) = (&hi, baby.hi_idx[kk]) {
                        b.mul_plain_add(&mut x, &xa[idx], h)?;
                    }
                    b.rescale(x)
                })
                .collect::<Result<Vec<_>>>()
        })
        .collect()
}

/// Where one group offset `m` of an output ciphertext goes: its rotation, and the baby indices
/// `k` whose products it sums (each through Q's feature group `(k + m) mod g`).
#[derive(Debug)]
struct Placement {
    step: usize,
    terms: Vec<(usize, usize)>,
}

/// `factor · Q·Kᵀ` for all heads, prepared (masks encoded) for one level and pair of input
/// scales. The output is in diagonal form ([`scores_layout`]), three levels lower, at Q's scale
/// (or the one given to [`QkScores::with_out_scale`]).
///
/// Token shifts `r = g·b + k` are split baby-step/giant-step: K is rotated by the `k` (and
/// `k - n'`, hoisted) and Q by `-g·b` (hoisted). Each rotated K is cut to the token rows of its
/// shift (`tokrot(K, r)`, one or two masks, one level); its products with the rotated Q, summed
/// over Q's ciphertexts, give every feature's term of shift `r` in every feature group
/// (`P_k`: one tensor product per shift and input ciphertext, relinearized, one level). The
/// scores of the `g` shifts of output ciphertext `b` are then gathered by feature group: group
/// offset `m` sums `P_k` masked to Q's feature group `(k + m) mod g` (with the `factor`, one
/// level), and is rotated into place once. Masks are `O(g)` per output ciphertext, tensor
/// products `O(g)` too; only the plaintext mask products are `O(g²)`.
#[derive(Debug)]
pub struct QkScores<P> {
    layout: Layout,
    out_layout: Layout,
    level: usize,
    scale_q: f64,
    scale_k: f64,
    baby: Baby,
    /// Rotation of Q for output ciphertext `b`: `-g·b`.
    giant: Vec<usize>,
    /// Per output ciphertext, per feature group: the group's chunks times `factor`, in the
    /// frame rotated by `-g·b` (`None` past the head dimension), two levels below the input.
    group_masks: Vec<Vec<Option<P>>>,
    /// Per output ciphertext, per baby index `k` with shift `g·b + k < n'`: token masks of
    /// `rot(K, k)` and, where rows wrap, of `rot(K, k - n')`.
    token_masks: Vec<TokenMasks<P>>,
    /// Per output ciphertext: the group offsets that receive products.
    placements: Vec<Vec<Placement>>,
}

impl<P> QkScores<P> {
    /// Prepares `factor · Q·Kᵀ` for Q and K laid out by `layout` at `level` with scales
    /// `scale_q` and `scale_k`; the scores come out at `scale_q`.
    pub fn new<B: SlotBackend<Pt = P>>(
        b: &B,
        layout: &Layout,
        level: usize,
        scale_q: f64,
        scale_k: f64,
        factor: f64,
    ) -> Result<Self> {
        Self::with_out_scale(b, layout, level, (scale_q, scale_k), factor, scale_q)
    }

    /// [`QkScores::new`] with the scores at `out_scale` instead (folded into the scale of the
    /// group masks: no extra operation).
    pub fn with_out_scale<B: SlotBackend<Pt = P>>(
        b: &B,
        layout: &Layout,
        level: usize,
        (scale_q, scale_k): (f64, f64),
        factor: f64,
        out_scale: f64,
    ) -> Result<Self> {
        check_slots(b, layout)?;
        if !(out_scale.is_finite() && out_scale > 0.0) {
            return Err(Error::Unsupported(format!("output scale {out_scale}")));
        }
        let (heads, head_dim, hp, g) = heads_of(layout)?;
        if level < 3 || level > b.max_level() {
            return Err(Error::NotEnoughLevels {
                needed: 3,
                available: level.min(b.max_level()),
            });
        }
        let out_layout = scores_layout(layout)?;
        let slots = layout.slots();
        let (n, np) = (layout.rows(), layout.row_stride());
        let groups_in = g.min(head_dim);
        // K ends at q_{level-1}, so the tensor product rescales back to Q's scale; the group
        // masks take it to `out_scale`.
        let token_scale = b.rescale_factor(level) * b.rescale_factor(level - 1) / scale_k;
        let group_scale = b.rescale_factor(level - 2) * out_scale / scale_q;
        let n_out = out_layout.n_cts();
        let giant = (0..n_out)
            .map(|bo| (slots - (g * bo) % slots) % slots)
            .collect();
        let (mut group_masks, mut token_masks, mut placements) = (
            Vec::with_capacity(n_out),
            Vec::with_capacity(n_out),
            Vec::with_capacity(n_out),
        );
        for bo in 0..n_out {
            let back = slots - (g * bo) % slots;
            let enc = |v: Vec<f64>, lvl, scale| b.encode(&rotated(&v, back), lvl, scale);
            group_masks.push(
                (0..g)
                    .map(|src| {
                        (src < groups_in)
                            .then(|| {
                                enc(
                                    group_mask(layout, heads, hp, src, 0..n, factor),
                                    level - 2,
                                    group_scale,
                                )
                            })
                            .transpose()
                    })
                    .collect::<Result<Vec<_>>>()?,
            );
            let shifts = g.min(np.saturating_sub(g * bo));
            token_masks.push(shift_token_masks(b, layout, (g, bo), level, token_scale)?);
            placements.push(
                (0..g)
                    .filter_map(|m| {
                        let terms: Vec<(usize, usize)> = (0..shifts)
                            .map(|k| (k, (k + m) % g))
                            .filter(|&(_, src)| src < groups_in)
                            .collect();
                        (!terms.is_empty()).then(|| Placement {
                            step: (g * bo + m * hp * np) % slots,
                            terms,
                        })
                    })
                    .collect(),
            );
        }
        Ok(Self {
            baby: Baby::new(slots, n, np, g),
            layout: layout.clone(),
            out_layout,
            level,
            scale_q,
            scale_k,
            giant,
            group_masks,
            token_masks,
            placements,
        })
    }

    /// Output (scores) layout.
    pub fn out_layout(&self) -> &Layout {
        &self.out_layout
    }

    /// Bytes of encoded masks.
    pub fn heap_bytes(&self) -> usize
    where
        P: PlaintextSize,
    {
        let groups: usize = self
            .group_masks
            .iter()
            .flatten()
            .flatten()
            .map(|p| p.heap_bytes())
            .sum();
        groups + token_mask_bytes(&self.token_masks)
    }

    /// Rotation steps, key switches and depth of [`QkScores::apply`].
    pub fn plan(&self) -> OpPlan {
        let c = self.layout.n_cts() as u64;
        let mut steps: BTreeSet<usize> = self.baby.nonzero().collect();
        steps.extend(self.giant.iter().copied().filter(|&s| s != 0));
        let hoisted = c
            * (self.baby.nonzero().count() + self.giant.iter().filter(|&&s| s != 0).count()) as u64;
        let mut rots = 0u64;
        for pl in self.placements.iter().flatten() {
            if pl.step != 0 {
                rots += 1;
                steps.insert(pl.step);
            }
        }
        // One relinearized product per shift.
        let relins = self.token_masks.iter().map(Vec::len).sum::<usize>() as u64;
        OpPlan {
            name: format!("QK^T {}x{}", self.layout.rows(), self.layout.cols()),
            rotation_steps: steps,
            rotations: hoisted + rots,
            hoisted_rotations: hoisted,
            relinearizations: relins,
            depth: 3,
        }
    }

    /// Computes the scores of all heads.
    pub fn apply<B: SlotBackend<Pt = P>>(
        &self,
        b: &B,
        q: &PackedMatrix<B::Ct>,
        k: &PackedMatrix<B::Ct>,
    ) -> Result<PackedMatrix<B::Ct>>
    where
        P: Clone + Send + Sync,
    {
        let qs = check_input(b, q, &self.layout, self.level, self.scale_q, "Q layout")?;
        let ks = check_input(b, k, &self.layout, self.level, self.scale_k, "K layout")?;
        let kb = ks
            .par_iter()
            .map(|c| b.rotate_hoisted(c, &self.baby.steps))
            .collect::<Result<Vec<_>>>()?;
        // Q meets the masked K one level down.
        let qg = qs
            .par_iter()
            .map(|c| {
                b.rotate_hoisted(c, &self.giant)?
                    .iter()
                    .map(|x| b.drop_to_level(x, self.level - 1))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        let out = (0..self.placements.len())
            .into_par_iter()
            .map(|bo| {
                // tokrot(K, g·b + k) per shift and input ciphertext.
                let km = token_rotated(b, &kb, &self.baby, &self.token_masks[bo])?;
                // P_k = Σ_a Q_a ⊙ tokrot(K_a, g·b + k): every feature's term of the shift.
                let sums: Vec<Vec<_>> = km
                    .iter()
                    .map(|ka| qg.iter().map(|qa| &qa[bo]).zip(ka).collect())
                    .collect();
                let prods = b
                    .mul_sums(&sums)?
                    .into_par_iter()
                    .map(|x| b.rescale(b.relinearize(x)?))
                    .collect::<Result<Vec<_>>>()?;
                // Gather by feature group: all placements at once (they share the products).
                let masks: Vec<Option<_>> = self.group_masks[bo]
                    .par_iter()
                    .map(|p| p.as_ref().map(|p| b.expanded(p)))
                    .collect();
                let sums = self.placements[bo]
                    .iter()
                    .map(|pl| {
                        pl.terms
                            .iter()
                            .map(|&(kk, src)| {
                                let m = masks[src].as_ref().ok_or_else(|| {
                                    Error::Unsupported("internal: missing group mask".into())
                                })?;
                                Ok((&prods[kk], &**m))
                            })
                            .collect::<Result<Vec<_>>>()
                    })
                    .collect::<Result<Vec<_>>>()?;
                let placed = b
                    .mul_plain_sums(&sums)?
                    .into_par_iter()
                    .zip(&self.placements[bo])
                    .map(|(x, pl)| b.rotate(&b.rescale(x)?, pl.step))
                    .collect::<Result<Vec<_>>>()?;
                let mut placed = placed.into_iter();
                let mut acc = placed
                    .next()
                    .ok_or_else(|| Error::Unsupported("internal: empty scores".into()))?;
                for x in placed {
                    b.add_assign(&mut acc, &x)?;
                }
                Ok(acc)
            })
            .collect::<Result<Vec<_>>>()?;
        PackedMatrix::new(self.out_layout.clone(), out)
    }
}

/// Rotation steps of [`row_sums`] for a scores layout.
fn row_sum_steps(s: &Layout) -> Result<Vec<usize>> {
    heads_of(s)?;
    let (hp, g) = s.head_groups().unwrap_or((1, 1));
    let np = s.row_stride();
    Ok((0..g.trailing_zeros())
        .map(|j| (1 << j) * hp * np)
        .collect())
}

/// Plan of [`row_sums`].
pub fn row_sums_plan(scores: &Layout) -> Result<OpPlan> {
    let steps = row_sum_steps(scores)?;
    Ok(OpPlan {
        name: format!("row sums {}x{}", scores.rows(), scores.cols()),
        rotations: steps.len() as u64,
        rotation_steps: steps.into_iter().collect(),
        hoisted_rotations: 0,
        relinearizations: 0,
        depth: 0,
    })
}

/// Row sums of each head's scores (softmax denominators), broadcast over the row: entry
/// `(t, h·n' + r)` of the result is `Σ_u S_h[t, u]`. Apply [`key_mask`] first so padded keys do
/// not count. No level is consumed.
pub fn row_sums<B: SlotBackend>(b: &B, s: &PackedMatrix<B::Ct>) -> Result<PackedMatrix<B::Ct>> {
    let steps = row_sum_steps(s.layout())?;
    let lvl = s.cts().iter().map(|c| b.level(c)).min().unwrap_or(0);
    let mut acc = b.drop_to_level(&s.cts()[0], lvl)?;
    for c in &s.cts()[1..] {
        b.add_assign(&mut acc, &b.drop_to_level(c, lvl)?)?;
    }
    for st in steps {
        let r = b.rotate(&acc, st)?;
        b.add_assign(&mut acc, &r)?;
    }
    PackedMatrix::new(s.layout().clone(), vec![acc; s.layout().n_cts()])
}
