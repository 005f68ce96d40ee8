//! The smallest valid client bundle: N = 2^13, the smallest ring whose 128-bit log QP bound
//! (218) holds the seven primes a schedule needs (`PIPELINE_DEPTH + 1`; N = 2^12 allows 109
//! bits, fewer than seven 20-bit primes and a special prime), and a tiny one-layer model.

use ckks::{Parameters, ParametersLiteral, SecretDistribution};
use he_linalg::attention::AvMasking;
use thex_client::{BucketPlan, ClientBundle, EmbeddingTables, ModelDims, Rounds};

/// A valid bundle: hidden 8 (2 heads of 4), FFN 16, one layer, 2 labels, vocabulary 6,
/// 8 positions, buckets 4 and 8, log QP = 30 + 6·25 + 30 = 210 ≤ 218.
pub fn small_bundle() -> ClientBundle {
    let (vocab, hidden, positions) = (6, 8, 8);
    let table = |len: usize, base: f32| (0..len).map(|i| base + 0.01 * i as f32).collect();
    let mut bundle = ClientBundle {
        params: ParametersLiteral {
            log_n: 13,
            log_q: [30, 25, 25, 25, 25, 25, 25].into(),
            log_p: vec![30],
            log_scale: 25,
            dnum: 0,
            secret: SecretDistribution::Ternary,
            error_std: 3.2,
        },
        request_scale: 2f64.powi(20),
        // THE-X's rounds: blinding takes two more primes than this ring's bound allows.
        rounds: Rounds::Thex,
        dims: ModelDims {
            hidden,
            heads: 2,
            head_dim: 4,
            ffn: 16,
            layers: 1,
            reciprocal_hidden: 4,
            softmax_scale: 0.5,
            softmax_shift: 1.0,
            softmax_power: 3,
            labels: vec!["negative".into(), "positive".into()],
        },
        plans: Vec::new(),
        embeddings: EmbeddingTables {
            vocab,
            hidden,
            word: table(vocab * hidden, -0.2),
            position: table(positions * hidden, 0.1),
            token_type: table(hidden, 0.0),
            ln_gamma: vec![1.0; hidden],
            ln_beta: vec![0.0; hidden],
            ln_eps: 1e-12,
            pad_id: 0,
        },
    };
    let params = Parameters::new(&bundle.params).expect("secure parameters");
    for bucket in [4, 8] {
        bundle.plans.push(BucketPlan {
            bucket,
            galois_steps: vec![1, 2, 4, 8],
            key_switches: 0,
            plaintexts: 0,
            weight_bytes: 0,
            round_ciphertexts: Vec::new(),
            attention_values: AvMasking::WeightRows,
        });
        let rounds = bundle.schedule(&params, bucket).expect("schedule").rounds();
        bundle.plans.last_mut().expect("pushed").round_ciphertexts = rounds
            .iter()
            .map(|r| r.items.iter().map(|it| it.ciphertexts).sum())
            .collect();
    }
    bundle
}
