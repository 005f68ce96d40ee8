//! Compact packaged models (what fine-tuning changed, no embedding table) and their
//! installation on top of a fetched base model.
//!
//! A package directory holds `model.safetensors` (encoder matrices in f16, every other tensor
//! in f32, no `embeddings.*`), `config.json`, `thex.json` (without `base_weights`) and
//! `manifest.json` ([`Manifest`]: the sha256 of the base model's weights it builds on and of
//! every packaged file). [`install_model`] checks both and assembles a ready model directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use thex_model::{ThexConfig, read_safetensors};

use crate::error::{Result, TrainError, read_json, write_json};

/// Manifest file name inside a package.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Files of a package besides the manifest.
pub const PACKAGE_FILES: [&str; 3] = ["model.safetensors", "config.json", "thex.json"];
const TOKENIZER_FILES: [&str; 3] = ["tokenizer.json", "vocab.txt", "tokenizer_config.json"];

/// Describes a package.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Model name.
    pub name: String,
    /// Name of the base model (as `thex model fetch` knows it).
    pub base_model: String,
    /// sha256 of the base model's `model.safetensors`.
    pub base_sha256: String,
    /// Encoder layers.
    pub layers: usize,
    /// sha256 of every packaged file.
    pub files: BTreeMap<String, String>,
    /// Free-form facts (training run, accuracy of the packaged weights).
    #[serde(default)]
    pub notes: BTreeMap<String, serde_json::Value>,
}

/// sha256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    thex_model::fetch::sha256_file(path, &mut |_| {})
        .map_err(|e| TrainError::io(path, std::io::Error::other(e)))
}

fn copy(src: &Path, dst: &Path) -> Result<()> {
    std::fs::copy(src, dst)
        .map(|_| ())
        .map_err(|e| TrainError::io(src, e))
}

/// True for the tensors stored in f16: the encoder's weight matrices.
fn stored_half(name: &str, t: &Tensor) -> bool {
    name.starts_with("encoder.") && name.ends_with(".weight") && t.rank() == 2
}

/// Packages the checkpoint directory `checkpoint` (a stage output) into `out`: its tensors
/// minus `embeddings.*` (encoder matrices as f16), `config.json`, `thex.json` without
/// `base_weights`, and a manifest naming `base_name` and the sha256 of
/// `base_dir/model.safetensors`.
pub fn package_model(
    checkpoint: &Path,
    base_dir: &Path,
    base_name: &str,
    name: &str,
    out: &Path,
    notes: BTreeMap<String, serde_json::Value>,
) -> Result<Manifest> {
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    let tensors = read_safetensors(
        &checkpoint.join("model.safetensors"),
        &candle_core::Device::Cpu,
    )?;
    let mut kept: std::collections::HashMap<String, Tensor> = Default::default();
    for (n, t) in tensors {
        if n.starts_with("embeddings.") {
            continue;
        }
        let t = if stored_half(&n, &t) {
            t.to_dtype(DType::F16)?
        } else {
            t
        };
        kept.insert(n, t);
    }
    let weights = out.join("model.safetensors");
    candle_core::safetensors::save(&kept, &weights)?;
    copy(&checkpoint.join("config.json"), &out.join("config.json"))?;
    let mut thex = ThexConfig::from_file(&checkpoint.join("thex.json"))?;
    thex.base_weights = None;
    thex.to_file(&out.join("thex.json"))?;
    let layers = thex_model::BertConfig::from_file(&out.join("config.json"))?.num_hidden_layers;
    let mut files = BTreeMap::new();
    for f in PACKAGE_FILES {
        files.insert(f.to_string(), sha256_file(&out.join(f))?);
    }
    let manifest = Manifest {
        name: name.to_string(),
        base_model: base_name.to_string(),
        base_sha256: sha256_file(&base_dir.join("model.safetensors"))?,
        layers,
        files,
        notes,
    };
    write_json(&out.join(MANIFEST_FILE), &manifest)?;
    Ok(manifest)
}

/// Installs the package `package` on top of the base model directory `base_dir` into
/// `dest` (created): checks the base weights' and the packaged files' sha256 against the
/// manifest, copies the package, points `thex.json`'s `base_weights` at the base model's
/// safetensors (relative to `dest` when both share a root, so the pair can be moved together)
/// and copies the tokenizer files from the base. Returns `dest`, loadable with
/// `thex_model::load_model_dir`.
pub fn install_model(base_dir: &Path, package: &Path, dest: &Path) -> Result<PathBuf> {
    let manifest: Manifest = read_json(&package.join(MANIFEST_FILE))?;
    let base_weights = base_dir
        .join("model.safetensors")
        .canonicalize()
        .map_err(|e| TrainError::io(base_dir.join("model.safetensors"), e))?;
    let actual = sha256_file(&base_weights)?;
    if actual != manifest.base_sha256 {
        return Err(TrainError::BaseMismatch {
            path: base_weights,
            expected: manifest.base_sha256,
            actual,
        });
    }
    for (file, expected) in &manifest.files {
        let path = package.join(file);
        let actual = sha256_file(&path)?;
        if &actual != expected {
            return Err(TrainError::CorruptPackage {
                path,
                expected: expected.clone(),
                actual,
            });
        }
    }
    std::fs::create_dir_all(dest).map_err(|e| TrainError::io(dest, e))?;
    let dest_abs = dest.canonicalize().map_err(|e| TrainError::io(dest, e))?;
    copy(
        &package.join("model.safetensors"),
        &dest.join("model.safetensors"),
    )?;
    copy(&package.join("config.json"), &dest.join("config.json"))?;
    copy(&package.join(MANIFEST_FILE), &dest.join(MANIFEST_FILE))?;
    let mut thex = ThexConfig::from_file(&package.join("thex.json"))?;
    let link = relative_path(&dest_abs, &base_weights).unwrap_or(base_weights);
    thex.base_weights = Some(link.to_string_lossy().into_owned());
    thex.to_file(&dest.join("thex.json"))?;
    for f in TOKENIZER_FILES {
        let src = base_dir.join(f);
        if src.is_file() {
            copy(&src, &dest.join(f))?;
        }
    }
    Ok(dest.to_path_buf())
}

/// `target` relative to the directory `from` (both absolute), e.g. `../minilm-l6/x`; `None`
/// when they share nothing but the root.
fn relative_path(from: &Path, target: &Path) -> Option<PathBuf> {
    let (f, t): (Vec<_>, Vec<_>) = (from.components().collect(), target.components().collect());
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    if common <= 1 {
        return None;
    }
    let mut out: PathBuf = f[common..].iter().map(|_| "..").collect();
    out.extend(&t[common..]);
    Some(out)
}
