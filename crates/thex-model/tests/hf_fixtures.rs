//! Equality with Hugging Face transformers on the real all-MiniLM-L6-v2 (fixtures written by
//! scripts/make_model_fixtures.py). Skips with a message when the model is not available.

mod common;

use candle_core::Device;
use common::{fixture, flat_f32, max_abs_diff, minilm_dir};
use thex_model::{Batch, BertTokenizer, LoadOptions, load_model_dir};

const TOL: f32 = 1e-4;

fn ids_and_lengths(fx: &serde_json::Value) -> Vec<Vec<u32>> {
    let ids = fx["input_ids"].as_array().unwrap();
    let mask = fx["attention_mask"].as_array().unwrap();
    ids.iter()
        .zip(mask)
        .map(|(row, m)| {
            let n = m
                .as_array()
                .unwrap()
                .iter()
                .filter(|x| x.as_u64() == Some(1))
                .count();
            row.as_array().unwrap()[..n]
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect()
}

#[test]
fn tokenizer_ids_match_hugging_face() {
    let Some(dir) = minilm_dir("tokenizer_ids_match_hugging_face") else {
        return;
    };
    let fx = fixture("tokenizer_ids.json");
    let from_json = BertTokenizer::from_tokenizer_json(&dir.join("tokenizer.json"), 512).unwrap();
    let from_vocab = BertTokenizer::from_vocab(&dir.join("vocab.txt"), true, 512).unwrap();
    let cases = fx["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(
            from_json.encode(text).unwrap(),
            want,
            "tokenizer.json on {text:?}"
        );
        assert_eq!(
            from_vocab.encode(text).unwrap(),
            want,
            "vocab.txt on {text:?}"
        );
    }
    // Truncation keeps [CLS] ... [SEP].
    let short = BertTokenizer::from_vocab(&dir.join("vocab.txt"), true, 5).unwrap();
    let ids = short.encode("one two three four five six").unwrap();
    assert_eq!(ids.len(), 5);
    assert_eq!((ids[0], ids[4]), (101, 102));
}

#[test]
fn full_model_matches_hugging_face() {
    let Some(dir) = minilm_dir("full_model_matches_hugging_face") else {
        return;
    };
    let fx = fixture("minilm_l6_full.json");
    let m = load_model_dir(&dir, &LoadOptions::default()).unwrap();
    assert_eq!(m.model.layers().len(), 6);
    let seqs = ids_and_lengths(&fx);
    // The tokenizer reproduces the fixture's ids.
    for (s, text) in seqs.iter().zip(fx["sentences"].as_array().unwrap()) {
        assert_eq!(&m.tokenize(text.as_str().unwrap()).unwrap(), s);
    }
    let batch = Batch::new(&seqs, 0, &Device::Cpu).unwrap();
    let out = m.model.forward(&batch, false).unwrap();
    let hidden: Vec<f32> = out
        .last_hidden_state
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    // Padded positions carry values too (HF computes them as well); compare everything.
    let d_hidden = max_abs_diff(&hidden, &flat_f32(&fx["last_hidden_state"]));
    let pooled: Vec<f32> = out.pooled.flatten_all().unwrap().to_vec1().unwrap();
    let d_pooled = max_abs_diff(&pooled, &flat_f32(&fx["mean_pooled"]));
    eprintln!("max |diff| last_hidden_state {d_hidden:.2e}, mean_pooled {d_pooled:.2e}");
    assert!(d_hidden <= TOL, "last_hidden_state differs by {d_hidden}");
    assert!(d_pooled <= TOL, "mean_pooled differs by {d_pooled}");

    // The public encode path (one sentence at a time, bucketed batches) agrees too.
    let texts: Vec<&str> = fx["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let encoded = m.encode_batch(&texts, true).unwrap();
    let want_norm = fx["normalized"].as_array().unwrap();
    for (i, e) in encoded.iter().enumerate() {
        assert_eq!(e.input_ids, seqs[i]);
        let d = max_abs_diff(&e.embedding_normalized, &flat_f32(&want_norm[i]));
        assert!(d <= TOL, "normalized embedding {i} differs by {d}");
        let lhs = e.last_hidden_state.as_ref().unwrap();
        assert_eq!(lhs.len(), seqs[i].len());
    }
}

#[test]
fn truncated_model_matches_hugging_face() {
    let Some(dir) = minilm_dir("truncated_model_matches_hugging_face") else {
        return;
    };
    let fx = fixture("minilm_l6_k2.json");
    let opts = LoadOptions {
        layers: Some(2),
        ..Default::default()
    };
    let m = load_model_dir(&dir, &opts).unwrap();
    assert_eq!(m.model.layers().len(), 2);
    assert_eq!(
        m.model
            .params()
            .iter()
            .filter(|(n, _)| n.starts_with("encoder.layer.2"))
            .count(),
        0
    );
    let batch = Batch::new(&ids_and_lengths(&fx), 0, &Device::Cpu).unwrap();
    let out = m.model.forward(&batch, false).unwrap();
    let pooled: Vec<f32> = out.pooled.flatten_all().unwrap().to_vec1().unwrap();
    let d = max_abs_diff(&pooled, &flat_f32(&fx["mean_pooled"]));
    eprintln!("K=2 max |diff| mean_pooled {d:.2e}");
    assert!(d <= TOL, "K=2 mean_pooled differs by {d}");
}
