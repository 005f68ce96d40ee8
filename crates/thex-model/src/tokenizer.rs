//! BERT tokenization: the Hugging Face `tokenizer.json` when present, else an uncased (or
//! cased, per `tokenizer_config.json`) WordPiece tokenizer built from `vocab.txt`.

use std::path::Path;

use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{AddedToken, Tokenizer, TruncationParams};

use crate::error::{ModelError, Result};

/// Tokenizer file names inside a model directory.
pub const TOKENIZER_FILES: [&str; 3] = ["tokenizer.json", "vocab.txt", "tokenizer_config.json"];

const SPECIAL: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

/// A BERT tokenizer producing `[CLS] … [SEP]` id sequences of bounded length, without padding.
#[derive(Debug, Clone)]
pub struct BertTokenizer {
    inner: Tokenizer,
}

fn tok_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(e.to_string())
}

impl BertTokenizer {
    /// Loads from a model directory (`tokenizer.json`, else `vocab.txt`); sequences are
    /// truncated to `max_len` tokens including `[CLS]` and `[SEP]`.
    pub fn from_dir(dir: &Path, max_len: usize) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            return Self::from_tokenizer_json(&json, max_len);
        }
        let vocab = dir.join("vocab.txt");
        if vocab.is_file() {
            return Self::from_vocab(&vocab, lowercase_setting(dir)?, max_len);
        }
        Err(ModelError::MissingFile { path: vocab })
    }

    /// Loads a Hugging Face `tokenizer.json` (its own padding setting is dropped).
    pub fn from_tokenizer_json(path: &Path, max_len: usize) -> Result<Self> {
        let mut inner = Tokenizer::from_file(path).map_err(tok_err)?;
        inner.with_padding(None);
        Self::finish(inner, max_len)
    }

    /// Builds the standard BERT WordPiece tokenizer from a `vocab.txt` (one token per line).
    pub fn from_vocab(path: &Path, lowercase: bool, max_len: usize) -> Result<Self> {
        let path_str = path
            .to_str()
            .ok_or_else(|| tok_err("vocabulary path is not UTF-8"))?;
        let model = WordPiece::from_file(path_str)
            .unk_token("[UNK]".into())
            .build()
            .map_err(tok_err)?;
        let mut inner = Tokenizer::new(model);
        let id = |t: &str| {
            inner
                .token_to_id(t)
                .ok_or_else(|| tok_err(format!("{t} missing from {}", path.display())))
        };
        let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
        inner
            .with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase)))
            .with_pre_tokenizer(Some(BertPreTokenizer))
            .with_post_processor(Some(BertProcessing::new(
                ("[SEP]".into(), sep),
                ("[CLS]".into(), cls),
            )));
        let specials: Vec<AddedToken> = SPECIAL
            .iter()
            .filter(|t| inner.token_to_id(t).is_some())
            .map(|t| AddedToken::from(*t, true))
            .collect();
        inner.add_special_tokens(&specials);
        Self::finish(inner, max_len)
    }

    fn finish(mut inner: Tokenizer, max_len: usize) -> Result<Self> {
        if max_len < 2 {
            return Err(ModelError::BadSequenceLength {
                len: max_len,
                max: 2,
            });
        }
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                ..Default::default()
            }))
            .map_err(tok_err)?;
        Ok(BertTokenizer { inner })
    }

    /// Token ids of one text, with `[CLS]` and `[SEP]`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, true).map_err(tok_err)?;
        Ok(enc.get_ids().to_vec())
    }

    /// The token strings of one text (for display).
    pub fn tokens(&self, text: &str) -> Result<Vec<String>> {
        let enc = self.inner.encode(text, true).map_err(tok_err)?;
        Ok(enc.get_tokens().to_vec())
    }

    /// Id of the padding token, if the vocabulary has `[PAD]`.
    pub fn pad_id(&self) -> Option<u32> {
        self.inner.token_to_id("[PAD]")
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// `do_lower_case` from a model directory's `tokenizer_config.json` (default: true, as
/// uncased BERT).
pub fn lowercase_setting(dir: &Path) -> Result<bool> {
    let path = dir.join("tokenizer_config.json");
    if !path.is_file() {
        return Ok(true);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| ModelError::Json { path, source })?;
    Ok(v.get("do_lower_case")
        .and_then(|b| b.as_bool())
        .unwrap_or(true))
}
