//! The protocol's schedule: for one length bucket, the level and scale of every value between
//! the client's input and its logits, the client rounds and their items, and the layouts.
//!
//! The compiler encodes every operation at the levels named here, the server session checks the
//! replies against them, and the client checks every request and encrypts every reply by them:
//! nothing else computes a level. With `L` the top level, `D` = [`Levels::decrypt`] =
//! `L - PIPELINE_DEPTH`, `Δ` the encoding scale and `Δ_r` the request scale, one layer runs:
//!
//! | segment | from (level) | server computes | to (level, scale) |
//! |---|---|---|---|
//! | `attention_scores` | `X` ([`Levels::input`], `Δ`) | `Q, K, V = X·W + b` (to [`Levels::qkv`]), `y = (scale/√d)·Q·Kᵀ + shift` (from [`Levels::qk`]) | softmax request `y` (`D`, `Δ_r`) |
//! | `reciprocal1` | `e` (`L`, `Δ`) | `s = Σ_keys e`, `z₁ = s·w₁ + b₁` | `z₁` (`D`, `Δ_r`) |
//! | `reciprocal2` | `h₁` (`D + 1`, `Δ`) | `z₂ = h₁·W₂ + b₂` | `z₂` (`D`, `Δ_r`) |
//! | `attention_ffn_in` | `h₂` (`L`, `Δ`) | `T = h₂·w₃ + b₃`, `P = e ⊙ T` ([`Levels::probs`]), `C = P·V` (V at [`Levels::values`], C at [`Levels::context`]), `S₁ = C·Wo + bo + X` ([`Levels::residual`]), `u = S₁·W₁ + b₁` | `u`, `S₁` (`D`, `Δ_r`) |
//! | `ffn_out` | `ReLU(u)`, `S₁` ([`Levels::ffn_reply`], `Δ`) | `X' = ReLU(u)·W₂ + γ₁γ₂ ⊙ S₁ + c` | next `X` |
//! | `logits` (last layer) | `ReLU(u)`, `S₁` ([`Levels::last_reply`], `Δ`) | `Σ_t [ReLU(u)·W₂Wc + S₁·γWc] + bias` | logits (`D`, `Δ_r`) |
//!
//! The input level depends on how attention · V is masked ([`AvMasking`]): `L - 2` when the
//! weights are split by rows, `L - 1` when V is token-masked (V then meets `P` at its level).
//!
//! With [`Rounds::Blinded`] the server multiplies every request item by its own random sign and
//! magnitude per slot before the client decrypts it, and divides them out of the reply: one
//! level each way ([`Levels::blinding`]). The table above then reads with `L` the level after
//! unblinding and `D` the level request items leave the segments at ([`Levels::items`]); the
//! chain has two more primes, the client decrypts one level below `D` and its fresh replies
//! sit one level above the ones named above.

use he_linalg::attention::{AvMasking, scores_layout};
use he_linalg::{ColumnOrder, Layout};
use serde::{Deserialize, Serialize};

use crate::embedding::ModelDims;
use crate::error::{Error, Result};
use crate::wire::MessageLimits;

/// How the server protects what the client decrypts in the rounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rounds {
    /// THE-X's rounds: the client decrypts the activations themselves.
    Thex,
    /// Every value the client decrypts carries a random sign and magnitude the server drew
    /// for that request and slot; for ReLU items the client returns `f(v')` and `f(-v')` and
    /// the server selects and unblinds them, so the client never sees an activation's sign.
    #[default]
    Blinded,
}

impl Rounds {
    /// Levels blinding costs on each side of a round (one to blind, one to unblind).
    pub fn blinding_levels(self) -> usize {
        match self {
            Rounds::Thex => 0,
            Rounds::Blinded => 1,
        }
    }

    /// Levels of the chain above the decrypt level: [`PIPELINE_DEPTH`] plus the blinding's.
    pub fn depth(self) -> usize {
        PIPELINE_DEPTH + 2 * self.blinding_levels()
    }

    /// The word the CLI and the JSON reports use (`thex`, `blinded`).
    pub fn name(self) -> &'static str {
        match self {
            Rounds::Thex => "thex",
            Rounds::Blinded => "blinded",
        }
    }
}

impl std::str::FromStr for Rounds {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "thex" => Ok(Rounds::Thex),
            "blinded" => Ok(Rounds::Blinded),
            other => Err(Error::Config(format!(
                "rounds {other:?}: expected \"blinded\" or \"thex\""
            ))),
        }
    }
}

/// Levels the program consumes between two client rounds in the worst segment
/// (`attention_ffn_in`: `T`'s output layer, `e ⊙ T`, attention · V (2), the output projection
/// and the FFN input projection). The parameters give exactly this many plus the engine's
/// extra levels.
pub const PIPELINE_DEPTH: usize = 6;

/// The packed layouts of one length bucket (shared by client and server).
#[derive(Debug, Clone, PartialEq)]
pub struct BucketLayouts {
    /// Padded sequence length (a power of two).
    pub bucket: usize,
    /// Hidden states `bucket × hidden`, contiguous columns.
    pub hidden: Layout,
    /// Q, K, V and the attention context, head-interleaved.
    pub heads: Layout,
    /// Attention scores in diagonal form.
    pub scores: Layout,
    /// Hidden units of the reciprocal network per (token, head), head-interleaved.
    pub reciprocal: Layout,
    /// FFN activations `bucket × ffn`.
    pub ffn: Layout,
    /// Per-token logits before the token sum `bucket × labels`.
    pub logits: Layout,
}

impl BucketLayouts {
    /// Layouts for `bucket` rows in ciphertexts of `slots` slots; the shapes must pass
    /// [`ModelDims::check`], the bucket and the heads fit the slots, every layout at most
    /// [`MessageLimits::max_ciphertexts`] (default) ciphertexts and the labels one.
    pub fn new(dims: &ModelDims, slots: usize, bucket: usize) -> Result<Self> {
        dims.check()?;
        if bucket == 0 || bucket > slots {
            return Err(Error::Config(format!(
                "length bucket {bucket} does not fit {slots} slots"
            )));
        }
        if dims.heads > slots {
            return Err(Error::Config(format!(
                "dims.heads {} exceed {slots} slots",
                dims.heads
            )));
        }
        let hidden = Layout::new(slots, bucket, dims.hidden, ColumnOrder::Contiguous)?;
        let heads = hidden.with_cols(
            dims.hidden,
            ColumnOrder::HeadInterleaved {
                heads: dims.heads,
                head_dim: dims.head_dim,
            },
        )?;
        let scores = scores_layout(&heads)?;
        let reciprocal = hidden.with_cols(
            dims.heads * dims.reciprocal_hidden,
            ColumnOrder::HeadInterleaved {
                heads: dims.heads,
                head_dim: dims.reciprocal_hidden,
            },
        )?;
        let ffn = hidden.with_cols(dims.ffn, ColumnOrder::Contiguous)?;
        let logits = hidden.with_cols(dims.labels.len(), ColumnOrder::Contiguous)?;
        let max = MessageLimits::default().max_ciphertexts;
        for (field, layout) in [
            ("dims.hidden", &hidden),
            ("dims.heads", &scores),
            ("dims.reciprocal_hidden", &reciprocal),
            ("dims.ffn", &ffn),
        ] {
            if layout.n_cts() > max {
                return Err(Error::Config(format!(
                    "{field}: {} ciphertexts at bucket {bucket}, one message carries at most {max}",
                    layout.n_cts()
                )));
            }
        }
        if logits.n_cts() != 1 {
            return Err(Error::Config(format!(
                "{} labels do not fit one ciphertext at bucket {bucket}",
                dims.labels.len()
            )));
        }
        Ok(Self {
            bucket,
            hidden,
            heads,
            scores,
            reciprocal,
            ffn,
            logits,
        })
    }

    /// Slots a bucket needs: every head-interleaved layout must fit its padded heads, and the
    /// labels must fit one ciphertext (saturating at `usize::MAX`).
    pub fn slots_needed(dims: &ModelDims, bucket: usize) -> usize {
        let heads = dims.heads.checked_next_power_of_two().unwrap_or(usize::MAX);
        bucket.saturating_mul(heads.max(dims.labels.len()))
    }
}

/// What the client is asked to do with the ciphertexts of one request item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ItemKind {
    /// Softmax surrogate: `ReLU(y^power)`, padded keys and rows zeroed (scores layout).
    Softmax,
    /// First hidden ReLU of the reciprocal network (reciprocal layout).
    ReciprocalHidden1,
    /// Second hidden ReLU of the reciprocal network (reciprocal layout).
    ReciprocalHidden2,
    /// FFN ReLU, times the row weight (FFN layout).
    Ffn,
    /// Residual stream refresh: identity times the row weight (hidden layout).
    Residual,
}

impl ItemKind {
    /// Wire tag.
    pub fn tag(self) -> u8 {
        match self {
            ItemKind::Softmax => 1,
            ItemKind::ReciprocalHidden1 => 2,
            ItemKind::ReciprocalHidden2 => 3,
            ItemKind::Ffn => 4,
            ItemKind::Residual => 5,
        }
    }
    /// Kind of a wire tag.
    pub fn from_tag(tag: u8) -> Option<Self> {
        Some(match tag {
            1 => ItemKind::Softmax,
            2 => ItemKind::ReciprocalHidden1,
            3 => ItemKind::ReciprocalHidden2,
            4 => ItemKind::Ffn,
            5 => ItemKind::Residual,
            _ => return None,
        })
    }
    /// Whether the client's function zeroes negative values (every item but the residual
    /// refresh): under [`Rounds::Blinded`] the reply then has two parts, `f(v')` and `f(-v')`.
    pub fn is_relu(self) -> bool {
        !matches!(self, ItemKind::Residual)
    }
    /// The layout of this item's ciphertexts.
    pub fn layout(self, l: &BucketLayouts) -> &Layout {
        match self {
            ItemKind::Softmax => &l.scores,
            ItemKind::ReciprocalHidden1 | ItemKind::ReciprocalHidden2 => &l.reciprocal,
            ItemKind::Ffn => &l.ffn,
            ItemKind::Residual => &l.hidden,
        }
    }
}

/// The client rounds of one encoder layer, in order; each inner list is one round's items.
const LAYER_ROUNDS: [&[ItemKind]; 4] = [
    &[ItemKind::Softmax],
    &[ItemKind::ReciprocalHidden1],
    &[ItemKind::ReciprocalHidden2],
    &[ItemKind::Ffn, ItemKind::Residual],
];

/// A ciphertext's place in the modulus chain: its level and its scale.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct At {
    /// Level (number of rescaling primes left).
    pub level: usize,
    /// Scale.
    pub scale: f64,
}

/// The named levels of one bucket's program (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Levels {
    /// Fresh replies that feed the deep segments (`e`, `h₂`) after unblinding: `L`.
    pub top: usize,
    /// Every layer's input `X` (the client's input too).
    pub input: usize,
    /// Q, K and V where the projections leave them.
    pub qkv: usize,
    /// Q and K where Q·Kᵀ takes them (three levels above [`Levels::items`]).
    pub qk: usize,
    /// `P = e ⊙ T(s)`, where attention · V takes it.
    pub probs: usize,
    /// V where attention · V takes it.
    pub values: usize,
    /// The attention context `C` (the output projection's input).
    pub context: usize,
    /// The residual stream `S₁` (the FFN input projection's input).
    pub residual: usize,
    /// Where the segments leave every request item, and the logits.
    pub items: usize,
    /// Every ciphertext the client decrypts ([`Levels::items`] less the blinding).
    pub decrypt: usize,
    /// The reciprocal network's first hidden ReLU reply after unblinding (one map before a
    /// decryption).
    pub reciprocal_reply: usize,
    /// FFN and residual replies of every layer but the last after unblinding (the output
    /// projection to the next layer's input, one level above it).
    pub ffn_reply: usize,
    /// FFN and residual replies of the last layer after unblinding (one map before the
    /// logits).
    pub last_reply: usize,
    /// Levels the blinding takes on each side of a round ([`Rounds::blinding_levels`]): the
    /// client's fresh replies sit this much above the reply levels named here.
    pub blinding: usize,
}

impl Levels {
    /// The levels for a chain with top level `top`, when attention · V uses `masking` and the
    /// rounds are `rounds`.
    fn new(top: usize, masking: AvMasking, rounds: Rounds) -> Result<Self> {
        let blinding = rounds.blinding_levels();
        let not_enough = Error::NotEnoughLevels {
            needed: rounds.depth(),
            available: top,
        };
        if top < rounds.depth() {
            return Err(not_enough);
        }
        let fresh_top = top - blinding;
        let input = fresh_top
            .checked_sub(match masking {
                AvMasking::WeightRows => 2,
                AvMasking::ValueTokens => 1,
            })
            .filter(|&lx| lx >= 3)
            .ok_or(not_enough)?;
        let items = fresh_top - PIPELINE_DEPTH;
        // A·V takes P two levels below the top (e fresh, T one below) and V one below the
        // input; it leaves C two levels below P, or one below V if V is lower.
        let (probs, values) = (fresh_top - 2, input - 1);
        let context = (probs - 1).min(values) - 1;
        Ok(Self {
            top: fresh_top,
            input,
            qkv: input - 1,
            qk: items + 3,
            probs,
            values,
            context,
            residual: context - 1,
            items,
            decrypt: items - blinding,
            reciprocal_reply: items + 1,
            ffn_reply: input + 1,
            last_reply: items + 1,
            blinding,
        })
    }
}

/// Where a value of a segment comes from or goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Port {
    /// The layer input `X` (the client's encrypted input for layer 0).
    LayerInput,
    /// A request item sent to the client.
    Request(ItemKind),
    /// A reply item from the client.
    Reply(ItemKind),
    /// The encrypted logits.
    Logits,
}

/// One server segment between two client messages.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Segment {
    /// Name (as in the timing report: `layer{i}.{name}`).
    pub name: &'static str,
    /// Encoder layer.
    pub layer: usize,
    /// What it reads, with level and scale.
    pub inputs: Vec<(Port, At)>,
    /// What it produces.
    pub outputs: Vec<(Port, At)>,
}

/// One item of a client round.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RoundItem {
    /// What the client does with it.
    pub kind: ItemKind,
    /// Level and scale of the request's ciphertexts.
    pub request: At,
    /// Level and scale of the reply's fresh ciphertexts.
    pub reply: At,
    /// Ciphertexts of the request item.
    pub ciphertexts: usize,
    /// Ciphertexts of the reply item: as many, or twice as many for a ReLU item of blinded
    /// rounds (`f(v')` first, then `f(-v')`).
    pub reply_ciphertexts: usize,
}

/// One client round.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Round {
    /// Round number, from 1.
    pub number: u32,
    /// Encoder layer.
    pub layer: usize,
    /// Items, in order.
    pub items: Vec<RoundItem>,
}

/// The schedule of one length bucket: layouts, levels, scales, segments and rounds.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    layers: usize,
    masking: AvMasking,
    rounds: Rounds,
    softmax_power: u32,
    layouts: BucketLayouts,
    levels: Levels,
    /// Rescaling factor of each level (`q_0` first).
    moduli: Vec<f64>,
    delta: f64,
    request_scale: f64,
}

impl Schedule {
    /// The schedule of `bucket` with attention · V masked by `masking` and `rounds`, for a
    /// chain of rescaling factors `moduli` (`q_0` first), encoding scale `delta` and request
    /// scale `request_scale`, in ciphertexts of `slots` slots (the shapes checked by
    /// [`BucketLayouts::new`]).
    pub fn new(
        dims: &ModelDims,
        (bucket, masking, rounds): (usize, AvMasking, Rounds),
        (slots, moduli): (usize, &[f64]),
        (delta, request_scale): (f64, f64),
    ) -> Result<Self> {
        let top = moduli.len().checked_sub(1).ok_or(Error::NotEnoughLevels {
            needed: rounds.depth(),
            available: 0,
        })?;
        Ok(Self {
            layers: dims.layers,
            masking,
            rounds,
            softmax_power: dims.softmax_power,
            layouts: BucketLayouts::new(dims, slots, bucket)?,
            levels: Levels::new(top, masking, rounds)?,
            moduli: moduli.to_vec(),
            delta,
            request_scale,
        })
    }

    /// The schedule of `bucket` under CKKS parameters `params`.
    pub fn for_params(
        dims: &ModelDims,
        params: &ckks::Parameters,
        (bucket, masking, rounds): (usize, AvMasking, Rounds),
        request_scale: f64,
    ) -> Result<Self> {
        let moduli: Vec<f64> = params.q_moduli().iter().map(|&q| q as f64).collect();
        Self::new(
            dims,
            (bucket, masking, rounds),
            (params.max_slots(), &moduli),
            (params.default_scale(), request_scale),
        )
    }

    /// Padded length.
    pub fn bucket(&self) -> usize {
        self.layouts.bucket
    }
    /// Encoder layers.
    pub fn layers(&self) -> usize {
        self.layers
    }
    /// How attention · V is masked.
    pub fn attention_values(&self) -> AvMasking {
        self.masking
    }
    /// Whether the rounds are blinded.
    pub fn round_mode(&self) -> Rounds {
        self.rounds
    }
    /// The power the client's function raises an item's values to (the softmax surrogate's
    /// for [`ItemKind::Softmax`], 1 otherwise): a positive factor `r` of the request comes
    /// back as `r^power`.
    pub fn reply_power(&self, kind: ItemKind) -> u32 {
        match kind {
            ItemKind::Softmax => self.softmax_power,
            _ => 1,
        }
    }
    /// The layouts.
    pub fn layouts(&self) -> &BucketLayouts {
        &self.layouts
    }
    /// The named levels.
    pub fn levels(&self) -> &Levels {
        &self.levels
    }
    /// The named levels, mutable: for tests that hand the server's checks a wrong schedule.
    #[doc(hidden)]
    pub fn levels_mut(&mut self) -> &mut Levels {
        &mut self.levels
    }
    /// The encoding scale `Δ`.
    pub fn delta(&self) -> f64 {
        self.delta
    }
    /// The scale of every ciphertext the client decrypts, `Δ_r`.
    pub fn request_scale(&self) -> f64 {
        self.request_scale
    }
    /// The rescaling factor of `level`.
    pub fn modulus(&self, level: usize) -> f64 {
        self.moduli[level]
    }

    /// The client's encrypted input (every layer's input).
    pub fn input(&self) -> At {
        self.fresh(self.levels.input)
    }
    /// The encrypted logits (never blinded).
    pub fn logits(&self) -> At {
        self.request(self.levels.items)
    }
    fn fresh(&self, level: usize) -> At {
        At {
            level,
            scale: self.delta,
        }
    }
    fn request(&self, level: usize) -> At {
        At {
            level,
            scale: self.request_scale,
        }
    }

    /// The scale of `P = e ⊙ T(s)`: `Δ²` rescaled once at the top level's neighbour.
    pub fn probs_scale(&self) -> f64 {
        self.delta * self.delta / self.moduli[self.levels.top - 1]
    }
    /// The scale of the plaintext that multiplies a value at (`level`, `from`) so that after
    /// one rescale it has scale `to`.
    pub fn multiplier_scale(&self, level: usize, from: f64, to: f64) -> f64 {
        self.moduli[level] * to / from
    }

    /// Client rounds of one inference.
    pub fn n_rounds(&self) -> usize {
        self.layers * LAYER_ROUNDS.len()
    }

    /// Round `number` (from 1), or `None` past the last.
    pub fn round(&self, number: u32) -> Option<Round> {
        let r = (number as usize).checked_sub(1)?;
        let layer = r / LAYER_ROUNDS.len();
        if layer >= self.layers {
            return None;
        }
        let last = layer + 1 == self.layers;
        let items = LAYER_ROUNDS[r % LAYER_ROUNDS.len()]
            .iter()
            .map(|&kind| {
                let n = kind.layout(&self.layouts).n_cts();
                let split = self.rounds == Rounds::Blinded && kind.is_relu();
                RoundItem {
                    kind,
                    request: self.request(self.levels.decrypt),
                    reply: self.fresh(self.reply_level(kind, last)),
                    ciphertexts: n,
                    reply_ciphertexts: if split { 2 * n } else { n },
                }
            })
            .collect();
        Some(Round {
            number,
            layer,
            items,
        })
    }

    /// Every round of one inference, in order.
    pub fn rounds(&self) -> Vec<Round> {
        (1..=self.n_rounds() as u32)
            .filter_map(|n| self.round(n))
            .collect()
    }

    /// The level of a reply item: the lowest from which the server's next segment, after
    /// unblinding, still ends at the items level.
    fn reply_level(&self, kind: ItemKind, last_layer: bool) -> usize {
        let l = &self.levels;
        l.blinding
            + match kind {
                ItemKind::ReciprocalHidden1 => l.reciprocal_reply,
                ItemKind::Ffn | ItemKind::Residual if last_layer => l.last_reply,
                ItemKind::Ffn | ItemKind::Residual => l.ffn_reply,
                ItemKind::Softmax | ItemKind::ReciprocalHidden2 => l.top,
            }
    }

    /// Every server segment of one inference, in order.
    pub fn segments(&self) -> Vec<Segment> {
        let mut out = Vec::new();
        let rounds = self.rounds();
        let dec = self.logits();
        for layer in 0..self.layers {
            let r = &rounds[layer * LAYER_ROUNDS.len()..(layer + 1) * LAYER_ROUNDS.len()];
            // A round's items as the ports of its requests or of its replies.
            let ports = |round: &Round, reply: bool| -> Vec<(Port, At)> {
                let port = |it: &RoundItem| {
                    if reply {
                        (Port::Reply(it.kind), it.reply)
                    } else {
                        (Port::Request(it.kind), it.request)
                    }
                };
                round.items.iter().map(port).collect()
            };
            let replies = |round: &Round| ports(round, true);
            let requests = |round: &Round| ports(round, false);
            let seg = |name, inputs, outputs| Segment {
                name,
                layer,
                inputs,
                outputs,
            };
            out.push(seg(
                "attention_scores",
                vec![(Port::LayerInput, self.input())],
                requests(&r[0]),
            ));
            out.push(seg("reciprocal1", replies(&r[0]), requests(&r[1])));
            out.push(seg("reciprocal2", replies(&r[1]), requests(&r[2])));
            out.push(seg("attention_ffn_in", replies(&r[2]), requests(&r[3])));
            let (name, end) = if layer + 1 == self.layers {
                ("logits", (Port::Logits, dec))
            } else {
                ("ffn_out", (Port::LayerInput, self.input()))
            };
            out.push(seg(name, replies(&r[3]), vec![end]));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shapes of thex-model's synthetic `SMALL` model.
    fn dims(layers: usize) -> ModelDims {
        ModelDims {
            hidden: 32,
            heads: 2,
            head_dim: 16,
            ffn: 128,
            layers,
            reciprocal_hidden: 16,
            softmax_scale: 0.5,
            softmax_shift: 0.0,
            softmax_power: 3,
            labels: vec!["negative".into(), "positive".into()],
        }
    }

    #[test]
    fn levels_follow_the_masking_and_leave_the_pipeline_depth() {
        let moduli = vec![2f64.powi(50); PIPELINE_DEPTH + 1];
        let s = |m| {
            Schedule::new(
                &dims(2),
                (16, m, Rounds::Thex),
                (1024, &moduli),
                (2f64.powi(36), 2f64.powi(30)),
            )
        };
        let rows = s(AvMasking::WeightRows).unwrap();
        let tokens = s(AvMasking::ValueTokens).unwrap();
        let (lr, lt) = (rows.levels(), tokens.levels());
        assert_eq!((lr.top, lr.input, lr.decrypt), (6, 4, 0));
        assert_eq!((lt.top, lt.input, lt.decrypt), (6, 5, 0));
        // C and S₁ sit at the same levels with either masking; the FFN reply one above X.
        for l in [lr, lt] {
            assert_eq!((l.qk, l.probs, l.context, l.residual), (3, 4, 2, 1));
            assert_eq!(l.ffn_reply, l.input + 1);
        }
        assert_eq!((lr.values, lt.values), (3, 4));
        // Too short a chain is refused.
        let short = vec![2f64.powi(50); PIPELINE_DEPTH];
        assert!(matches!(
            Schedule::new(
                &dims(2),
                (16, AvMasking::WeightRows, Rounds::Thex),
                (1024, &short),
                (1.0, 1.0)
            ),
            Err(Error::NotEnoughLevels { .. })
        ));
    }

    #[test]
    fn rounds_and_segments_chain_up() {
        let moduli = vec![2f64.powi(50); PIPELINE_DEPTH + 2];
        let s = Schedule::new(
            &dims(3),
            (32, AvMasking::WeightRows, Rounds::Thex),
            (1024, &moduli),
            (2f64.powi(36), 2f64.powi(30)),
        )
        .unwrap();
        assert_eq!(s.rounds().len(), 12);
        assert!(s.round(0).is_none() && s.round(13).is_none());
        let segments = s.segments();
        assert_eq!(segments.len(), 15);
        // Every segment's outputs are the next one's inputs (requests answered by replies).
        for pair in segments.windows(2) {
            let outs: Vec<_> = pair[0].outputs.iter().map(|(p, _)| *p).collect();
            let ins: Vec<_> = pair[1].inputs.iter().map(|(p, _)| *p).collect();
            let answered: Vec<_> = outs
                .iter()
                .map(|p| match p {
                    Port::Request(k) => Port::Reply(*k),
                    p => *p,
                })
                .collect();
            assert_eq!(answered, ins, "{} -> {}", pair[0].name, pair[1].name);
        }
        // Every request is at the decrypt level and scale.
        for r in s.rounds() {
            for it in r.items {
                assert_eq!(
                    it.request,
                    At {
                        level: 1,
                        scale: 2f64.powi(30)
                    }
                );
                assert_eq!(it.reply.scale, 2f64.powi(36));
            }
        }
        assert_eq!(segments.last().unwrap().outputs[0].0, Port::Logits);
    }

    #[test]
    fn blinded_rounds_take_a_level_each_way_and_double_the_relu_replies() {
        let moduli = vec![2f64.powi(50); Rounds::Blinded.depth() + 1];
        let at = |rounds| {
            Schedule::new(
                &dims(2),
                (16, AvMasking::WeightRows, rounds),
                (1024, &moduli),
                (2f64.powi(36), 2f64.powi(30)),
            )
        };
        let blinded = at(Rounds::Blinded).unwrap();
        let l = blinded.levels();
        // The program between the blind and the unblind is THE-X's, two levels higher.
        assert_eq!((l.top, l.items, l.decrypt, l.blinding), (7, 1, 0, 1));
        assert_eq!((l.input, l.qk, l.residual), (5, 4, 2));
        assert_eq!(blinded.logits().level, l.items);
        for r in blinded.rounds() {
            for it in &r.items {
                assert_eq!(it.request.level, 0);
                let twice = if it.kind.is_relu() { 2 } else { 1 };
                assert_eq!(
                    it.reply_ciphertexts,
                    twice * it.ciphertexts,
                    "{:?}",
                    it.kind
                );
            }
        }
        let first = blinded.round(1).unwrap().items[0];
        assert_eq!((first.kind, first.reply.level), (ItemKind::Softmax, 8));
        assert_eq!(blinded.reply_power(ItemKind::Softmax), 3);
        assert_eq!(blinded.reply_power(ItemKind::Ffn), 1);
        // One prime fewer is too short for blinding.
        let short = vec![2f64.powi(50); Rounds::Blinded.depth()];
        assert!(matches!(
            Schedule::new(
                &dims(2),
                (16, AvMasking::WeightRows, Rounds::Blinded),
                (1024, &short),
                (1.0, 1.0)
            ),
            Err(Error::NotEnoughLevels { .. })
        ));
        assert_eq!("blinded".parse::<Rounds>().unwrap(), Rounds::Blinded);
        assert!("none".parse::<Rounds>().is_err());
    }
}
