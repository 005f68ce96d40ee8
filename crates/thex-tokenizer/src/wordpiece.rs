//! The WordPiece model: greedy longest-match-first subwords over a vocabulary.

use std::collections::HashMap;

/// Largest word (in characters) split into subwords; longer words become the unknown token.
pub(crate) const DEFAULT_MAX_INPUT_CHARS_PER_WORD: usize = 100;

/// Prefix of subwords that continue a word.
pub(crate) const DEFAULT_CONTINUING_SUBWORD_PREFIX: &str = "##";

/// A WordPiece vocabulary with its unknown token.
#[derive(Clone)]
pub(crate) struct WordPiece {
    vocab: HashMap<String, u32>,
    unk_token: String,
    unk_id: u32,
    prefix: String,
    max_input_chars_per_word: usize,
}

impl std::fmt::Debug for WordPiece {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WordPiece")
            .field("vocab_len", &self.vocab.len())
            .field("unk_token", &self.unk_token)
            .field("prefix", &self.prefix)
            .field("max_input_chars_per_word", &self.max_input_chars_per_word)
            .finish()
    }
}

impl WordPiece {
    /// `None` when `unk_token` is not in `vocab`.
    pub(crate) fn new(
        vocab: HashMap<String, u32>,
        unk_token: String,
        prefix: String,
        max_input_chars_per_word: usize,
    ) -> Option<Self> {
        let unk_id = *vocab.get(&unk_token)?;
        Some(Self {
            vocab,
            unk_token,
            unk_id,
            prefix,
            max_input_chars_per_word,
        })
    }

    pub(crate) fn vocab(&self) -> &HashMap<String, u32> {
        &self.vocab
    }

    pub(crate) fn token_to_id(&self, token: &str) -> Option<u32> {
        self.vocab.get(token).copied()
    }

    /// Appends the subwords of one word (`(id, token)`) to `out`: the unknown token alone if
    /// the word is too long or any part of it has no match.
    pub(crate) fn tokenize<'v>(&'v self, word: &str, out: &mut Vec<(u32, &'v str)>) {
        let unknown = (self.unk_id, self.unk_token.as_str());
        if word.chars().count() > self.max_input_chars_per_word {
            out.push(unknown);
            return;
        }
        let first = out.len();
        let mut candidate = String::with_capacity(self.prefix.len() + word.len());
        let mut start = 0;
        while start < word.len() {
            let mut end = word.len();
            let found = loop {
                let piece = &word[start..end];
                candidate.clear();
                if start > 0 {
                    candidate.push_str(&self.prefix);
                }
                candidate.push_str(piece);
                if let Some((token, &id)) = self.vocab.get_key_value(candidate.as_str()) {
                    break Some((id, token.as_str()));
                }
                match piece.char_indices().next_back() {
                    Some((last, _)) if last > 0 => end = start + last,
                    _ => break None,
                }
            };
            let Some(found) = found else {
                out.truncate(first);
                out.push(unknown);
                return;
            };
            out.push(found);
            start = end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(tokens: &[&str]) -> WordPiece {
        let vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect();
        WordPiece::new(vocab, "[UNK]".into(), "##".into(), 10).unwrap()
    }

    fn ids(m: &WordPiece, word: &str) -> Vec<u32> {
        let mut out = vec![];
        m.tokenize(word, &mut out);
        out.into_iter().map(|(id, _)| id).collect()
    }

    #[test]
    fn greedy_longest_match() {
        let m = model(&["[UNK]", "un", "##aff", "##able", "unaff", "a", "##b"]);
        assert_eq!(ids(&m, "unaffable"), [4, 3]);
        assert_eq!(ids(&m, "ab"), [5, 6]);
        // An unmatched piece makes the whole word unknown.
        assert_eq!(ids(&m, "unaffablex"), [0]);
        // Too long.
        assert_eq!(ids(&m, "abbbbbbbbbb"), [0]);
        assert_eq!(ids(&m, "abbbbbbbbb"), [5, 6, 6, 6, 6, 6, 6, 6, 6, 6]);
        assert!(WordPiece::new(HashMap::new(), "[UNK]".into(), "##".into(), 1).is_none());
    }
}
