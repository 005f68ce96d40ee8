//! The schedule of every default bucket and of 128 tokens, of the default model (`sst2-thex`) and of the
//! BERT-tiny shape, run dry on the cleartext backend: every request, reply and the logits at
//! the level and scale the schedule names, the plan's exact key switches and rotation steps.

mod common;

use thex_engine::{EngineParams, ServerModel};
use thex_model::ThexModel;

/// The default buckets and 128.
const BUCKETS: [usize; 4] = [16, 32, 64, 128];

fn check_every_bucket(model: &ThexModel) -> usize {
    let engine = EngineParams {
        buckets: BUCKETS.to_vec(),
        pre_encode: false,
        ..Default::default()
    };
    let server = ServerModel::compile(model, &engine).unwrap();
    assert_eq!(server.buckets(), BUCKETS);
    for &b in server.buckets() {
        server
            .check_schedule(b)
            .unwrap_or_else(|e| panic!("bucket {b}: {e}"));
    }
    server.buckets().len()
}

#[test]
fn default_model_schedules_check_out() {
    let tmp = tempfile::tempdir().unwrap();
    let loaded = common::default_model(&tmp.path().join("sst2-thex"));
    assert_eq!(check_every_bucket(&loaded.model), 4);
}

#[test]
fn bert_tiny_shape_schedules_check_out() {
    let model = thex_model::synthetic::model(thex_model::synthetic::BERT_TINY, 1).unwrap();
    assert_eq!(check_every_bucket(&model), 4);
}
