//! Added (special) tokens: found in the raw text before normalization (`normalized: false`,
//! the case of BERT's `[CLS]`, `[SEP]`, …) or in the normalized text (`normalized: true`),
//! leftmost-longest, with Hugging Face's `single_word`, `lstrip` and `rstrip` options.

use std::collections::{HashMap, HashSet};

use unicode_categories::UnicodeCategories;

use crate::error::{Result, TokenizerError};
use crate::normalize::BertNormalizer;

/// One added token as `tokenizer.json` lists it (its `id` there is not used: as in Hugging
/// Face, a token in the vocabulary keeps its id there and the others are numbered after it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct AddedToken {
    pub content: String,
    pub single_word: bool,
    pub lstrip: bool,
    pub rstrip: bool,
    pub normalized: bool,
    pub special: bool,
}

impl AddedToken {
    /// A special token matched in the raw text (as BERT's `[CLS]` … `[MASK]`).
    pub(crate) fn special(content: &str) -> Self {
        Self {
            content: content.to_owned(),
            single_word: false,
            lstrip: false,
            rstrip: false,
            normalized: false,
            special: true,
        }
    }
}

/// Matching options of one added token.
#[derive(Debug, Clone, Copy)]
struct Options {
    single_word: bool,
    lstrip: bool,
    rstrip: bool,
}

/// A part of a text: an added token (its id) or text still to tokenize.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Piece<'a> {
    /// An added token with the text it matched.
    Token(u32, &'a str),
    /// Text between added tokens.
    Text(&'a str),
}

/// The added tokens of a tokenizer.
#[derive(Debug, Clone, Default)]
pub(crate) struct AddedVocab {
    ids: HashMap<String, u32>,
    options: HashMap<u32, Options>,
    raw: Trie,
    normalized: Trie,
}

impl AddedVocab {
    /// Adds `tokens` in order to a vocabulary of `vocab_len` entries looked up with
    /// `vocab_id`, as Hugging Face does: an exact repeat is ignored, a token already in the
    /// vocabulary keeps its id, the others get `vocab_len`, `vocab_len + 1`, …
    pub(crate) fn new(
        tokens: &[AddedToken],
        vocab_len: usize,
        vocab_id: impl Fn(&str) -> Option<u32>,
        normalizer: &BertNormalizer,
    ) -> Result<Self> {
        let mut next_id = u32::try_from(vocab_len).map_err(|_| TokenizerError::TooManyTokens)?;
        let mut specials: Vec<&AddedToken> = vec![];
        let mut special_contents: HashSet<&str> = HashSet::new();
        for t in tokens {
            if t.special && !t.content.is_empty() && special_contents.insert(&t.content) {
                specials.push(t);
            }
        }
        let mut this = Self::default();
        let mut seen: HashSet<&AddedToken> = HashSet::new();
        let mut others: Vec<&AddedToken> = vec![];
        for t in tokens {
            if t.content.is_empty() || seen.contains(t) {
                continue;
            }
            let id = match this
                .ids
                .get(&t.content)
                .copied()
                .or_else(|| vocab_id(&t.content))
            {
                Some(id) => id,
                None => {
                    let id = next_id;
                    next_id = next_id
                        .checked_add(1)
                        .ok_or(TokenizerError::TooManyTokens)?;
                    id
                }
            };
            this.ids.insert(t.content.clone(), id);
            this.options.insert(
                id,
                Options {
                    single_word: t.single_word,
                    lstrip: t.lstrip,
                    rstrip: t.rstrip,
                },
            );
            if !special_contents.contains(t.content.as_str()) {
                others.push(t);
            }
            seen.insert(t);
        }
        for t in specials.into_iter().chain(others) {
            let id = this.ids[&t.content];
            if t.normalized {
                let pattern = normalizer.normalize(&t.content);
                if pattern.is_empty() {
                    return Err(TokenizerError::EmptyAddedToken {
                        content: t.content.clone(),
                    });
                }
                this.normalized.insert(pattern.as_bytes(), id);
            } else {
                this.raw.insert(t.content.as_bytes(), id);
            }
        }
        Ok(this)
    }

    /// Id of an added token.
    pub(crate) fn token_to_id(&self, token: &str) -> Option<u32> {
        self.ids.get(token).copied()
    }

    /// Contents of all added tokens.
    pub(crate) fn contents(&self) -> impl Iterator<Item = &str> {
        self.ids.keys().map(String::as_str)
    }

    /// Splits raw text at the added tokens matched before normalization.
    pub(crate) fn split_raw<'a>(&self, text: &'a str) -> Vec<Piece<'a>> {
        self.split(text, &self.raw)
    }

    /// Splits normalized text at the added tokens matched after normalization.
    pub(crate) fn split_normalized<'a>(&self, text: &'a str) -> Vec<Piece<'a>> {
        self.split(text, &self.normalized)
    }

    fn split<'a>(&self, text: &'a str, trie: &Trie) -> Vec<Piece<'a>> {
        let mut pieces = vec![];
        let mut offset = 0;
        for (found_start, found_end, id) in trie.find_all(text.as_bytes()) {
            let (mut start, mut stop) = (found_start, found_end);
            let opts = self.options.get(&id).copied().unwrap_or(Options {
                single_word: false,
                lstrip: false,
                rstrip: false,
            });
            if opts.single_word {
                let word_before = text[..start].chars().next_back().is_some_and(is_word_char);
                let word_after = text[stop..].chars().next().is_some_and(is_word_char);
                if word_before || word_after {
                    continue;
                }
            }
            if opts.lstrip {
                let before = &text[..start];
                start = before
                    .trim_end_matches(char::is_whitespace)
                    .len()
                    .max(offset);
            }
            if opts.rstrip {
                let after = &text[stop..];
                stop += after.len() - after.trim_start_matches(char::is_whitespace).len();
            }
            // Only a token starting with whitespace after an `rstrip` one gets here with
            // `start > stop` (where Hugging Face panics).
            start = start.min(stop);
            if offset < start {
                pieces.push(Piece::Text(&text[offset..start]));
            }
            pieces.push(Piece::Token(id, &text[start..stop]));
            offset = stop;
        }
        if offset < text.len() {
            pieces.push(Piece::Text(&text[offset..]));
        }
        pieces
    }
}

/// Regex `\w` (Alphabetic, marks, decimal digits, connector punctuation, joiners), used for
/// `single_word`.
fn is_word_char(c: char) -> bool {
    c.is_alphabetic()
        || c.is_mark()
        || c.is_number_decimal_digit()
        || c.is_punctuation_connector()
        || matches!(c, '\u{200C}' | '\u{200D}')
}

/// A byte trie of patterns for leftmost-longest search.
#[derive(Debug, Clone)]
struct Trie {
    nodes: Vec<Node>,
}

#[derive(Debug, Clone, Default)]
struct Node {
    /// Children by byte, sorted.
    next: Vec<(u8, usize)>,
    /// The id of the pattern ending here.
    id: Option<u32>,
}

impl Default for Trie {
    fn default() -> Self {
        Self {
            nodes: vec![Node::default()],
        }
    }
}

impl Trie {
    /// Adds a pattern; the first one added wins over a repeat.
    fn insert(&mut self, pattern: &[u8], id: u32) {
        let mut at = 0;
        for &b in pattern {
            at = match self.nodes[at].next.binary_search_by_key(&b, |&(k, _)| k) {
                Ok(i) => self.nodes[at].next[i].1,
                Err(i) => {
                    let new = self.nodes.len();
                    self.nodes.push(Node::default());
                    self.nodes[at].next.insert(i, (b, new));
                    new
                }
            };
        }
        self.nodes[at].id.get_or_insert(id);
    }

    fn is_empty(&self) -> bool {
        self.nodes[0].next.is_empty()
    }

    /// Longest pattern starting at `start`: its end and id.
    fn longest_at(&self, hay: &[u8], start: usize) -> Option<(usize, u32)> {
        let mut at = 0;
        let mut best = None;
        for (i, b) in hay[start..].iter().enumerate() {
            let node = &self.nodes[at];
            match node.next.binary_search_by_key(b, |&(k, _)| k) {
                Ok(j) => at = node.next[j].1,
                Err(_) => break,
            }
            if let Some(id) = self.nodes[at].id {
                best = Some((start + i + 1, id));
            }
        }
        best
    }

    /// Non-overlapping leftmost-longest matches `(start, end, id)`, left to right. Patterns
    /// are UTF-8, so matches in a `str` begin and end on character boundaries.
    fn find_all(&self, hay: &[u8]) -> Vec<(usize, usize, u32)> {
        let mut found = vec![];
        if self.is_empty() {
            return found;
        }
        let mut start = 0;
        while start < hay.len() {
            match self.longest_at(hay, start) {
                Some((end, id)) => {
                    found.push((start, end, id));
                    start = end;
                }
                None => start += 1,
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab(tokens: &[AddedToken]) -> AddedVocab {
        let base = ["[CLS]", "[SEP]", "a"];
        AddedVocab::new(
            tokens,
            base.len(),
            |t| base.iter().position(|b| *b == t).map(|i| i as u32),
            &BertNormalizer::bert(true),
        )
        .unwrap()
    }

    #[test]
    fn leftmost_longest_and_ids() {
        let mut ab = AddedToken::special("<ab>");
        ab.special = false;
        let v = vocab(&[
            AddedToken::special("[SEP]"),
            AddedToken::special("[SEP]x"),
            ab.clone(),
            ab,
        ]);
        assert_eq!(v.token_to_id("[SEP]"), Some(1));
        assert_eq!(v.token_to_id("[SEP]x"), Some(3));
        assert_eq!(v.token_to_id("<ab>"), Some(4));
        assert_eq!(
            v.split_raw("q[SEP]xy[SEP]<ab>"),
            [
                Piece::Text("q"),
                Piece::Token(3, "[SEP]x"),
                Piece::Text("y"),
                Piece::Token(1, "[SEP]"),
                Piece::Token(4, "<ab>"),
            ]
        );
        assert!(v.split_raw("").is_empty());
    }

    #[test]
    fn strip_single_word_and_normalized() {
        let mut m = AddedToken::special("[M]");
        m.lstrip = true;
        m.rstrip = true;
        let mut w = AddedToken::special("w");
        w.single_word = true;
        let mut n = AddedToken::special("ÉTÉ");
        n.normalized = true;
        n.special = false;
        let v = vocab(&[m, w, n]);
        assert_eq!(
            v.split_raw("x  [M]  y"),
            [
                Piece::Text("x"),
                Piece::Token(3, "  [M]  "),
                Piece::Text("y")
            ]
        );
        assert_eq!(
            v.split_raw("aw w"),
            [Piece::Text("aw "), Piece::Token(4, "w")]
        );
        assert_eq!(
            v.split_normalized("xete"),
            [Piece::Text("x"), Piece::Token(5, "ete")]
        );
    }

    #[test]
    fn empty_after_normalization_is_refused() {
        let mut t = AddedToken::special("\u{301}");
        t.normalized = true;
        let err = AddedVocab::new(&[t], 0, |_| None, &BertNormalizer::bert(true)).unwrap_err();
        assert!(matches!(err, TokenizerError::EmptyAddedToken { .. }));
    }
}
