//! The server's segments: what it computes between two client messages, over any slot backend.
//! The server session runs them on ciphertexts; the schedule's dry run
//! ([`ServerModel::check_schedule`](crate::ServerModel::check_schedule)) runs the same code on
//! the cleartext backend. Levels come from the [`Schedule`]; nothing here computes one.

use he_linalg::attention::row_sums;
use he_linalg::{EncodedLinear, PackedMatrix, SlotBackend, ops, scales_match};

use crate::blinding::{Blinder, Factors, unblind};
use crate::error::{EngineError, Result};
use crate::program::{LayerProgram, LayerTail};
use thex_client::{ItemKind, Schedule};

/// What a layer keeps while the client answers a round.
pub(crate) enum Carry<C> {
    /// Sent `y`; waits for `e`.
    Softmax {
        x: PackedMatrix<C>,
        v: PackedMatrix<C>,
    },
    /// Sent `z₁`; waits for `h₁`.
    Reciprocal1 {
        x: PackedMatrix<C>,
        v: PackedMatrix<C>,
        e: PackedMatrix<C>,
    },
    /// Sent `z₂`; waits for `h₂`.
    Reciprocal2 {
        x: PackedMatrix<C>,
        v: PackedMatrix<C>,
        e: PackedMatrix<C>,
    },
    /// Sent `u` and `S₁`; waits for `ReLU(u)` and the refreshed `S₁`.
    Ffn,
}

/// What the server keeps while a request is out: the layer's values, and each item's kind
/// with its blinding factors (blinded rounds).
pub(crate) struct Paused<C> {
    carry: Carry<C>,
    items: Vec<(ItemKind, Option<Factors>)>,
}

/// Where a segment ends.
#[allow(clippy::large_enum_variant)] // one per segment, moved once
pub(crate) enum Outcome<C> {
    /// A request to the client (every ciphertext at its request level) and what the server
    /// keeps meanwhile.
    Request(Vec<(ItemKind, PackedMatrix<C>)>, Paused<C>),
    /// The next layer's input.
    NextLayer(PackedMatrix<C>),
    /// The encrypted logits, at the schedule's logits level.
    Logits(C),
}

/// A receiver of named intermediate values (`layer{i}.input`, `.reciprocal`, `.probs`,
/// `.context`).
pub(crate) type TapSink<'a, C> = Option<&'a mut dyn FnMut(String, &PackedMatrix<C>)>;

/// The segments of one bucket on backend `b`.
pub(crate) struct Segments<'a, B: SlotBackend> {
    pub b: &'a B,
    pub sched: &'a Schedule,
    pub taps: TapSink<'a, B::Ct>,
    /// [`crate::EngineParams::blind_bits`].
    pub blind_bits: u32,
}

impl<B: SlotBackend> Segments<'_, B>
where
    B::Pt: Clone,
{
    fn tap(&mut self, name: String, value: &PackedMatrix<B::Ct>) {
        if let Some(t) = self.taps.as_mut() {
            t(name, value);
        }
    }

    /// Every ciphertext of `items` dropped to the items level and, in blinded rounds,
    /// blinded with fresh factors to the level the client decrypts at.
    fn request(
        &self,
        items: Vec<(ItemKind, PackedMatrix<B::Ct>)>,
        carry: Carry<B::Ct>,
    ) -> Result<Outcome<B::Ct>> {
        let level = self.sched.levels().items;
        let mut blinder = Blinder::for_request(self.sched, self.blind_bits);
        let mut kept = Vec::with_capacity(items.len());
        let items = items
            .into_iter()
            .map(|(kind, m)| {
                let layout = m.layout().clone();
                let cts = m
                    .into_cts()
                    .iter()
                    .map(|c| self.b.drop_to_level(c, level))
                    .collect::<he_linalg::Result<Vec<_>>>()?;
                let m = PackedMatrix::new(layout, cts)?;
                let (m, factors) = match blinder.as_mut() {
                    Some(bl) => {
                        let (m, f) = bl.blind(self.b, self.sched, kind, m)?;
                        (m, Some(f))
                    }
                    None => (m, None),
                };
                kept.push((kind, factors));
                Ok((kind, m))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Outcome::Request(items, Paused { carry, items: kept }))
    }

    /// The client's reply ciphertexts per item, unblinded if they were blinded, as matrices.
    fn unblind_replies(
        &self,
        items: Vec<(ItemKind, Option<Factors>)>,
        fresh: Vec<Vec<B::Ct>>,
    ) -> Result<Vec<PackedMatrix<B::Ct>>> {
        if fresh.len() != items.len() {
            return Err(EngineError::Internal(format!(
                "{} reply items for {} requested",
                fresh.len(),
                items.len()
            )));
        }
        items
            .into_iter()
            .zip(fresh)
            .map(|((kind, factors), cts)| {
                let cts = match factors {
                    Some(f) => unblind(self.b, self.sched, kind, cts, &f)?,
                    None => cts,
                };
                Ok(PackedMatrix::new(
                    kind.layout(self.sched.layouts()).clone(),
                    cts,
                )?)
            })
            .collect()
    }

    /// `attention_scores`: layer input `x` → Q, K, V and the softmax request `y`.
    pub fn attention_scores(
        &mut self,
        prog: &LayerProgram<B::Pt>,
        layer: usize,
        x: PackedMatrix<B::Ct>,
    ) -> Result<Outcome<B::Ct>> {
        let b = self.b;
        self.tap(format!("layer{layer}.input"), &x);
        // Q, K and V share the hoisted baby rotations of X; their outputs are computed in
        // parallel (bit-identical to serial).
        let [q, k, v]: [PackedMatrix<B::Ct>; 3] =
            EncodedLinear::apply_many(b, &[&prog.q, &prog.k, &prog.v], &x)?
                .try_into()
                .map_err(|_| EngineError::Internal("Q/K/V: not three outputs".into()))?;
        // Q·Kᵀ drops Q and K to its level if they are above it.
        let y = prog.shared.qk.apply(b, &q, &k)?;
        let y = ops::add_const(b, &y, prog.shift)?;
        self.request(vec![(ItemKind::Softmax, y)], Carry::Softmax { x, v })
    }

    /// The segment after a round: the client's `fresh` reply ciphertexts (per item, in the
    /// round's item order) and what the server kept → the segment's name and where it ends.
    pub fn resume(
        &mut self,
        prog: &LayerProgram<B::Pt>,
        layer: usize,
        paused: Paused<B::Ct>,
        fresh: Vec<Vec<B::Ct>>,
    ) -> Result<(&'static str, Outcome<B::Ct>)> {
        let b = self.b;
        let l = self.sched.layouts();
        let Paused { carry, items } = paused;
        let mut fresh = self.unblind_replies(items, fresh)?.into_iter();
        let mut next = || {
            fresh
                .next()
                .ok_or_else(|| EngineError::Internal("fewer replies than the round's items".into()))
        };
        Ok(match carry {
            Carry::Softmax { x, v } => {
                let e = next()?;
                let s = row_sums(b, &e)?;
                let s = PackedMatrix::new(
                    l.reciprocal.clone(),
                    vec![s.cts()[0].clone(); l.reciprocal.n_cts()],
                )?;
                let z1 = ops::add_plain(
                    b,
                    &ops::mul_plain(b, &s, &prog.shared.t1_mul)?,
                    &prog.shared.t1_add,
                )?;
                let items = vec![(ItemKind::ReciprocalHidden1, z1)];
                (
                    "reciprocal1",
                    self.request(items, Carry::Reciprocal1 { x, v, e })?,
                )
            }
            Carry::Reciprocal1 { x, v, e } => {
                let z2 = prog.shared.t2.apply(b, &next()?)?;
                let items = vec![(ItemKind::ReciprocalHidden2, z2)];
                (
                    "reciprocal2",
                    self.request(items, Carry::Reciprocal2 { x, v, e })?,
                )
            }
            Carry::Reciprocal2 { x, v, e } => {
                let t = prog.shared.t3.apply(b, &next()?)?;
                // P = e ⊙ T, whole or by the row parts of e.
                let p = match &prog.shared.split {
                    Some(split) => split
                        .apply(b, &e)?
                        .iter()
                        .map(|part| ops::mul(b, part, &t))
                        .collect::<he_linalg::Result<Vec<_>>>()?,
                    None => vec![ops::mul(b, &e, &t)?],
                };
                let ctx = prog.shared.av.apply(b, &p, &v)?;
                let y = prog.wo.apply(b, &ctx)?;
                let s1 = ops::add(b, &y, &x)?;
                let u = prog.w1.apply(b, &s1)?;
                self.tap(format!("layer{layer}.reciprocal"), &t);
                if self.taps.is_some() {
                    let mut parts = p.into_iter();
                    if let Some(mut whole) = parts.next() {
                        for part in parts {
                            whole = ops::add(b, &whole, &part)?;
                        }
                        self.tap(format!("layer{layer}.probs"), &whole);
                    }
                }
                self.tap(format!("layer{layer}.context"), &ctx);
                let s1 = self.residual_copy(s1)?;
                let items = vec![(ItemKind::Ffn, u), (ItemKind::Residual, s1)];
                ("attention_ffn_in", self.request(items, Carry::Ffn)?)
            }
            Carry::Ffn => {
                let (h, s1) = (next()?, next()?);
                match &prog.tail {
                    LayerTail::Next { w2, g12 } => {
                        let out = ops::add(b, &w2.apply(b, &h)?, &ops::mul_plain(b, &s1, g12)?)?;
                        ("ffn_out", Outcome::NextLayer(out))
                    }
                    LayerTail::Logits {
                        m1,
                        m2,
                        steps,
                        bias,
                    } => {
                        let per_token = ops::add(b, &m1.apply(b, &h)?, &m2.apply(b, &s1)?)?;
                        let mut acc = per_token.cts()[0].clone();
                        for &s in steps {
                            let r = b.rotate(&acc, s)?;
                            b.add_assign(&mut acc, &r)?;
                        }
                        let ct = b.add_plain(&acc, bias)?;
                        let ct = b.drop_to_level(&ct, self.sched.logits().level)?;
                        ("logits", Outcome::Logits(ct))
                    }
                }
            }
        })
    }

    /// The client's copy of `S₁`: at the residual level it has one level to spare above the
    /// items level (W₁ consumes it for `u`), in which it takes the request scale.
    fn residual_copy(&self, s1: PackedMatrix<B::Ct>) -> Result<PackedMatrix<B::Ct>> {
        let (b, sched) = (self.b, self.sched);
        let (from, to) = (ops::scale(b, &s1), sched.request_scale());
        if scales_match(to, from) {
            return Ok(s1);
        }
        let c = sched.multiplier_scale(sched.levels().residual, from, to);
        let cts = s1
            .cts()
            .iter()
            .map(|ct| b.rescale(b.mul_const(ct, 1.0, c)?))
            .collect::<he_linalg::Result<Vec<_>>>()?;
        Ok(PackedMatrix::new(s1.layout().clone(), cts)?)
    }
}
