//! Runs the thex-train library until the `thex` CLI wires it.
//!
//! ```text
//! train   [--config JSON] [--base DIR] [--train TSV] [--dev TSV] [--out DIR] [--layers K]
//!         [--from-stage S] [--to-stage S] [--print-config]
//! eval    --model DIR --data TSV [--json]
//! package --checkpoint DIR --out DIR [--base DIR] [--name NAME] [--dev TSV]
//! install --dest DIR [--base DIR] [--models DIR]
//! ```
//! `--base` defaults to the `thex model fetch` cache's `minilm-l6`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use thex_train::{
    Dataset, RunOptions, TrainConfig, evaluate, evaluate_dir, install_default_model, install_model,
    package_model, run_pipeline,
};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

struct Args(Vec<String>);

impl Args {
    fn value(&mut self, flag: &str) -> Res<Option<String>> {
        match self.0.iter().position(|a| a == flag) {
            None => Ok(None),
            Some(i) if i + 1 < self.0.len() => {
                let v = self.0.remove(i + 1);
                self.0.remove(i);
                Ok(Some(v))
            }
            Some(_) => Err(format!("{flag} needs a value").into()),
        }
    }
    fn path(&mut self, flag: &str) -> Res<Option<PathBuf>> {
        Ok(self.value(flag)?.map(PathBuf::from))
    }
    fn required(&mut self, flag: &str) -> Res<PathBuf> {
        self.path(flag)?
            .ok_or_else(|| format!("missing {flag}").into())
    }
    fn flag(&mut self, flag: &str) -> bool {
        match self.0.iter().position(|a| a == flag) {
            Some(i) => {
                self.0.remove(i);
                true
            }
            None => false,
        }
    }
    fn finish(self) -> Res<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(format!("unexpected arguments {:?}", self.0).into())
        }
    }
}

fn default_base() -> Res<PathBuf> {
    Ok(thex_model::fetch::default_models_dir()?.join("minilm-l6"))
}

fn main() -> Res<()> {
    let mut all: Vec<String> = std::env::args().skip(1).collect();
    if all.is_empty() {
        return Err("usage: train|eval|package|install ... (see the example's docs)".into());
    }
    let cmd = all.remove(0);
    let mut args = Args(all);
    match cmd.as_str() {
        "train" => {
            let mut cfg: TrainConfig = match args.path("--config")? {
                Some(p) => serde_json::from_str(&std::fs::read_to_string(&p)?)?,
                None => TrainConfig::default(),
            };
            if let Some(p) = args.path("--base")? {
                cfg.base_model = p;
            } else if cfg.base_model.as_os_str().is_empty() {
                cfg.base_model = default_base()?;
            }
            if let Some(p) = args.path("--train")? {
                cfg.train_data = p;
            }
            if let Some(p) = args.path("--dev")? {
                cfg.dev_data = p;
            }
            if let Some(p) = args.path("--out")? {
                cfg.out_dir = p;
            }
            if let Some(k) = args.value("--layers")? {
                cfg.layers = k.parse()?;
            }
            let opts = RunOptions {
                from_stage: args.value("--from-stage")?.map(|s| s.parse()).transpose()?,
                to_stage: args.value("--to-stage")?.map(|s| s.parse()).transpose()?,
            };
            let print = args.flag("--print-config");
            args.finish()?;
            if print {
                println!("{}", serde_json::to_string_pretty(&cfg)?);
                return Ok(());
            }
            let threads = candle_core::utils::get_num_threads();
            eprintln!(
                "candle CPU threads: {threads}; run directory {}",
                cfg.out_dir.display()
            );
            let report = run_pipeline(&cfg, &opts)?;
            println!("| stage | dev accuracy | n | stage time (s) | training examples/s |");
            println!("|---|---|---|---|---|");
            for s in &report.stages {
                println!(
                    "| {} | {:.2}% | {} | {:.0} | {} |",
                    s.stage.dir_name(),
                    100.0 * s.dev.accuracy,
                    s.dev.n,
                    s.seconds,
                    s.fine_tune
                        .as_ref()
                        .map(|f| format!("{:.1}", f.examples_per_s))
                        .unwrap_or_else(|| "-".into())
                );
            }
        }
        "eval" => {
            let model = args.required("--model")?;
            let data = args.required("--data")?;
            let json = args.flag("--json");
            args.finish()?;
            let r = evaluate_dir(&model, &data)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "accuracy {:.4} on {} examples (MCC {:.4})",
                    r.accuracy, r.n, r.mcc
                );
                for (label, s) in &r.per_label {
                    println!("  label {label}: {}/{} = {:.4}", s.correct, s.n, s.accuracy);
                }
            }
        }
        "package" => {
            let checkpoint = args.required("--checkpoint")?;
            let out = args.required("--out")?;
            let base = match args.path("--base")? {
                Some(b) => b,
                None => default_base()?,
            };
            let name = args.value("--name")?.unwrap_or_else(|| "sst2-thex".into());
            let dev = args.path("--dev")?;
            args.finish()?;
            let mut notes = BTreeMap::new();
            if let Ok(text) = std::fs::read_to_string(checkpoint.join("stage.json")) {
                let stage: serde_json::Value = serde_json::from_str(&text)?;
                notes.insert("checkpoint_stage".into(), stage["stage"].clone());
                notes.insert(
                    "checkpoint_dev_accuracy_f32".into(),
                    stage["dev"]["accuracy"].clone(),
                );
            }
            let mut manifest = package_model(&checkpoint, &base, "minilm-l6", &name, &out, notes)?;
            if let Some(dev) = dev {
                let tmp =
                    std::env::temp_dir().join(format!("thex-package-check-{}", std::process::id()));
                let dir = install_model(&base, &out, &tmp)?;
                let m = thex_model::load_model_dir(&dir, &Default::default())?;
                let r = evaluate(&m, &Dataset::read_tsv(&dev)?)?;
                std::fs::remove_dir_all(&tmp)?;
                println!(
                    "packaged model: dev accuracy {:.4} on {} examples",
                    r.accuracy, r.n
                );
                manifest
                    .notes
                    .insert("packaged_dev_accuracy".into(), r.accuracy.into());
                std::fs::write(
                    out.join(thex_train::install::MANIFEST_FILE),
                    serde_json::to_string_pretty(&manifest)? + "\n",
                )?;
            }
            println!("{}", serde_json::to_string_pretty(&manifest)?);
        }
        "install" => {
            let dest = args.required("--dest")?;
            let base = match args.path("--base")? {
                Some(b) => b,
                None => default_base()?,
            };
            let models = args
                .path("--models")?
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"));
            args.finish()?;
            let dir = install_default_model(&base, &models, &dest)?;
            println!("installed {}", dir.display());
        }
        other => return Err(format!("unknown command {other:?}").into()),
    }
    Ok(())
}
