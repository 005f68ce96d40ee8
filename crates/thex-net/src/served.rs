//! What a server serves: the compiled program, the client bundle and the tokenizer file.

use std::path::Path;
use std::sync::Arc;

use thex_client::sha256_hex;
use thex_engine::{EngineParams, ResolvedPlan, ServerModel};
use thex_model::{LoadOptions, LoadedModel, load_model_dir};

use crate::api::{TokenizerInfo, TokenizerKind};
use crate::error::{NetError, Result};

/// A tokenizer file as distributed to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizerFile {
    /// Kind, settings and hash.
    pub info: TokenizerInfo,
    /// The file's bytes.
    pub bytes: Vec<u8>,
}

impl TokenizerFile {
    /// Reads the tokenizer of a model directory: `tokenizer.json` if present, else
    /// `vocab.txt` with `do_lower_case` from `tokenizer_config.json` (default true), the
    /// same choice `thex-model` makes when loading the directory.
    pub fn from_model_dir(dir: &Path, max_len: usize) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        let (kind, path, lowercase) = if json.is_file() {
            (TokenizerKind::TokenizerJson, json, true)
        } else {
            let lowercase = thex_model::lowercase_setting(dir)?;
            (TokenizerKind::VocabTxt, dir.join("vocab.txt"), lowercase)
        };
        let bytes = std::fs::read(&path).map_err(|e| NetError::io(&path, e))?;
        Ok(Self {
            info: TokenizerInfo {
                kind,
                lowercase,
                max_len,
                sha256: sha256_hex(&bytes),
                bytes: bytes.len(),
            },
            bytes,
        })
    }
}

/// A compiled model ready to serve: the program, the bundle bytes with their hash, the
/// tokenizer file.
#[derive(Debug, Clone)]
pub struct ServedModel {
    /// The compiled program (no key inside).
    pub model: Arc<ServerModel>,
    /// [`thex_client::ClientBundle::to_bytes`] of the program.
    pub bundle: Arc<Vec<u8>>,
    /// SHA-256 of `bundle`, hex.
    pub bundle_sha256: String,
    /// The tokenizer clients download.
    pub tokenizer: Arc<TokenizerFile>,
}

impl ServedModel {
    /// Compiles a loaded THE-X model (CPU-heavy: weights are packed and encoded here when
    /// `engine.pre_encode`).
    pub fn compile(loaded: &LoadedModel, engine: &EngineParams) -> Result<Self> {
        Self::serve(loaded, ServerModel::compile(&loaded.model, engine)?)
    }

    /// Compiles a loaded model by a saved plan ([`ServerModel::compile_plan`]: no
    /// calibration).
    pub fn compile_plan(loaded: &LoadedModel, plan: &ResolvedPlan) -> Result<Self> {
        Self::serve(loaded, ServerModel::compile_plan(&loaded.model, plan)?)
    }

    fn serve(loaded: &LoadedModel, model: ServerModel) -> Result<Self> {
        let max_len = loaded.model.config().max_position_embeddings;
        let tokenizer = TokenizerFile::from_model_dir(&loaded.dir, max_len)?;
        Ok(Self::new(Arc::new(model), tokenizer))
    }

    /// Loads a THE-X model directory and compiles it.
    pub fn load(dir: &Path, engine: &EngineParams) -> Result<Self> {
        let loaded = load_model_dir(dir, &LoadOptions::default())?;
        Self::compile(&loaded, engine)
    }

    /// Serves an already compiled program with a tokenizer file.
    pub fn new(model: Arc<ServerModel>, tokenizer: TokenizerFile) -> Self {
        let bundle = model.client_bundle().to_bytes();
        let bundle_sha256 = sha256_hex(&bundle);
        Self {
            model,
            bundle: Arc::new(bundle),
            bundle_sha256,
            tokenizer: Arc::new(tokenizer),
        }
    }
}
