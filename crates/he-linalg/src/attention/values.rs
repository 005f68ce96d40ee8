//! Attention weights × V ([`AttentionValues`]) and the row split of the weights it may take
//! ([`RowSplit`]).

use std::collections::BTreeSet;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{
    Baby, TokenMasks, check_input, group_mask, heads_of, rotated, scores_layout, shift_token_masks,
    token_mask_bytes, token_rotated, wraps,
};
use crate::backend::{PlaintextSize, SlotBackend};
use crate::error::{Error, Result};
use crate::layout::{Layout, PackedMatrix, PlainMatrix, check_slots};
use crate::matrix::Matrix;
use crate::plan::OpPlan;

/// Row masks that split diagonal-form scores in two for [`AttentionValues`]: for token shift
/// `r`, the rows `t` whose key `t + r` lies in the same padded block (`lo`, `t < n' - r`) and
/// the rows whose key wraps around (`hi`). Prepared for one level and scale; the parts come out
/// one level lower at the same scale.
#[derive(Debug)]
pub struct RowSplit<P> {
    /// Scale of the input (the parts keep it).
    scale: f64,
    /// The `[lo, hi]` row masks, at the input's level and the scale its rescale divides out.
    parts: [PlainMatrix<P>; 2],
}

impl<P> RowSplit<P> {
    /// Masks for scores laid out by `scores` (see [`scores_layout`]) at `level` and `scale`.
    pub fn new<B: SlotBackend<Pt = P>>(
        b: &B,
        scores: &Layout,
        level: usize,
        scale: f64,
    ) -> Result<Self> {
        let (heads, np, ..) = heads_of(scores)?;
        if level < 1 || level > b.max_level() {
            return Err(Error::NotEnoughLevels {
                needed: 1,
                available: level.min(b.max_level()),
            });
        }
        let n = scores.rows();
        let part = |wrapped: bool| {
            let m = Matrix::from_fn(n, heads * np, |t, c| {
                let r = c % np;
                f64::from(u8::from((t + r >= np) == wrapped))
            });
            PlainMatrix::encode(b, &m, scores, level, b.rescale_factor(level))
        };
        Ok(Self {
            scale,
            parts: [part(false)?, part(true)?],
        })
    }

    /// Bytes of encoded masks.
    pub fn heap_bytes(&self) -> usize
    where
        P: PlaintextSize,
    {
        self.parts.iter().map(PlainMatrix::heap_bytes).sum()
    }

    /// Plan of [`RowSplit::apply`].
    pub fn plan(&self) -> OpPlan {
        OpPlan::plaintext("scores row split", 1)
    }

    /// The `[lo, hi]` parts of `s`, one level lower; `lo + hi = s`.
    pub fn apply<B: SlotBackend<Pt = P>>(
        &self,
        b: &B,
        s: &PackedMatrix<B::Ct>,
    ) -> Result<[PackedMatrix<B::Ct>; 2]>
    where
        P: Send + Sync,
    {
        let [lo, hi] = &self.parts;
        let layout = lo.layout();
        let ss = check_input(b, s, layout, lo.level(), self.scale, "scores layout")?;
        let part = |masks: &PlainMatrix<P>| -> Result<PackedMatrix<B::Ct>> {
            let cts = ss
                .par_iter()
                .zip(masks.pts())
                .map(|(c, m)| b.rescale(b.mul_plain(c, m)?))
                .collect::<Result<Vec<_>>>()?;
            PackedMatrix::new(layout.clone(), cts)
        };
        Ok([part(lo)?, part(hi)?])
    }
}

/// How [`AttentionValues`] keeps each token shift's terms to the rows they belong to. Both give
/// the same product; they differ in where the level and the masks go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AvMasking {
    /// The weights come split by rows ([`RowSplit`], a level on the weights): every weights
    /// rotation and broadcast product is done for both parts, and V (one level below the
    /// weights) is used as rotated.
    WeightRows,
    /// The weights come whole; V's rotations are cut by the shift's token masks (a level on V,
    /// which comes at the weights' level): half the weights' rotations, broadcast products and
    /// tensor products of [`AvMasking::WeightRows`], plus one or two masks per shift and V
    /// ciphertext.
    ValueTokens,
}

/// Attention weights × V for all heads, prepared for fixed levels and scales. The output has
/// V's layout and scale, two levels below the weights' (see [`AttentionValues::new`]).
///
/// For token shift `r = g·b + k`, the weights' diagonal is broadcast over the head's features
/// from hoisted rotations of weights ciphertext `b` (masks pre-rotated by `-g·b`; they only
/// select a feature group: `g` per weights ciphertext, each transformed once per use and
/// applied to every shift), one level. V is rotated by the baby shifts `k` and `k - n'`
/// (hoisted); the rows of each product are kept to the shift's by [`AvMasking`]. Each output
/// ciphertext's partial sum for `b` is relinearized and rotated by `g·b` once.
#[derive(Debug)]
pub struct AttentionValues<P> {
    s_layout: Layout,
    v_layout: Layout,
    masking: AvMasking,
    /// Level of the broadcast diagonals and of V's operand of the tensor products.
    l1: usize,
    scale_s: f64,
    scale_v: f64,
    baby: Baby,
    /// Per weights ciphertext `b`: the group offsets `m` of its rotations that are used.
    s_ms: Vec<Vec<usize>>,
    /// Per weights ciphertext `b`, per feature group of V: the group's chunks, in the frame
    /// rotated by `-g·b`.
    masks: Vec<Vec<P>>,
    /// [`AvMasking::ValueTokens`]: per weights ciphertext `b`, the token masks of its shifts.
    token_masks: Vec<TokenMasks<P>>,
}

impl<P> AttentionValues<P> {
    /// Prepares `A·V` for weights laid out by `s_layout` (see [`scores_layout`]) at `level_s`
    /// with scale `scale_s` and V laid out by `v_layout` at `level_v` with scale `scale_v`.
    /// With [`AvMasking::WeightRows`] the weights come as the two parts of a [`RowSplit`] and
    /// are used at `min(level_s, level_v + 1)`, V one level lower; with
    /// [`AvMasking::ValueTokens`] they come whole and both are used at `min(level_s, level_v)`
    /// (inputs above are dropped). The output is two levels below the weights' level.
    pub fn new<B: SlotBackend<Pt = P>>(
        b: &B,
        (s_layout, v_layout): (&Layout, &Layout),
        masking: AvMasking,
        (level_s, scale_s): (usize, f64),
        (level_v, scale_v): (usize, f64),
    ) -> Result<Self> {
        check_slots(b, v_layout)?;
        let (heads, head_dim, hp, g) = heads_of(v_layout)?;
        if &scores_layout(v_layout)? != s_layout {
            return Err(Error::LayoutMismatch {
                what: "scores layout does not belong to V's layout",
            });
        }
        if level_s > b.max_level() || level_v > b.max_level() {
            return Err(Error::LevelTooHigh {
                level: level_s.max(level_v),
                max: b.max_level(),
            });
        }
        // The level the products run at; the diagonals and V's operand end one below it.
        let top = match masking {
            AvMasking::WeightRows => level_s.min(level_v + 1),
            AvMasking::ValueTokens => level_s.min(level_v),
        };
        if top < 2 {
            return Err(Error::NotEnoughLevels {
                needed: 2,
                available: top,
            });
        }
        let l1 = top - 1;
        let slots = v_layout.slots();
        let (n, np) = (v_layout.rows(), v_layout.row_stride());
        let groups_v = g.min(head_dim);
        // The broadcast diagonals end at q_{l1}, V's operand at V's scale: the tensor product
        // rescales back to V's scale.
        let mask_scale = b.rescale_factor(l1) * b.rescale_factor(top) / scale_s;
        let nb = s_layout.n_cts();
        let (mut s_ms, mut masks, mut token_masks) =
            (Vec::with_capacity(nb), Vec::with_capacity(nb), Vec::new());
        for bo in 0..nb {
            let used: BTreeSet<usize> = (0..g.min(np.saturating_sub(g * bo)))
                .flat_map(|k| (0..groups_v).map(move |gv| (k + g - gv) % g))
                .collect();
            s_ms.push(used.into_iter().collect());
            let back = slots - (g * bo) % slots;
            masks.push(
                (0..groups_v)
                    .map(|gv| {
                        let v = group_mask(v_layout, heads, hp, gv, 0..n, 1.0);
                        b.encode(&rotated(&v, back), top, mask_scale)
                    })
                    .collect::<Result<Vec<_>>>()?,
            );
            if masking == AvMasking::ValueTokens {
                let scale = b.rescale_factor(top);
                token_masks.push(shift_token_masks(b, v_layout, (g, bo), top, scale)?);
            }
        }
        Ok(Self {
            baby: Baby::new(slots, n, np, g),
            s_layout: s_layout.clone(),
            v_layout: v_layout.clone(),
            masking,
            l1,
            scale_s,
            scale_v,
            s_ms,
            masks,
            token_masks,
        })
    }

    /// How the rows of the products are kept apart.
    pub fn masking(&self) -> AvMasking {
        self.masking
    }

    /// Bytes of encoded masks.
    pub fn heap_bytes(&self) -> usize
    where
        P: PlaintextSize,
    {
        let groups: usize = self.masks.iter().flatten().map(|p| p.heap_bytes()).sum();
        groups + token_mask_bytes(&self.token_masks)
    }

    /// Weight parts [`AttentionValues::apply`] takes: 2 ([`RowSplit`]) or 1.
    pub fn parts(&self) -> usize {
        match self.masking {
            AvMasking::WeightRows => 2,
            AvMasking::ValueTokens => 1,
        }
    }

    /// Level V's rotations are taken at.
    fn v_level(&self) -> usize {
        match self.masking {
            AvMasking::WeightRows => self.l1,
            AvMasking::ValueTokens => self.l1 + 1,
        }
    }

    /// Rotation steps `m·H·n' - g·b` of weights ciphertext `b`, for its used offsets `m`.
    fn s_steps(&self, bo: usize) -> Vec<usize> {
        let slots = self.v_layout.slots();
        let np = self.v_layout.row_stride();
        let (hp, g) = self.v_layout.head_groups().unwrap_or((1, 1));
        self.s_ms[bo]
            .iter()
            .map(|&m| (m * hp * np + slots - (g * bo) % slots) % slots)
            .collect()
    }

    /// Rotation by `g·b` of output partial sums, per weights ciphertext `b`.
    fn back_steps(&self) -> Vec<usize> {
        let slots = self.v_layout.slots();
        let (_, g) = self.v_layout.head_groups().unwrap_or((1, 1));
        (0..self.s_layout.n_cts())
            .map(|bo| (g * bo) % slots)
            .collect()
    }

    /// Rotation steps, key switches and depth (from the weights' level) of
    /// [`AttentionValues::apply`].
    pub fn plan(&self) -> OpPlan {
        let c = self.v_layout.n_cts() as u64;
        let mut steps: BTreeSet<usize> = self.baby.nonzero().collect();
        let mut hoisted = c * self.baby.nonzero().count() as u64;
        for bo in 0..self.s_ms.len() {
            for st in self.s_steps(bo).into_iter().filter(|&s| s != 0) {
                hoisted += self.parts() as u64;
                steps.insert(st);
            }
        }
        let back: Vec<usize> = self.back_steps().into_iter().filter(|&s| s != 0).collect();
        steps.extend(back.iter().copied());
        OpPlan {
            name: format!("AV {}x{}", self.v_layout.rows(), self.v_layout.cols()),
            rotation_steps: steps,
            rotations: hoisted + c * back.len() as u64,
            hoisted_rotations: hoisted,
            relinearizations: c * self.s_layout.n_cts() as u64,
            depth: 2,
        }
    }

    /// Computes `A·V` for all heads from the attention weights (diagonal form): the `[lo, hi]`
    /// parts of their [`RowSplit`] ([`AvMasking::WeightRows`]) or the weights themselves
    /// ([`AvMasking::ValueTokens`]).
    pub fn apply<B: SlotBackend<Pt = P>>(
        &self,
        b: &B,
        weights: &[PackedMatrix<B::Ct>],
        v: &PackedMatrix<B::Ct>,
    ) -> Result<PackedMatrix<B::Ct>>
    where
        P: Clone + Send + Sync,
    {
        if weights.len() != self.parts() {
            return Err(Error::DimensionMismatch {
                what: "attention weight parts",
                expected: self.parts(),
                got: weights.len(),
            });
        }
        let top = self.l1 + 1;
        // Every weights ciphertext rotated (hoisted) at the level the products run at, per part.
        let rot_s = weights
            .iter()
            .map(|s| {
                check_input(b, s, &self.s_layout, top, self.scale_s, "attention weights")?
                    .par_iter()
                    .enumerate()
                    .map(|(bo, ct)| b.rotate_hoisted(ct, &self.s_steps(bo)))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        let vs = check_input(
            b,
            v,
            &self.v_layout,
            self.v_level(),
            self.scale_v,
            "V layout",
        )?;
        let vb = vs
            .par_iter()
            .map(|c| b.rotate_hoisted(c, &self.baby.steps))
            .collect::<Result<Vec<_>>>()?;
        let (n, np) = (self.v_layout.rows(), self.v_layout.row_stride());
        let (_, g) = self.v_layout.head_groups().unwrap_or((1, 1));
        // Partial outputs of every weights ciphertext (in parallel), then their sum.
        let partials = self
            .back_steps()
            .into_par_iter()
            .enumerate()
            .map(|(bo, back)| -> Result<Vec<Option<B::Ct>>> {
                let shifts = g.min(np.saturating_sub(g * bo));
                if shifts == 0 {
                    return Ok(vec![None; vb.len()]);
                }
                // Each mask transformed once for all the shifts it serves.
                let masks: Vec<_> = self.masks[bo].par_iter().map(|m| b.expanded(m)).collect();
                let broadcast = |part: usize, kk: usize| {
                    masks
                        .iter()
                        .enumerate()
                        .map(|(gv, mask)| {
                            let m = (kk + g - gv) % g;
                            let idx = self.s_ms[bo].binary_search(&m).map_err(|_| {
                                Error::Unsupported("internal: missing weights rotation".into())
                            })?;
                            Ok((&rot_s[part][bo][idx], &**mask))
                        })
                        .collect::<Result<Vec<_>>>()
                };
                // The broadcast diagonals of every shift (all sums at once: they share the
                // masks and the rotated weights), each with the baby rotation of V it
                // multiplies (row parts: the shift for lo, the shift minus n' for a wrapped
                // hi), or the shift's index among the token-cut rotations of V.
                let mut sums = Vec::new();
                let mut v_idx = Vec::new();
                for kk in 0..shifts {
                    match self.masking {
                        AvMasking::WeightRows => {
                            let hi = self.baby.hi_idx[kk].filter(|_| wraps(n, np, bo * g + kk));
                            for (part, vi) in [(0, Some(kk)), (1, hi)] {
                                let Some(vi) = vi else { continue };
                                sums.push(broadcast(part, kk)?);
                                v_idx.push(vi);
                            }
                        }
                        AvMasking::ValueTokens => {
                            sums.push(broadcast(0, kk)?);
                            v_idx.push(kk);
                        }
                    }
                }
                let diags = b
                    .mul_plain_sums(&sums)?
                    .into_par_iter()
                    .map(|d| b.rescale(d))
                    .collect::<Result<Vec<_>>>()?;
                // tokrot(V_a, g·b + k) per shift and V ciphertext, one level down.
                let vt = match self.masking {
                    AvMasking::ValueTokens => {
                        token_rotated(b, &vb, &self.baby, &self.token_masks[bo])?
                    }
                    AvMasking::WeightRows => Vec::new(),
                };
                let sums: Vec<Vec<_>> = (0..vb.len())
                    .map(|a| {
                        diags
                            .iter()
                            .zip(&v_idx)
                            .map(|(d, &i)| match self.masking {
                                AvMasking::WeightRows => (d, &vb[a][i]),
                                AvMasking::ValueTokens => (d, &vt[i][a]),
                            })
                            .collect()
                    })
                    .collect();
                b.mul_sums(&sums)?
                    .into_par_iter()
                    .map(|p| Ok(Some(b.rotate(&b.rescale(b.relinearize(p)?)?, back)?)))
                    .collect()
            })
            .collect::<Result<Vec<_>>>()?;
        let mut acc: Vec<Option<B::Ct>> = vec![None; vs.len()];
        for part in partials {
            for (slot, p) in acc.iter_mut().zip(part) {
                let Some(p) = p else { continue };
                match slot.as_mut() {
                    None => *slot = Some(p),
                    Some(x) => b.add_assign(x, &p)?,
                }
            }
        }
        let out = acc
            .into_iter()
            .map(|c| c.ok_or_else(|| Error::Unsupported("internal: empty output".into())))
            .collect::<Result<Vec<_>>>()?;
        PackedMatrix::new(self.v_layout.clone(), out)
    }
}
