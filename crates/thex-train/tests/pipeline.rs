//! The conversion pipeline, evaluation and packaging on a tiny random BERT and a synthetic
//! sentiment task (fast: the whole file runs in seconds).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use thex_model::{
    Activation, Batch, BertConfig, LayerNormKind, LoadOptions, ParamMode, SoftmaxConfig,
    ThexConfig, ThexModel, TrainParams, load_model_dir, read_safetensors, save_model_dir,
};
use thex_train::train::{Objective, batch_loss};
use thex_train::{
    Dataset, RunOptions, Stage, TrainConfig, TrainError, evaluate, evaluate_dir, install_model,
    package_model, run_pipeline, stage_dir,
};

const GOOD: [&str; 4] = ["good", "great", "fine", "lovely"];
const BAD: [&str; 4] = ["bad", "awful", "poor", "dull"];
const FILLER: [&str; 8] = ["the", "movie", "was", "a", "plot", "actor", "very", "and"];

/// A tiny BERT directory (random weights drawn with `seed`, WordPiece vocabulary of whole
/// words).
fn tiny_base(dir: &Path, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let mut vocab: Vec<&str> = vec!["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
    vocab.extend(GOOD);
    vocab.extend(BAD);
    vocab.extend(FILLER);
    std::fs::write(dir.join("vocab.txt"), vocab.join("\n") + "\n").unwrap();
    let cfg: BertConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": vocab.len(), "hidden_size": 16, "num_hidden_layers": 3,
        "num_attention_heads": 2, "intermediate_size": 32, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
        "max_position_embeddings": 32, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
        "pad_token_id": 0, "model_type": "bert"
    }))
    .unwrap();
    let thex = ThexConfig::exact(&cfg).unwrap();
    let mode = ParamMode::Train(TrainParams {
        varmap: VarMap::new(),
        frozen_prefixes: vec![],
        init_missing: true,
        init_seed: Some(seed),
    });
    let model = ThexModel::from_tensors(&cfg, &thex, HashMap::new(), mode, &Device::Cpu).unwrap();
    save_model_dir(&model, dir, dir, &Default::default()).unwrap();
    // A plain Hugging Face directory has no thex.json.
    std::fs::remove_file(dir.join("thex.json")).unwrap();
}

/// Sentences of filler words with one sentiment word; label 1 for a positive one.
fn tiny_tsv(path: &Path, n: usize, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut text = String::from("sentence\tlabel\n");
    for _ in 0..n {
        let label = rng.gen_range(0..2u32);
        let len = rng.gen_range(2..8);
        let mut words: Vec<&str> = (0..len)
            .map(|_| FILLER[rng.gen_range(0..FILLER.len())])
            .collect();
        let word = if label == 1 { GOOD } else { BAD }[rng.gen_range(0..4)];
        words.insert(rng.gen_range(0..=words.len()), word);
        text += &format!("{} \t{label}\n", words.join(" "));
    }
    std::fs::write(path, text).unwrap();
}

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    cfg: TrainConfig,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    tiny_base(&root.join("base"), 11);
    tiny_tsv(&root.join("train.tsv"), 400, 1);
    tiny_tsv(&root.join("dev.tsv"), 100, 2);
    let mut cfg = TrainConfig {
        base_model: root.join("base"),
        train_data: root.join("train.tsv"),
        dev_data: root.join("dev.tsv"),
        out_dir: root.join("run"),
        layers: 2,
        batch_size: 16,
        max_batch_tokens: 256,
        log_every: 10,
        ..Default::default()
    };
    for ft in [
        &mut cfg.baseline,
        &mut cfg.relu,
        &mut cfg.softmax_stage.fine_tune,
        &mut cfg.distill.fine_tune,
    ] {
        ft.epochs = 6;
        ft.lr = 1e-2;
        ft.max_examples = 0;
    }
    // The base model and the new classifier are drawn from seeds (the run is reproducible);
    // the baseline still gets enough steps to learn the task from other starts.
    cfg.baseline.epochs = 12;
    cfg.baseline.lr = 3e-3;
    cfg.softmax_stage.reciprocal.rows = 2000;
    cfg.softmax_stage.reciprocal.steps = 200;
    cfg.softmax_stage.reciprocal.probe_examples = 64;
    cfg.layernorm.examples = 200;
    Fixture {
        _tmp: tmp,
        root,
        cfg,
    }
}

fn tensor_names(dir: &Path) -> Vec<String> {
    read_safetensors(&dir.join("model.safetensors"), &Device::Cpu)
        .unwrap()
        .into_keys()
        .collect()
}

#[test]
fn pipeline_runs_all_stages_learns_the_task_and_resumes() {
    let f = fixture();
    let report = run_pipeline(&f.cfg, &RunOptions::default()).unwrap();
    let stages: Vec<Stage> = report.stages.iter().map(|s| s.stage).collect();
    assert_eq!(stages, Stage::ALL);
    for s in &report.stages {
        eprintln!("{}: dev {:.3}", s.stage, s.dev.accuracy);
        assert_eq!(s.layers, 2);
        assert_eq!(s.dev.n, 100);
        // Lean checkpoints: no embedding table, which base_weights supplies.
        let names = tensor_names(&s.dir);
        assert!(
            names.iter().all(|n| !n.starts_with("embeddings.")),
            "{names:?}"
        );
        assert!(names.iter().any(|n| n == "classifier.weight"));
        assert!(
            s.thex
                .base_weights
                .as_deref()
                .is_some_and(|b| b.ends_with("model.safetensors"))
        );
        // What the report says is what the saved checkpoint scores.
        let again = evaluate_dir(&s.dir, &f.cfg.dev_data).unwrap();
        assert_eq!(again, s.dev);
    }
    let by = |st: Stage| report.stages.iter().find(|s| s.stage == st).unwrap();
    // The task is learnable: the exact baseline learns it (chance is 0.5) and the final
    // approximated model, trained over all five stages, learns it well. With these seeds:
    // 0.87 and 0.96; with unseeded random models 0.64-0.93 and 0.72-0.98 were seen.
    assert!(
        by(Stage::Baseline).dev.accuracy >= 0.6,
        "{:?}",
        by(Stage::Baseline).dev
    );
    assert!(
        by(Stage::Distill).dev.accuracy >= 0.8,
        "{:?}",
        by(Stage::Distill).dev
    );
    // The approximations accumulate stage by stage.
    assert_eq!(by(Stage::Baseline).thex.activation, Activation::Gelu);
    assert_eq!(by(Stage::Relu).thex.activation, Activation::Relu);
    assert_eq!(by(Stage::Relu).thex.softmax, SoftmaxConfig::Exact);
    assert!(matches!(
        by(Stage::Softmax).thex.softmax,
        SoftmaxConfig::Thex(_)
    ));
    assert_eq!(by(Stage::Softmax).thex.layer_norm, LayerNormKind::Exact);
    assert_eq!(by(Stage::Distill).thex.layer_norm, LayerNormKind::Affine);
    assert!(
        tensor_names(&by(Stage::Softmax).dir)
            .iter()
            .any(|n| n.starts_with("reciprocal."))
    );
    // Training lowered the loss; stage reports carry throughput.
    for (st, epochs) in [(Stage::Baseline, 12), (Stage::Distill, 6)] {
        let ft = by(st).fine_tune.as_ref().unwrap();
        assert_eq!(ft.examples_seen, epochs * 400);
        assert!(ft.examples_per_s > 0.0);
        let (first, last) = (ft.losses.first().unwrap(), ft.losses.last().unwrap());
        assert!(last.loss < first.loss, "{st}: {:?}", ft.losses);
    }
    let rec = by(Stage::Softmax).reciprocal.as_ref().unwrap();
    assert!(rec.mse_final <= rec.mse_init, "{rec:?}");
    let fits = by(Stage::Layernorm).layer_norms.as_ref().unwrap();
    assert_eq!(fits.len(), 4);
    assert!(
        fits.iter().all(|x| x.relative_mse < 1.0 && x.tokens > 200),
        "{fits:?}"
    );
    // T stayed frozen during fine-tuning after its pre-training (THE-X's recipe).
    let t_of = |dir: &Path| {
        read_safetensors(&dir.join("model.safetensors"), &Device::Cpu).unwrap()["reciprocal.fc1.bias"]
            .to_vec1::<f32>()
            .unwrap()
    };
    assert_eq!(t_of(&by(Stage::Softmax).dir), t_of(&by(Stage::Distill).dir));

    // Resuming skips every finished stage.
    // (Reports read back from JSON may differ from the in-memory ones in the last bit of a
    // float, so those are compared field by field.)
    let again = run_pipeline(&f.cfg, &RunOptions::default()).unwrap();
    assert_eq!(again.stages.len(), 5);
    for (a, b) in again.stages.iter().zip(&report.stages) {
        assert_eq!((a.stage, &a.dir, &a.thex), (b.stage, &b.dir, &b.thex));
        let counts = |r: &thex_train::StageReport| {
            r.dev
                .per_label
                .values()
                .map(|l| (l.n, l.correct))
                .collect::<Vec<_>>()
        };
        assert_eq!(counts(a), counts(b));
        assert!((a.seconds - b.seconds).abs() < 1e-9);
    }
    // --from-stage reruns that stage only (and later ones); earlier reports are untouched.
    let rerun = run_pipeline(
        &f.cfg,
        &RunOptions {
            from_stage: Some(Stage::Distill),
            to_stage: None,
        },
    )
    .unwrap();
    assert_eq!(rerun.stages[..4], again.stages[..4]);
    assert_ne!(rerun.stages[4].seconds, again.stages[4].seconds);
    // A missing earlier checkpoint is rebuilt first.
    std::fs::remove_dir_all(stage_dir(&f.cfg, Stage::Layernorm)).unwrap();
    let repaired = run_pipeline(
        &f.cfg,
        &RunOptions {
            from_stage: Some(Stage::Distill),
            to_stage: None,
        },
    )
    .unwrap();
    assert_eq!(repaired.stages[..3], again.stages[..3]);
    assert_ne!(repaired.stages[3].seconds, again.stages[3].seconds);

    // Packaging and installing: f16 encoder matrices, same predictions within rounding.
    let pkg = f.root.join("pkg");
    let final_dir = stage_dir(&f.cfg, Stage::Distill);
    let manifest = package_model(
        &final_dir,
        &f.cfg.base_model,
        "tiny",
        "tiny-thex",
        &pkg,
        BTreeMap::new(),
    )
    .unwrap();
    assert_eq!(manifest.layers, 2);
    assert!(
        tensor_names(&pkg)
            .iter()
            .all(|n| !n.starts_with("embeddings."))
    );
    let dest = install_model(&f.cfg.base_model, &pkg, &f.root.join("installed")).unwrap();
    let original = load_model_dir(&final_dir, &LoadOptions::default()).unwrap();
    let installed = load_model_dir(&dest, &LoadOptions::default()).unwrap();
    let texts = [
        "the movie was good",
        "a dull plot and the actor",
        "very poor",
    ];
    let a = original.predict_batch(&texts).unwrap();
    let b = installed.predict_batch(&texts).unwrap();
    for (x, y) in a.iter().zip(&b) {
        for (l1, l2) in x.logits.iter().zip(&y.logits) {
            assert!(
                (l1 - l2).abs() < 0.05 * (1.0 + l1.abs()),
                "{:?} vs {:?}",
                x.logits,
                y.logits
            );
        }
    }
    // The link to the base weights is relative: base and model can move together.
    let thex = ThexConfig::from_file(&dest.join("thex.json")).unwrap();
    let link = thex.base_weights.unwrap();
    assert!(link.starts_with(".."), "{link}");
    let moved = f.root.join("moved");
    std::fs::create_dir_all(&moved).unwrap();
    let base_name = f.cfg.base_model.file_name().unwrap();
    copy_dir(&f.cfg.base_model, &moved.join(base_name));
    copy_dir(&dest, &moved.join("installed"));
    let relocated = load_model_dir(&moved.join("installed"), &LoadOptions::default()).unwrap();
    let c = relocated.predict_batch(&texts).unwrap();
    for (x, y) in b.iter().zip(&c) {
        assert_eq!(x.logits, y.logits);
    }
    let dev = Dataset::read_tsv(&f.cfg.dev_data).unwrap();
    let acc = evaluate(&installed, &dev).unwrap().accuracy;
    assert!((acc - report.stages[4].dev.accuracy).abs() <= 0.03, "{acc}");
    // Installing over a different base, or from a corrupted package, is refused.
    let other = f.root.join("other-base");
    tiny_base(&other, 12);
    let err = install_model(&other, &pkg, &f.root.join("x")).unwrap_err();
    assert!(matches!(err, TrainError::BaseMismatch { .. }), "{err}");
    std::fs::write(pkg.join("config.json"), "{}").unwrap();
    let err = install_model(&f.cfg.base_model, &pkg, &f.root.join("y")).unwrap_err();
    assert!(matches!(err, TrainError::CorruptPackage { .. }), "{err}");
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn distillation_loss_is_kl_plus_cross_entropy() {
    let f = fixture();
    let cfg = BertConfig::from_file(&f.cfg.base_model.join("config.json")).unwrap();
    let mut thex = ThexConfig::exact(&cfg).unwrap();
    thex.head = Some(thex_model::HeadConfig {
        pooling: thex_model::Pooling::Mean,
        labels: vec!["n".into(), "p".into()],
    });
    let opts = |varmap: VarMap| LoadOptions {
        layers: Some(1),
        thex: Some(thex.clone()),
        mode: ParamMode::Train(TrainParams {
            varmap,
            frozen_prefixes: vec![],
            init_missing: true,
            init_seed: None,
        }),
        ..Default::default()
    };
    let m = load_model_dir(&f.cfg.base_model, &opts(VarMap::new())).unwrap();
    let other = load_model_dir(&f.cfg.base_model, &opts(VarMap::new())).unwrap();
    let seqs = vec![
        m.tokenize("the movie was good").unwrap(),
        m.tokenize("bad").unwrap(),
    ];
    let batch = Batch::new(&seqs, 0, &Device::Cpu).unwrap();
    let labels = Tensor::new(&[1u32, 0], &Device::Cpu).unwrap();
    let logits = m.model.forward(&batch, false).unwrap().logits.unwrap();
    let scalar = |t: Tensor| t.to_scalar::<f32>().unwrap();
    let ce = scalar(candle_nn::loss::cross_entropy(&logits, &labels).unwrap());
    let kd = |teacher: &ThexModel, alpha| {
        let obj = Objective::Distill {
            teacher,
            temperature: 2.0,
            alpha,
        };
        scalar(batch_loss(&logits, &labels, obj, &batch).unwrap())
    };
    // Against itself the KL term vanishes; alpha = 0 is plain cross-entropy.
    assert!(kd(&m.model, 1.0).abs() < 1e-6);
    assert!((kd(&other.model, 0.0) - ce).abs() < 1e-6);
    // A different teacher gives a positive KL, mixed linearly with the cross-entropy.
    let kl = kd(&other.model, 1.0);
    assert!(kl > 0.0);
    assert!((kd(&other.model, 0.5) - 0.5 * (kl + ce)).abs() < 1e-5);
}

#[test]
fn evaluation_rejects_labels_the_head_lacks_and_headless_models() {
    let f = fixture();
    let tsv = f.root.join("three.tsv");
    std::fs::write(&tsv, "sentence\tlabel\ngood\t1\nbad\t2\n").unwrap();
    let mut cfg = f.cfg.clone();
    cfg.baseline.epochs = 1;
    run_pipeline(
        &cfg,
        &RunOptions {
            from_stage: None,
            to_stage: Some(Stage::Baseline),
        },
    )
    .unwrap();
    let dir = stage_dir(&cfg, Stage::Baseline);
    let err = evaluate_dir(&dir, &tsv).unwrap_err();
    assert!(
        matches!(
            err,
            TrainError::LabelOutOfRange {
                label: 2,
                labels: 2
            }
        ),
        "{err}"
    );
    let err = evaluate_dir(&f.cfg.base_model, &f.cfg.dev_data).unwrap_err();
    assert!(matches!(err, TrainError::NoHead { .. }), "{err}");
}
