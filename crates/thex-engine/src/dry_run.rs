//! The schedule's dry run: the server's segments on the cleartext backend, which tracks levels,
//! scales, degrees and key switches exactly as CKKS does, checked against the [`Schedule`] and
//! the bucket's [`BucketPlan`].

use std::collections::BTreeSet;
use std::sync::Arc;

use he_linalg::{ClearBackend, PackedMatrix, SlotBackend, SlotClient, scales_match};

use crate::error::{EngineError, Result};
use crate::program::{FoldedLayer, ServerModel, encode_layer, encode_shared};
use crate::segments::{Outcome, Segments};
use crate::weights::ModelWeights;
use thex_client::{At, BucketPlan, Schedule};

impl ServerModel {
    /// Runs one inference of a compiled bucket on the cleartext backend with this model's
    /// moduli and scales, and checks that every request, reply and the logits sit at the level
    /// and scale the bucket's [`Schedule`] names, and that the inference uses exactly the
    /// plan's key switches and rotation steps. An error names the first mismatch.
    pub fn check_schedule(&self, bucket: usize) -> Result<()> {
        let sched = self.schedule(bucket)?;
        let params = self.params();
        let moduli: Vec<f64> = params.q_moduli().iter().map(|&q| q as f64).collect();
        let clear = ClearBackend::new(params.max_slots(), moduli, params.default_scale())?;
        dry_run(
            &clear,
            self.weights(),
            self.folded(),
            sched,
            self.plan(bucket)?,
            self.resolved().config.blind_bits,
        )
    }
}

fn mismatch(what: String) -> EngineError {
    EngineError::Internal(format!("schedule dry run: {what}"))
}

/// Checks that `cts` are degree-1 ciphertexts at `want`.
fn check_at(
    b: &ClearBackend,
    cts: &[<ClearBackend as SlotBackend>::Ct],
    want: At,
    what: &str,
) -> Result<()> {
    for (i, ct) in cts.iter().enumerate() {
        let (level, scale, degree) = (b.level(ct), b.scale(ct), b.degree(ct));
        if level != want.level || !scales_match(scale, want.scale) || degree != 1 {
            return Err(mismatch(format!(
                "{what} ciphertext {i} at level {level}, scale 2^{:.6}, degree {degree}; the \
                 schedule names level {}, scale 2^{:.6}",
                scale.log2(),
                want.level,
                want.scale.log2()
            )));
        }
    }
    Ok(())
}

fn dry_run(
    clear: &ClearBackend,
    weights: &ModelWeights,
    folded: &[FoldedLayer],
    sched: &Schedule,
    plan: &BucketPlan,
    blind_bits: u32,
) -> Result<()> {
    let zeros = vec![0.0; clear.slots()];
    let fresh = |n: usize, at: At| -> Result<Vec<_>> {
        (0..n)
            .map(|_| Ok(clear.encrypt(&zeros, at.level, at.scale)?))
            .collect()
    };
    let l = sched.layouts();
    let shared = Arc::new(encode_shared(clear, weights, sched)?);
    let mut segments = Segments {
        b: clear,
        sched,
        taps: None,
        blind_bits,
    };
    let mut x = PackedMatrix::new(l.hidden.clone(), fresh(l.hidden.n_cts(), sched.input())?)?;
    let mut round = 1u32;
    for (layer, f) in folded.iter().enumerate() {
        let prog = encode_layer(clear, weights, f, sched, shared.clone())?;
        let mut outcome = segments.attention_scores(&prog, layer, x)?;
        x = loop {
            match outcome {
                Outcome::Request(items, paused) => {
                    let want = sched
                        .round(round)
                        .ok_or_else(|| mismatch(format!("round {round} past the schedule")))?;
                    let kinds: Vec<_> = items.iter().map(|(k, _)| *k).collect();
                    let wanted: Vec<_> = want.items.iter().map(|it| it.kind).collect();
                    if kinds != wanted || want.layer != layer {
                        return Err(mismatch(format!(
                            "round {round} of layer {layer} sends {kinds:?}; the schedule names \
                             {wanted:?} of layer {}",
                            want.layer
                        )));
                    }
                    let mut replies = Vec::new();
                    for ((kind, m), it) in items.iter().zip(&want.items) {
                        let what = format!("round {round} {kind:?} request");
                        if m.cts().len() != it.ciphertexts {
                            return Err(mismatch(format!(
                                "{what} has {} ciphertexts, the schedule {}",
                                m.cts().len(),
                                it.ciphertexts
                            )));
                        }
                        check_at(clear, m.cts(), it.request, &what)?;
                        replies.push(fresh(it.reply_ciphertexts, it.reply)?);
                    }
                    round += 1;
                    outcome = segments.resume(&prog, layer, paused, replies)?.1;
                }
                Outcome::NextLayer(next) => break next,
                Outcome::Logits(ct) => {
                    if layer + 1 != folded.len() {
                        return Err(mismatch(format!("logits after layer {layer}")));
                    }
                    check_at(clear, std::slice::from_ref(&ct), sched.logits(), "logits")?;
                    return check_counts(clear, sched, plan, round);
                }
            }
        };
        check_at(
            clear,
            x.cts(),
            sched.input(),
            &format!("layer {} input", layer + 1),
        )?;
    }
    Err(mismatch("no logits after the last layer".into()))
}

/// After the logits: every round sent, and the plan's key switches and rotation steps used.
fn check_counts(
    clear: &ClearBackend,
    sched: &Schedule,
    plan: &BucketPlan,
    round: u32,
) -> Result<()> {
    if round as usize != sched.n_rounds() + 1 {
        return Err(mismatch(format!(
            "{} rounds sent, the schedule has {}",
            round - 1,
            sched.n_rounds()
        )));
    }
    let used = clear.stats().snapshot().key_switches;
    if used != plan.key_switches {
        return Err(mismatch(format!(
            "{used} key switches, the plan counts {}",
            plan.key_switches
        )));
    }
    let steps = clear.stats().used_steps();
    let planned: BTreeSet<usize> = plan.galois_steps.iter().copied().collect();
    if steps != planned {
        return Err(mismatch(format!(
            "rotation steps used {:?} differ from the plan's {:?}",
            steps.symmetric_difference(&planned).collect::<Vec<_>>(),
            plan.galois_steps.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::EngineParams;

    fn small() -> ServerModel {
        let model = thex_model::synthetic::model(thex_model::synthetic::SMALL, 3).unwrap();
        let (weights, embeddings) = crate::weights::split_model(&model).unwrap();
        let engine = EngineParams {
            buckets: vec![16, 32],
            request_log_scale: Some(30),
            pre_encode: false,
            ..Default::default()
        };
        ServerModel::compile_weights(weights, embeddings, &engine).unwrap()
    }

    #[test]
    fn the_schedule_of_every_bucket_checks_out() {
        let m = small();
        for &b in m.buckets() {
            m.check_schedule(b).unwrap();
        }
        assert!(matches!(
            m.check_schedule(64),
            Err(EngineError::Protocol(
                thex_client::Error::UnknownBucket { .. }
            ))
        ));
    }

    #[test]
    fn a_wrong_schedule_or_plan_is_caught() {
        let m = small();
        let params = m.params();
        let moduli: Vec<f64> = params.q_moduli().iter().map(|&q| q as f64).collect();
        // A fresh backend per run: its counters are the run's.
        let clear =
            || ClearBackend::new(params.max_slots(), moduli.clone(), params.default_scale());
        let sched = m.schedule(16).unwrap();
        let plan = m.plan(16).unwrap();
        let run = |s: &Schedule, p: &BucketPlan| {
            dry_run(&clear().unwrap(), m.weights(), m.folded(), s, p, 6)
        };
        run(sched, plan).unwrap();
        // A plan that undercounts key switches.
        let mut fewer = plan.clone();
        fewer.key_switches -= 1;
        let err = run(sched, &fewer).unwrap_err().to_string();
        assert!(err.contains("key switches"), "{err}");
        // A plan that misses a rotation step.
        let mut missing = plan.clone();
        missing.galois_steps.pop();
        let err = run(sched, &missing).unwrap_err().to_string();
        assert!(err.contains("rotation steps"), "{err}");
        // A schedule whose FFN reply sits one level too low: the next layer's input misses
        // the input level.
        let mut low = sched.clone();
        low.levels_mut().ffn_reply -= 1;
        let err = run(&low, plan).unwrap_err().to_string();
        assert!(err.contains("layer 1 input"), "{err}");
    }
}
