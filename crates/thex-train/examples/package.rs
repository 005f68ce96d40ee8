//! Packages a training checkpoint as a compact model (what `models/sst2-thex-k3` holds), for
//! the maintainers who re-train the default model; users train with `thex train` and install
//! the default model with `thex model fetch --name sst2-thex`.
//!
//! ```text
//! package --checkpoint DIR --out DIR [--base DIR] [--name NAME] [--dev TSV]
//! ```
//! `--base` defaults to the `thex model fetch` cache's `minilm-l6`; with `--dev`, the packaged
//! model is installed to a temporary directory and its accuracy recorded in the manifest.

use std::collections::BTreeMap;
use std::path::PathBuf;

use thex_train::{Dataset, evaluate, install_model, package_model};

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
    let mut args = Args(std::env::args().skip(1).collect());
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
        let tmp = tempfile::tempdir()?;
        let dir = install_model(&base, &out, &tmp.path().join("model"))?;
        let m = thex_model::load_model_dir(&dir, &Default::default())?;
        let r = evaluate(&m, &Dataset::read_tsv(&dev)?)?;
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
    Ok(())
}
