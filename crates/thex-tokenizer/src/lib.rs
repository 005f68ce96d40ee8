//! A small BERT WordPiece tokenizer, id for id the same as Hugging Face `tokenizers` with the
//! same `tokenizer.json` or `vocab.txt`, with no heavy dependencies (it builds for
//! `wasm32-unknown-unknown`).
//!
//! The pipeline, as Hugging Face's: special/added tokens are found in the raw text (a literal
//! `[SEP]` is the `[SEP]` token); the rest is normalized ([`BertNormalizer`]), split on
//! whitespace and punctuation, and cut into WordPiece subwords; `[CLS]` and `[SEP]` are added
//! and the text's tokens truncated to `max_len - 2`.
//!
//! ```
//! use thex_tokenizer::BertTokenizer;
//!
//! let vocab = "[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n##s\n!\n";
//! let tok = BertTokenizer::from_vocab_text(vocab, true, 128)?;
//! assert_eq!(tok.encode("Hellos!"), [2, 4, 5, 6, 3]);
//! # Ok::<(), thex_tokenizer::TokenizerError>(())
//! ```

mod added;
mod error;
mod files;
mod normalize;
mod pretokenize;
mod tokenizer;
mod tokenizer_json;
mod wordpiece;

pub use error::{Result, TokenizerError};
pub use files::{MAX_INPUT_BYTES, TOKENIZER_FILES, lowercase_setting};
pub use normalize::BertNormalizer;
pub use tokenizer::BertTokenizer;
