//! [`BertTokenizer`]: added tokens, normalizer, pre-tokenizer and WordPiece put together,
//! with `[CLS] … [SEP]` and truncation.

use std::collections::HashMap;
use std::path::Path;

use crate::added::{AddedToken, AddedVocab, Piece};
use crate::error::{Result, TokenizerError};
use crate::files::{check_size, lowercase_setting, read_limited};
use crate::normalize::BertNormalizer;
use crate::pretokenize::words;
use crate::tokenizer_json;
use crate::wordpiece::{
    DEFAULT_CONTINUING_SUBWORD_PREFIX, DEFAULT_MAX_INPUT_CHARS_PER_WORD, WordPiece,
};

/// The special tokens a `vocab.txt` tokenizer matches in raw text (those in the vocabulary).
const VOCAB_SPECIAL_TOKENS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

const UNK: &str = "[UNK]";

/// A BERT WordPiece tokenizer producing `[CLS] … [SEP]` id sequences of at most `max_len`
/// tokens, without padding; the same ids as Hugging Face `tokenizers` with the same files.
#[derive(Clone)]
pub struct BertTokenizer {
    normalizer: BertNormalizer,
    model: WordPiece,
    added: AddedVocab,
    cls: (String, u32),
    sep: (String, u32),
    max_len: usize,
    vocab_size: usize,
}

impl std::fmt::Debug for BertTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BertTokenizer")
            .field("normalizer", &self.normalizer)
            .field("model", &self.model)
            .field("cls", &self.cls)
            .field("sep", &self.sep)
            .field("max_len", &self.max_len)
            .field("vocab_size", &self.vocab_size)
            .finish_non_exhaustive()
    }
}

impl BertTokenizer {
    /// Loads from a model directory: `tokenizer.json` if present, else `vocab.txt` with
    /// [`lowercase_setting`]. Sequences are truncated to `max_len` tokens including `[CLS]` and
    /// `[SEP]`.
    pub fn from_dir(dir: &Path, max_len: usize) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            return Self::from_tokenizer_json(&json, max_len);
        }
        let vocab = dir.join("vocab.txt");
        if vocab.is_file() {
            return Self::from_vocab(&vocab, lowercase_setting(dir)?, max_len);
        }
        Err(TokenizerError::MissingFile { path: vocab })
    }

    /// Loads a Hugging Face `tokenizer.json` file (see [`Self::from_tokenizer_json_bytes`]).
    pub fn from_tokenizer_json(path: &Path, max_len: usize) -> Result<Self> {
        Self::from_tokenizer_json_bytes(&read_limited(path)?, max_len)
    }

    /// Reads the contents of a Hugging Face `tokenizer.json`: a WordPiece model with a
    /// `BertNormalizer`, the `BertPreTokenizer` and a post-processor adding `[CLS]` and `[SEP]`
    /// (anything else is refused). Its own truncation and padding settings are not used.
    pub fn from_tokenizer_json_bytes(bytes: &[u8], max_len: usize) -> Result<Self> {
        check_max_len(max_len)?;
        check_size(|| "tokenizer.json".into(), bytes.len() as u64)?;
        let p = tokenizer_json::parse(bytes)?;
        let model = WordPiece::new(
            p.vocab,
            p.unk_token.clone(),
            p.continuing_subword_prefix,
            p.max_input_chars_per_word,
        )
        .ok_or(TokenizerError::MissingToken { token: p.unk_token })?;
        Self::assemble(p.normalizer, model, &p.added_tokens, p.cls, p.sep, max_len)
    }

    /// Builds the standard BERT tokenizer from a `vocab.txt` file (see
    /// [`Self::from_vocab_text`]).
    pub fn from_vocab(path: &Path, lowercase: bool, max_len: usize) -> Result<Self> {
        let bytes = read_limited(path)?;
        let text = std::str::from_utf8(&bytes).map_err(|_| TokenizerError::NotUtf8 {
            what: path.display().to_string(),
        })?;
        Self::from_vocab_text(text, lowercase, max_len)
    }

    /// Builds the standard BERT tokenizer from the text of a `vocab.txt` (one token per line,
    /// id = line number; trailing whitespace is dropped and a repeated token keeps its last
    /// line): `BertNormalizer` (accents stripped iff `lowercase`), `[UNK]`, `##` subwords of
    /// words up to 100 characters, `[PAD]`, `[UNK]`, `[CLS]`, `[SEP]`, `[MASK]` matched in the
    /// raw text. `[UNK]`, `[CLS]` and `[SEP]` must be in the vocabulary.
    pub fn from_vocab_text(text: &str, lowercase: bool, max_len: usize) -> Result<Self> {
        check_max_len(max_len)?;
        check_size(|| "vocab.txt".into(), text.len() as u64)?;
        let mut vocab = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let id = u32::try_from(i).map_err(|_| TokenizerError::TooManyTokens)?;
            vocab.insert(line.trim_end().to_owned(), id);
        }
        let id = |t: &str| {
            vocab
                .get(t)
                .map(|&id| (t.to_owned(), id))
                .ok_or_else(|| TokenizerError::MissingToken { token: t.into() })
        };
        let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
        let specials: Vec<AddedToken> = VOCAB_SPECIAL_TOKENS
            .iter()
            .filter(|t| vocab.contains_key(**t))
            .map(|t| AddedToken::special(t))
            .collect();
        let model = WordPiece::new(
            vocab,
            UNK.into(),
            DEFAULT_CONTINUING_SUBWORD_PREFIX.into(),
            DEFAULT_MAX_INPUT_CHARS_PER_WORD,
        )
        .ok_or(TokenizerError::MissingToken { token: UNK.into() })?;
        Self::assemble(
            BertNormalizer::bert(lowercase),
            model,
            &specials,
            cls,
            sep,
            max_len,
        )
    }

    fn assemble(
        normalizer: BertNormalizer,
        model: WordPiece,
        added_tokens: &[AddedToken],
        cls: (String, u32),
        sep: (String, u32),
        max_len: usize,
    ) -> Result<Self> {
        let added = AddedVocab::new(
            added_tokens,
            model.vocab().len(),
            |t| model.token_to_id(t),
            &normalizer,
        )?;
        let vocab_size = model.vocab().len()
            + added
                .contents()
                .filter(|t| !model.vocab().contains_key(*t))
                .count();
        Ok(Self {
            normalizer,
            model,
            added,
            cls,
            sep,
            max_len,
            vocab_size,
        })
    }

    /// Token ids of one text: `[CLS]`, at most `max_len - 2` tokens of the text, `[SEP]`.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::with_capacity(self.max_len.min(text.len() + 2));
        ids.push(self.cls.1);
        self.content(text, &mut |id, _| ids.push(id));
        ids.push(self.sep.1);
        ids
    }

    /// The token strings of [`Self::encode`] (for display): subwords with their `##`, `[UNK]`
    /// for unknown words, added tokens as they were matched.
    pub fn tokens(&self, text: &str) -> Vec<String> {
        let mut tokens = vec![self.cls.0.clone()];
        self.content(text, &mut |_, t| tokens.push(t.to_owned()));
        tokens.push(self.sep.0.clone());
        tokens
    }

    /// Passes the first `max_len - 2` tokens of `text` to `emit`.
    fn content(&self, text: &str, emit: &mut dyn FnMut(u32, &str)) {
        let limit = self.max_len.saturating_sub(2);
        let mut count = 0;
        // `None` once `limit` tokens are out.
        let mut push = |id: u32, token: &str| -> Option<()> {
            if count >= limit {
                return None;
            }
            emit(id, token);
            count += 1;
            (count < limit).then_some(())
        };
        let mut subwords = vec![];
        let _ = (|| -> Option<()> {
            for raw in self.added.split_raw(text) {
                let text = match raw {
                    Piece::Token(id, token) => {
                        push(id, token)?;
                        continue;
                    }
                    Piece::Text(text) => text,
                };
                let normalized = self.normalizer.normalize(text);
                for piece in self.added.split_normalized(&normalized) {
                    let text = match piece {
                        Piece::Token(id, token) => {
                            push(id, token)?;
                            continue;
                        }
                        Piece::Text(text) => text,
                    };
                    for word in words(text) {
                        subwords.clear();
                        self.model.tokenize(word, &mut subwords);
                        for &(id, token) in &subwords {
                            push(id, token)?;
                        }
                    }
                }
            }
            Some(())
        })();
    }

    /// Id of the padding token `[PAD]`, if there is one.
    pub fn pad_id(&self) -> Option<u32> {
        self.token_to_id("[PAD]")
    }

    /// Id of a token (added tokens first, then the vocabulary).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.added
            .token_to_id(token)
            .or_else(|| self.model.token_to_id(token))
    }

    /// Number of distinct tokens: the vocabulary plus added tokens not in it (Hugging Face's
    /// `get_vocab_size(true)`).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Longest id sequence [`Self::encode`] returns.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The normalizer settings.
    pub fn normalizer(&self) -> &BertNormalizer {
        &self.normalizer
    }
}

fn check_max_len(max_len: usize) -> Result<()> {
    if max_len < 2 {
        return Err(TokenizerError::MaxLenTooSmall(max_len));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const VOCAB: &str =
        "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\nworld\n##s\n!\nhe\n##llo\ncafe\n";

    #[test]
    fn encodes_with_cls_sep_and_truncates() {
        let t = BertTokenizer::from_vocab_text(VOCAB, true, 512).unwrap();
        assert_eq!(t.encode("Hello worlds!"), [2, 5, 6, 7, 8, 3]);
        assert_eq!(
            t.tokens("Hello worlds!"),
            ["[CLS]", "hello", "world", "##s", "!", "[SEP]"]
        );
        assert_eq!(t.encode("Café [SEP] zzz"), [2, 11, 3, 1, 3]);
        assert_eq!(t.encode(""), [2, 3]);
        assert_eq!(t.pad_id(), Some(0));
        assert_eq!(t.vocab_size(), 12);
        let short = BertTokenizer::from_vocab_text(VOCAB, true, 4).unwrap();
        assert_eq!(short.encode("hello world hello"), [2, 5, 6, 3]);
        let two = BertTokenizer::from_vocab_text(VOCAB, true, 2).unwrap();
        assert_eq!(two.encode("hello world"), [2, 3]);
        assert_eq!(two.tokens("hello world"), ["[CLS]", "[SEP]"]);
        let cased = BertTokenizer::from_vocab_text(VOCAB, false, 16).unwrap();
        assert_eq!(cased.encode("Hello hello"), [2, 1, 5, 3]);
    }

    #[test]
    fn refuses_bad_input() {
        for max_len in [0, 1] {
            assert!(matches!(
                BertTokenizer::from_vocab_text(VOCAB, true, max_len),
                Err(TokenizerError::MaxLenTooSmall(_))
            ));
        }
        let e = BertTokenizer::from_vocab_text("[UNK]\n[SEP]\n", true, 8).unwrap_err();
        assert!(e.to_string().contains("[CLS]"), "{e}");
        let e = BertTokenizer::from_vocab_text("[CLS]\n[SEP]\n", true, 8).unwrap_err();
        assert!(e.to_string().contains("[UNK]"), "{e}");
        let e = BertTokenizer::from_dir(Path::new("/nonexistent/dir"), 8).unwrap_err();
        assert!(matches!(e, TokenizerError::MissingFile { .. }), "{e}");
    }
}
