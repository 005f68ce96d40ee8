//! BERT tokenization, by the `thex-tokenizer` crate: the Hugging Face `tokenizer.json` when
//! present, else a WordPiece tokenizer built from `vocab.txt`, uncased or cased per
//! `tokenizer_config.json`. This module keeps thex-model's names and its [`ModelError`]
//! results; [`BertTokenizer::inner`] gives the `thex_tokenizer` one.

use std::path::Path;

use crate::error::{ModelError, Result};

pub use thex_tokenizer::TOKENIZER_FILES;

/// A BERT tokenizer producing `[CLS] … [SEP]` id sequences of bounded length, without padding.
#[derive(Debug, Clone)]
pub struct BertTokenizer {
    inner: thex_tokenizer::BertTokenizer,
}

impl From<thex_tokenizer::BertTokenizer> for BertTokenizer {
    fn from(inner: thex_tokenizer::BertTokenizer) -> Self {
        Self { inner }
    }
}

impl From<BertTokenizer> for thex_tokenizer::BertTokenizer {
    fn from(t: BertTokenizer) -> Self {
        t.inner
    }
}

impl BertTokenizer {
    /// Loads from a model directory (`tokenizer.json`, else `vocab.txt`); sequences are
    /// truncated to `max_len` tokens including `[CLS]` and `[SEP]`.
    pub fn from_dir(dir: &Path, max_len: usize) -> Result<Self> {
        Ok(thex_tokenizer::BertTokenizer::from_dir(dir, max_len)?.into())
    }

    /// Loads a Hugging Face `tokenizer.json` (its own truncation and padding are not used).
    pub fn from_tokenizer_json(path: &Path, max_len: usize) -> Result<Self> {
        Ok(thex_tokenizer::BertTokenizer::from_tokenizer_json(path, max_len)?.into())
    }

    /// Builds the standard BERT WordPiece tokenizer from a `vocab.txt` (one token per line).
    pub fn from_vocab(path: &Path, lowercase: bool, max_len: usize) -> Result<Self> {
        Ok(thex_tokenizer::BertTokenizer::from_vocab(path, lowercase, max_len)?.into())
    }

    /// Token ids of one text, with `[CLS]` and `[SEP]`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.inner.encode(text))
    }

    /// The token strings of one text (for display).
    pub fn tokens(&self, text: &str) -> Result<Vec<String>> {
        Ok(self.inner.tokens(text))
    }

    /// Id of the padding token, if the vocabulary has `[PAD]`.
    pub fn pad_id(&self) -> Option<u32> {
        self.inner.pad_id()
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }

    /// Id of a token, if it has one.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The `thex_tokenizer` tokenizer (infallible `encode`, no dependency on this crate).
    pub fn inner(&self) -> &thex_tokenizer::BertTokenizer {
        &self.inner
    }
}

/// `do_lower_case` from a model directory's `tokenizer_config.json` (default: true, as
/// uncased BERT).
pub fn lowercase_setting(dir: &Path) -> Result<bool> {
    thex_tokenizer::lowercase_setting(dir).map_err(ModelError::from)
}
