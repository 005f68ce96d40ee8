//! Model directories: a Hugging Face BERT directory (`config.json`, `model.safetensors`,
//! tokenizer files) plus, for a THE-X model, `thex.json`.

use std::path::{Path, PathBuf};

use candle_core::Device;

use crate::approx::{THEX_FILE, ThexConfig};
use crate::bert::ThexModel;
use crate::config::BertConfig;
use crate::error::{ModelError, Result};
use crate::tokenizer::{BertTokenizer, TOKENIZER_FILES};
use crate::weights::{ParamMode, read_safetensors, write_safetensors};

/// The Hugging Face config file name.
pub const CONFIG_FILE: &str = "config.json";
/// The weights file name.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// How to load a model directory.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Keep only the first K encoder layers (default: all the config lists).
    pub layers: Option<usize>,
    /// Use these approximations instead of the directory's `thex.json` (default: the file,
    /// or the exact model when there is none). Used to convert a base checkpoint.
    pub thex: Option<ThexConfig>,
    /// Plain tensors for inference, or trainable `Var`s.
    pub mode: ParamMode,
    /// Where the tensors live.
    pub device: Device,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            layers: None,
            thex: None,
            mode: ParamMode::Inference,
            device: Device::Cpu,
        }
    }
}

/// A model with its tokenizer.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    /// The network.
    pub model: ThexModel,
    /// Its tokenizer (sequences truncated to `max_position_embeddings`).
    pub tokenizer: BertTokenizer,
    /// The directory it came from (tokenizer files are copied from here on save).
    pub dir: PathBuf,
}

/// Loads a model directory: any Hugging Face BERT directory (tensor names with or without the
/// `bert.` prefix), or a THE-X directory written by [`save_model_dir`]. When `thex.json` names
/// `base_weights`, tensors absent from `model.safetensors` are read from that file.
pub fn load_model_dir(dir: &Path, opts: &LoadOptions) -> Result<LoadedModel> {
    let mut config = BertConfig::from_file(&dir.join(CONFIG_FILE))?;
    if let Some(k) = opts.layers {
        config = config.truncated(k)?;
    }
    let thex_path = dir.join(THEX_FILE);
    let thex = match &opts.thex {
        Some(t) => t.clone(),
        None if thex_path.is_file() => ThexConfig::from_file(&thex_path)?,
        None => ThexConfig::exact(&config)?,
    };
    let mut tensors = read_safetensors(&dir.join(WEIGHTS_FILE), &opts.device)?;
    if let Some(base) = &thex.base_weights {
        for (name, t) in read_safetensors(&dir.join(base), &opts.device)? {
            tensors.entry(name).or_insert(t);
        }
    }
    let model = ThexModel::from_tensors(&config, &thex, tensors, opts.mode.clone(), &opts.device)?;
    let tokenizer = BertTokenizer::from_dir(dir, config.max_position_embeddings)?;
    Ok(LoadedModel {
        model,
        tokenizer,
        dir: dir.to_path_buf(),
    })
}

/// What [`save_model_dir`] leaves out.
#[derive(Debug, Clone, Default)]
pub struct SaveOptions {
    /// Tensors whose name starts with one of these are not written (e.g. `"embeddings."` when
    /// `thex.json`'s `base_weights` provides the unchanged table).
    pub exclude_prefixes: Vec<String>,
}

/// Writes `config.json` (truncated to the model's layers), `thex.json`, `model.safetensors`
/// (exactly the tensors the model uses, minus exclusions) and copies the tokenizer files of
/// `tokenizer_dir` into `out` (created if needed).
pub fn save_model_dir(
    model: &ThexModel,
    tokenizer_dir: &Path,
    out: &Path,
    opts: &SaveOptions,
) -> Result<()> {
    if model.params().is_empty() {
        return Err(ModelError::NoRecordedParams);
    }
    std::fs::create_dir_all(out).map_err(|e| ModelError::io(out, e))?;
    model.config().to_file(&out.join(CONFIG_FILE))?;
    model.thex().to_file(&out.join(THEX_FILE))?;
    let kept: Vec<_> = model
        .params()
        .iter()
        .filter(|(n, _)| {
            !opts
                .exclude_prefixes
                .iter()
                .any(|p| n.starts_with(p.as_str()))
        })
        .cloned()
        .collect();
    write_safetensors(&kept, &out.join(WEIGHTS_FILE))?;
    let same_dir = match (tokenizer_dir.canonicalize(), out.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if !same_dir {
        for name in TOKENIZER_FILES {
            let src = tokenizer_dir.join(name);
            if src.is_file() {
                let dst = out.join(name);
                std::fs::copy(&src, &dst).map_err(|e| ModelError::io(&dst, e))?;
            }
        }
    }
    Ok(())
}
