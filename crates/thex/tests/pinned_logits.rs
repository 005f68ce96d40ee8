//! The encrypted logits of the default model (`sst2-thex`, 16-token bucket) and of the
//! BERT-tiny shape (128-token bucket) with all client randomness derived from a test seed,
//! pinned bit for bit: a refactoring of the protocol, the compiler or the server must leave
//! every ciphertext, and so these logits, exactly as they are (with THE-X's rounds: blinded
//! rounds draw server randomness).
//!
//! The default model is installed from the base model in the cache (`thex model fetch`, run
//! by CI before the tests) into a temporary directory.

mod common;

use std::sync::Arc;

use thex_client::{ClientSession, Rounds};
use thex_engine::{EngineParams, ServerModel, ServerSession, run_local};
use thex_model::ThexModel;

const SEED: [u8; 32] = *b"thex pinned-logits test seed 001";

/// Encrypted logits of one inference on `ids` with a seeded client.
fn seeded_logits(model: &ThexModel, bucket: usize, ids: &[u32]) -> Vec<f64> {
    // THE-X's rounds: blinded ones draw fresh server randomness for every request.
    let engine = EngineParams {
        buckets: vec![bucket],
        rounds: Rounds::Thex,
        ..Default::default()
    };
    let server = Arc::new(ServerModel::compile(model, &engine).unwrap());
    let mut client = ClientSession::from_seed(server.client_bundle(), SEED).unwrap();
    let keys = client.evaluation_keys(&[]).unwrap();
    let mut session = ServerSession::new(server, keys, &[]).unwrap();
    run_local(&mut client, &mut session, ids).unwrap().logits
}

fn check(what: &str, logits: &[f64], pinned: &[u64]) {
    let bits: Vec<u64> = logits.iter().map(|x| x.to_bits()).collect();
    assert_eq!(
        bits, pinned,
        "{what}: encrypted logits {logits:?} (bits {bits:#018x?}) differ from the pinned ones"
    );
}

#[test]
fn default_model_logits_are_pinned() {
    let tmp = tempfile::tempdir().unwrap();
    let loaded = common::default_model(&tmp.path().join("sst2-thex"));
    let ids = loaded
        .tokenizer
        .encode("a gripping, beautifully acted film")
        .unwrap();
    let logits = seeded_logits(&loaded.model, 16, &ids);
    check("sst2-thex at 16 tokens", &logits, &PINNED_DEFAULT);
}

#[test]
fn bert_tiny_shape_logits_are_pinned() {
    let model = thex_model::synthetic::model(thex_model::synthetic::BERT_TINY, 1).unwrap();
    let vocab = thex_model::synthetic::BERT_TINY.vocab as u32;
    let ids: Vec<u32> = (0..100u32).map(|i| (i * 37 + 5) % vocab).collect();
    let logits = seeded_logits(&model, 128, &ids);
    check("BERT-tiny shape at 128 tokens", &logits, &PINNED_TINY);
}

/// Recorded with the code of commit 85bb7b5 plus the seeded client: logits
/// [-5.7717819488806335, 4.856356929758773].
const PINNED_DEFAULT: [u64; 2] = [0xc017164e01d85784, 0x40136ce8d4bc114e];
/// Same, logits [10.097115893325025, -5.897101592510164].
const PINNED_TINY: [u64; 2] = [0x402431b92ca38170, 0xc01796a1ccc4152b];
