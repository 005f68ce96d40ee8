//! The BERT normalizer: text cleaning, spaces around CJK ideographs, accent stripping and
//! lowercasing, character for character as Hugging Face's `BertNormalizer`.
//!
//! Character classes come from the same tables Hugging Face uses (`unicode_categories`, an
//! old Unicode version) so that every code point is treated alike; whitespace and lowercasing
//! come from the standard library, as there.

use unicode_categories::UnicodeCategories;
use unicode_normalization::UnicodeNormalization;

/// Normalizer settings (those of Hugging Face's `BertNormalizer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BertNormalizer {
    /// Drop NUL, U+FFFD and control/format characters (not `\t`, `\n`, `\r`); map all
    /// whitespace to a plain space.
    pub clean_text: bool,
    /// Put a space on each side of every CJK ideograph.
    pub handle_chinese_chars: bool,
    /// Decompose (NFD) and drop nonspacing marks.
    pub strip_accents: bool,
    /// Lowercase each character.
    pub lowercase: bool,
}

impl BertNormalizer {
    /// The settings as `tokenizer.json` states them: `strip_accents: None` means "as
    /// `lowercase`".
    pub fn new(
        clean_text: bool,
        handle_chinese_chars: bool,
        strip_accents: Option<bool>,
        lowercase: bool,
    ) -> Self {
        Self {
            clean_text,
            handle_chinese_chars,
            strip_accents: strip_accents.unwrap_or(lowercase),
            lowercase,
        }
    }

    /// The standard BERT normalizer (cleaning and CJK on; accents stripped iff lowercased).
    pub fn bert(lowercase: bool) -> Self {
        Self::new(true, true, None, lowercase)
    }

    /// Normalizes a text.
    pub fn normalize(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        for c in text.chars() {
            let c = if self.clean_text {
                if c == '\0' || c == '\u{FFFD}' || is_control(c) {
                    continue;
                }
                if is_whitespace(c) { ' ' } else { c }
            } else {
                c
            };
            if self.handle_chinese_chars && is_chinese_char(c) {
                out.push(' ');
                out.push(c);
                out.push(' ');
            } else {
                out.push(c);
            }
        }
        if self.strip_accents {
            out = strip_accents(&out);
        }
        if self.lowercase {
            // Per character, like Hugging Face: no context-dependent final sigma.
            out = out.chars().flat_map(char::to_lowercase).collect();
        }
        out
    }
}

/// `\t`, `\n`, `\r` and everything `char::is_whitespace` accepts.
fn is_whitespace(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || c.is_whitespace()
}

/// Control, format and private-use characters (as Hugging Face: `is_other` of
/// `unicode_categories`), except `\t`, `\n`, `\r`.
fn is_control(c: char) -> bool {
    !matches!(c, '\t' | '\n' | '\r') && c.is_other()
}

/// CJK ideographs (the blocks BERT pads with spaces; not Hangul, Hiragana or Katakana).
fn is_chinese_char(c: char) -> bool {
    matches!(
        c as u32,
        0x4E00..=0x9FFF
            | 0x3400..=0x4DBF
            | 0x20000..=0x2A6DF
            | 0x2A700..=0x2B73F
            | 0x2B740..=0x2B81F
            | 0x2B920..=0x2CEAF
            | 0xF900..=0xFAFF
            | 0x2F800..=0x2FA1F
    )
}

/// Code points whose canonical decomposition or combining class in the `unicode-normalization`
/// tables (Unicode 18) differ from the Unicode 9 tables that Hugging Face decomposes with: all
/// were assigned after Unicode 9, so there they are starters without a decomposition. They are
/// passed through as such (a starter also stops canonical reordering). Found by comparing both
/// tables over every code point; `tests/hf_equivalence.rs` checks the result against Hugging
/// Face for every code point.
const NOT_IN_UNICODE_9_NFD: [(u32, u32); 63] = [
    (0x05C8, 0x05C9),
    (0x07FD, 0x07FD),
    (0x0897, 0x089F),
    (0x08CA, 0x08D3),
    (0x09FE, 0x09FE),
    (0x0C3C, 0x0C3C),
    (0x0D3B, 0x0D3C),
    (0x0EBA, 0x0EBA),
    (0x1715, 0x1715),
    (0x1ABF, 0x1AF0),
    (0x1DF6, 0x1DFA),
    (0xA82C, 0xA82C),
    (0x105C9, 0x105C9),
    (0x105E4, 0x105E4),
    (0x10D24, 0x10D27),
    (0x10D69, 0x10D6D),
    (0x10EAB, 0x10EAC),
    (0x10ECB, 0x10ECF),
    (0x10EF0, 0x10EFB),
    (0x10EFD, 0x10EFF),
    (0x10F46, 0x10F50),
    (0x10F82, 0x10F85),
    (0x11070, 0x11070),
    (0x1133B, 0x1133B),
    (0x11383, 0x11383),
    (0x11385, 0x11385),
    (0x1138E, 0x1138E),
    (0x11391, 0x11391),
    (0x113C5, 0x113C5),
    (0x113C7, 0x113C8),
    (0x113CE, 0x113D0),
    (0x1145E, 0x1145E),
    (0x11839, 0x1183A),
    (0x11938, 0x11938),
    (0x1193D, 0x1193E),
    (0x11943, 0x11943),
    (0x119E0, 0x119E0),
    (0x11A34, 0x11A34),
    (0x11A47, 0x11A47),
    (0x11A99, 0x11A99),
    (0x11D42, 0x11D42),
    (0x11D44, 0x11D45),
    (0x11D97, 0x11D97),
    (0x11F41, 0x11F42),
    (0x16121, 0x16128),
    (0x1612F, 0x1612F),
    (0x16D68, 0x16D6A),
    (0x16FF0, 0x16FF1),
    (0x1D127, 0x1D128),
    (0x1D250, 0x1D252),
    (0x1D25B, 0x1D25C),
    (0x1D25F, 0x1D25F),
    (0x1D280, 0x1D281),
    (0x1E08F, 0x1E08F),
    (0x1E130, 0x1E136),
    (0x1E2AE, 0x1E2AE),
    (0x1E2EC, 0x1E2EF),
    (0x1E4EC, 0x1E4EF),
    (0x1E5EE, 0x1E5EF),
    (0x1E6E3, 0x1E6E3),
    (0x1E6E6, 0x1E6E6),
    (0x1E6EE, 0x1E6EF),
    (0x1E6F5, 0x1E6F5),
];

/// Whether `c` is in [`NOT_IN_UNICODE_9_NFD`].
fn nfd_as_unicode_9_starter(c: char) -> bool {
    let u = c as u32;
    if u < NOT_IN_UNICODE_9_NFD[0].0 {
        return false;
    }
    NOT_IN_UNICODE_9_NFD
        .binary_search_by(|&(lo, hi)| {
            if hi < u {
                std::cmp::Ordering::Less
            } else if lo > u {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// NFD, then drop nonspacing marks (Mn).
fn strip_accents(text: &str) -> String {
    fn push_nfd(segment: &str, out: &mut String) {
        out.extend(segment.nfd().filter(|c| !c.is_mark_nonspacing()));
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some((i, c)) = rest
        .char_indices()
        .find(|&(_, c)| nfd_as_unicode_9_starter(c))
    {
        push_nfd(&rest[..i], &mut out);
        if !c.is_mark_nonspacing() {
            out.push(c);
        }
        rest = &rest[i + c.len_utf8()..];
    }
    push_nfd(rest, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_pads_strips_and_lowercases() {
        let n = BertNormalizer::bert(true);
        assert_eq!(
            n.normalize("Héllo\tWORLD\u{0}\u{FFFD}\u{200B}!"),
            "hello world!"
        );
        assert_eq!(n.normalize("ab中c"), "ab 中 c");
        assert_eq!(n.normalize("ΣΑΣ"), "σασ");
        // Accents go before lowercasing: İ → I + U+0307 → I → i.
        assert_eq!(n.normalize("İ"), "i");
        let keep_accents = BertNormalizer::new(true, true, Some(false), true);
        assert_eq!(keep_accents.normalize("İ"), "i\u{307}");
        let cased = BertNormalizer::bert(false);
        assert_eq!(cased.normalize("Héllo"), "Héllo");
        let strip_only = BertNormalizer::new(false, false, Some(true), false);
        assert_eq!(strip_only.normalize("Ça\u{0}"), "Ca\u{0}");
    }

    #[test]
    fn table_is_sorted_and_disjoint() {
        for w in NOT_IN_UNICODE_9_NFD.windows(2) {
            assert!(w[0].0 <= w[0].1 && w[0].1 < w[1].0, "{w:x?}");
        }
        assert!(nfd_as_unicode_9_starter('\u{1AC0}'));
        assert!(nfd_as_unicode_9_starter('\u{05C8}'));
        assert!(nfd_as_unicode_9_starter('\u{1E6F5}'));
        assert!(!nfd_as_unicode_9_starter('\u{0301}'));
        assert!(!nfd_as_unicode_9_starter('\u{1E6F6}'));
    }
}
