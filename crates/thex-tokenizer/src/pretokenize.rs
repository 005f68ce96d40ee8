//! The BERT pre-tokenizer: split on whitespace, then isolate every punctuation character.

use unicode_categories::UnicodeCategories;

/// ASCII punctuation (which includes symbols such as `$`, `+`, `^`) or Unicode `P*`.
fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation() || c.is_punctuation()
}

/// The words of a normalized text, in order: whitespace-separated runs, each punctuation
/// character a word of its own. Never yields an empty word.
pub(crate) fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(char::is_whitespace)
        .filter(|s| !s.is_empty())
        .flat_map(|chunk| PunctuationSplit { rest: chunk })
}

/// Splits a whitespace-free chunk before and after each punctuation character.
struct PunctuationSplit<'a> {
    rest: &'a str,
}

impl<'a> Iterator for PunctuationSplit<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let first = self.rest.chars().next()?;
        let end = if is_punctuation(first) {
            first.len_utf8()
        } else {
            self.rest
                .char_indices()
                .find(|&(_, c)| is_punctuation(c))
                .map_or(self.rest.len(), |(i, _)| i)
        };
        let (word, rest) = self.rest.split_at(end);
        self.rest = rest;
        Some(word)
    }
}

#[cfg(test)]
mod tests {
    use super::words;

    #[test]
    fn splits_whitespace_and_isolates_punctuation() {
        let w: Vec<&str> = words("Hey friend!     How are you?!? a$b «x» ").collect();
        assert_eq!(
            w,
            [
                "Hey", "friend", "!", "How", "are", "you", "?", "!", "?", "a", "$", "b", "«", "x",
                "»"
            ]
        );
        assert_eq!(words(" \u{3000}\t").count(), 0);
        assert_eq!(words("").count(), 0);
    }
}
