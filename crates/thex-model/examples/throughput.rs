//! Measures inference and training throughput of a model directory on sentences of a TSV file.
//!
//! ```text
//! cargo run --profile test -p thex-model --example throughput -- MODEL_DIR TSV [N] [K]
//! RAYON_NUM_THREADS=1 cargo run ...   # compare against one thread
//! ```
//! Reports sentences/s for (1) inference with the exact model, length-bucketed, (2) training
//! steps (forward + backward + AdamW) of a K-layer THE-X model with frozen embeddings.

use std::path::PathBuf;
use std::time::Instant;

use candle_nn::{Optimizer, VarMap};
use thex_model::{
    Batch, HeadConfig, LoadOptions, ParamMode, Pooling, ThexConfig, TrainParams, length_buckets,
    load_model_dir,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        return Err("usage: throughput MODEL_DIR TSV [N=512] [K=2]".into());
    }
    let dir = PathBuf::from(&args[1]);
    let n: usize = args.get(3).map_or(Ok(512), |s| s.parse())?;
    let k: usize = args.get(4).map_or(Ok(2), |s| s.parse())?;
    let text = std::fs::read_to_string(&args[2])?;
    let sentences: Vec<&str> = text
        .lines()
        .skip(1)
        .filter_map(|l| l.split('\t').next())
        .take(n)
        .collect();
    let threads = candle_core::utils::get_num_threads();
    println!(
        "{} sentences, candle CPU threads: {threads}",
        sentences.len()
    );

    let exact = load_model_dir(&dir, &LoadOptions::default())?;
    let t = Instant::now();
    let out = exact.encode_batch(&sentences, false)?;
    let secs = t.elapsed().as_secs_f64();
    let tokens: usize = out.iter().map(|o| o.input_ids.len()).sum();
    println!(
        "inference, exact {} layers: {:.1} sentences/s ({:.0} tokens/s, mean length {:.1})",
        exact.model.layers().len(),
        sentences.len() as f64 / secs,
        tokens as f64 / secs,
        tokens as f64 / sentences.len() as f64
    );

    let head = HeadConfig {
        pooling: Pooling::Mean,
        labels: vec!["negative".into(), "positive".into()],
    };
    let varmap = VarMap::new();
    let opts = LoadOptions {
        layers: Some(k),
        thex: Some(ThexConfig::full_thex(Some(head))),
        mode: ParamMode::Train(TrainParams {
            varmap: varmap.clone(),
            frozen_prefixes: vec!["embeddings.".into()],
            init_missing: true,
            init_seed: None,
        }),
        ..Default::default()
    };
    let student = load_model_dir(&dir, &opts)?;
    let mut opt = candle_nn::AdamW::new(varmap.all_vars(), Default::default())?;
    let ids = sentences
        .iter()
        .map(|s| student.tokenize(s))
        .collect::<Result<Vec<_>, _>>()?;
    let lengths: Vec<usize> = ids.iter().map(Vec::len).collect();
    let t = Instant::now();
    for bucket in length_buckets(&lengths, 32, 32 * 64) {
        let seqs: Vec<Vec<u32>> = bucket.iter().map(|&i| ids[i].clone()).collect();
        let labels: Vec<u32> = bucket.iter().map(|&i| (i % 2) as u32).collect();
        let batch = Batch::new(&seqs, 0, &candle_core::Device::Cpu)?;
        let logits = student
            .model
            .forward(&batch, true)?
            .logits
            .ok_or("no head")?;
        let labels = candle_core::Tensor::new(labels, &candle_core::Device::Cpu)?;
        opt.backward_step(&candle_nn::loss::cross_entropy(&logits, &labels)?)?;
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "training, THE-X {k} layers (frozen embeddings, batch <= 32): {:.1} sentences/s",
        sentences.len() as f64 / secs
    );
    Ok(())
}
