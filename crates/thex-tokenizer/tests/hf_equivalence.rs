//! Id-for-id equality with Hugging Face `tokenizers` (the pipeline thex used before this
//! crate): the real MiniLM-L6 `tokenizer.json` (from `$THEX_MODEL_DIR`, else the
//! `thex model fetch` cache) and `vocab.txt` tokenizers built from its vocabulary, on every
//! sentence of the data sets in `shared/data` (`$THEX_DATA_DIR`), hand-written hard cases,
//! every code point, random strings and several truncation lengths. Skips, saying why, when
//! the model is not there (`cargo run -p thex -- model fetch` fills the cache).

mod common;

use std::path::PathBuf;

use serde_json::Value;
use thex_tokenizer::{BertNormalizer, BertTokenizer};
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer as HfNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{AddedToken, NormalizedString, Normalizer, Tokenizer, TruncationParams};

use common::Rng;

fn tokenizer_json_path(test: &str) -> Option<PathBuf> {
    let dir = match std::env::var_os("THEX_MODEL_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME")
                        .filter(|v| !v.is_empty())
                        .map(|h| PathBuf::from(h).join(".cache"))
                });
            let Some(cache) = cache else {
                eprintln!("SKIP {test}: no cache directory; set THEX_MODEL_DIR");
                return None;
            };
            cache.join("thex/models/minilm-l6")
        }
    };
    let path = dir.join("tokenizer.json");
    if path.is_file() {
        Some(path)
    } else {
        eprintln!(
            "SKIP {test}: {} not found (run `cargo run -p thex -- model fetch` or set THEX_MODEL_DIR)",
            path.display()
        );
        None
    }
}

fn data_dir() -> PathBuf {
    std::env::var_os("THEX_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"))
}

/// Ours and Hugging Face's, built from the same file.
struct Pair {
    name: String,
    ours: BertTokenizer,
    hf: Tokenizer,
}

impl Pair {
    fn check(&self, text: &str) {
        let enc = self.hf.encode(text, true).unwrap();
        assert_eq!(
            self.ours.encode(text),
            enc.get_ids(),
            "{} on {text:?}: ours {:?}, Hugging Face {:?}",
            self.name,
            self.ours.tokens(text),
            enc.get_tokens()
        );
    }

    fn check_tokens(&self, text: &str) {
        let enc = self.hf.encode(text, true).unwrap();
        assert_eq!(
            self.ours.tokens(text),
            enc.get_tokens(),
            "{} on {text:?}",
            self.name
        );
    }
}

fn truncation(max_len: usize) -> TruncationParams {
    TruncationParams {
        max_length: max_len,
        ..Default::default()
    }
}

fn json_pair(name: &str, json: &str, max_len: usize) -> Pair {
    let ours = BertTokenizer::from_tokenizer_json_bytes(json.as_bytes(), max_len).unwrap();
    let mut hf = Tokenizer::from_bytes(json.as_bytes()).unwrap();
    hf.with_padding(None);
    hf.with_truncation(Some(truncation(max_len))).unwrap();
    Pair {
        name: format!("{name} (max_len {max_len})"),
        ours,
        hf,
    }
}

/// As thex-model built its `vocab.txt` tokenizer with Hugging Face.
fn vocab_pair(vocab_txt: &str, lowercase: bool, max_len: usize) -> Pair {
    let ours = BertTokenizer::from_vocab_text(vocab_txt, lowercase, max_len).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vocab.txt");
    std::fs::write(&path, vocab_txt).unwrap();
    let model = WordPiece::from_file(path.to_str().unwrap())
        .unk_token("[UNK]".into())
        .build()
        .unwrap();
    let mut hf = Tokenizer::new(model);
    let cls = hf.token_to_id("[CLS]").unwrap();
    let sep = hf.token_to_id("[SEP]").unwrap();
    hf.with_normalizer(Some(HfNormalizer::new(true, true, None, lowercase)))
        .with_pre_tokenizer(Some(BertPreTokenizer))
        .with_post_processor(Some(BertProcessing::new(
            ("[SEP]".into(), sep),
            ("[CLS]".into(), cls),
        )));
    let specials: Vec<AddedToken> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .iter()
        .filter(|t| hf.token_to_id(t).is_some())
        .map(|t| AddedToken::from(*t, true))
        .collect();
    hf.add_special_tokens(&specials);
    hf.with_truncation(Some(truncation(max_len))).unwrap();
    Pair {
        name: format!(
            "vocab.txt {} (max_len {max_len})",
            if lowercase { "uncased" } else { "cased" }
        ),
        ours,
        hf,
    }
}

/// The vocabulary of a `tokenizer.json` as `vocab.txt` text (ids must be 0..n).
fn vocab_txt(json: &Value) -> String {
    let vocab = json["model"]["vocab"].as_object().unwrap();
    let mut tokens: Vec<(u64, &str)> = vocab
        .iter()
        .map(|(t, id)| (id.as_u64().unwrap(), t.as_str()))
        .collect();
    tokens.sort();
    assert!(
        tokens
            .iter()
            .enumerate()
            .all(|(i, (id, _))| *id == i as u64)
    );
    let mut text = tokens
        .iter()
        .map(|(_, t)| *t)
        .collect::<Vec<_>>()
        .join("\n");
    text.push('\n');
    text
}

struct Fixture {
    json_text: String,
    json: Value,
    vocab_txt: String,
}

fn fixture(test: &str) -> Option<Fixture> {
    let path = tokenizer_json_path(test)?;
    let json_text = std::fs::read_to_string(&path).unwrap();
    let json: Value = serde_json::from_str(&json_text).unwrap();
    let vocab_txt = vocab_txt(&json);
    Some(Fixture {
        json_text,
        json,
        vocab_txt,
    })
}

fn standard_pairs(f: &Fixture, max_len: usize) -> Vec<Pair> {
    vec![
        json_pair("tokenizer.json", &f.json_text, max_len),
        vocab_pair(&f.vocab_txt, true, max_len),
        vocab_pair(&f.vocab_txt, false, max_len),
    ]
}

fn hard_cases() -> Vec<String> {
    let mut cases: Vec<String> = [
        "",
        " ",
        "\t\n\r ",
        "Hello, world!",
        "Café déjà vu — naïve façade, Ångström, Øresund, ﬁnancial",
        "e\u{301}te\u{301} a\u{323}\u{302} o\u{308}\u{304} ḗ",
        "北京欢迎你 and 東京 and 서울 and ひらがな カタカナ",
        "mixed中文text",
        "emoji 😀👍🏽 👨‍👩‍👧 ❤️ 🇫🇷 🥰 🫠",
        "control\u{0}chars\u{1}\u{7}\u{1b}[0m\u{7f}\u{85}\u{feff}here\u{fffd}\u{200b}",
        "tabs\tand\nnewlines\r\nand\u{a0}nbsp\u{2003}em\u{3000}ideographic",
        "a [SEP] b [CLS] c [MASK] d [PAD] e [UNK] f",
        "[SEP][SEP]x[CLS]y",
        "[sep] [Sep] [ SEP ] [SEP",
        "pneumonoultramicroscopicsilicovolcanoconiosis",
        "!!!???...,,,;;;",
        "$%^&*()_+-=[]{}|\\:\";'<>?,./`~",
        "«quoted» “curly” ‘single’ „low“ ‹angle› 「corner」 ¿qué? ¡sí!",
        "ΣΊΣΥΦΟΣ ΟΔΥΣΣΕΥΣ σίσυφος ὈΔΥΣΣΕΎΣ",
        "İstanbul ıi İI DİYARBAKIR",
        "zero\u{200d}width\u{200c}joiner",
        "combining a\u{300}\u{301}\u{302}\u{303}\u{304}\u{305}\u{306}\u{307}\u{308} marks \u{301}\u{301}",
        "\u{301}leading mark",
        "ß ẞ ǅ ǈ Ǳ ﬀ ᾼ",
        "१२३ ٠١٢ 123 ½ ² ⅷ",
        "Привет, мир! Ёжик",
        "مرحبا بالعالم",
        "שלום עולם",
        "नमस्ते दुनिया",
        "ภาษาไทย",
        "private\u{e000}use\u{e123}\u{f8ff}\u{f0000}",
        "format\u{600}\u{61c}\u{200e}\u{2066}\u{206f}\u{e0001}tags",
        "new marks a\u{1ac1}\u{323}\u{1dfa}\u{301} x\u{897}\u{8ca}",
        "can't won't it's U.S.A. e.g. 3.14 1,000 #hashtag @user http://example.com/a?b=c",
        "ＦＵＬＬＷＩＤＴＨ ａｂｃ １２３",
        "\u{2028}line\u{2029}para\u{1680}ogham\u{180e}mongolian",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    cases.push("a".repeat(100));
    cases.push("a".repeat(101));
    cases.push("é".repeat(101));
    cases.push(format!("{} tail", "supercalifragilistic".repeat(5)));
    cases.push("word ".repeat(600));
    cases.push("中".repeat(300));
    cases
}

#[test]
fn hard_cases_match() {
    let Some(f) = fixture("hard_cases_match") else {
        return;
    };
    let cases = hard_cases();
    for p in standard_pairs(&f, 512) {
        for c in &cases {
            p.check(c);
            p.check_tokens(c);
        }
    }
    println!("hard cases: {} texts, all equal", cases.len());
}

/// The sentence columns of every TSV under shared/data.
fn data_sets() -> Vec<(String, Vec<String>)> {
    let root = data_dir();
    let mut sets = vec![];
    let Ok(dirs) = std::fs::read_dir(&root) else {
        return sets;
    };
    let mut files: Vec<PathBuf> = dirs
        .flatten()
        .filter(|d| d.path().is_dir())
        .flat_map(|d| std::fs::read_dir(d.path()).unwrap().flatten())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "tsv"))
        .collect();
    files.sort();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap().split('\t').collect();
        let cols: Vec<usize> = header
            .iter()
            .enumerate()
            .filter(|(_, h)| matches!(**h, "sentence" | "sentence1" | "sentence2" | "tokens"))
            .map(|(i, _)| i)
            .collect();
        assert!(!cols.is_empty(), "{}: no sentence column", path.display());
        let mut sentences = vec![];
        for line in lines {
            let fields: Vec<&str> = line.split('\t').collect();
            for &c in &cols {
                sentences.push(fields[c].to_string());
            }
        }
        let name = path
            .strip_prefix(&root)
            .unwrap_or(&path)
            .display()
            .to_string();
        sets.push((name, sentences));
    }
    sets
}

#[test]
fn data_sets_match() {
    let Some(f) = fixture("data_sets_match") else {
        return;
    };
    let sets = data_sets();
    if sets.is_empty() {
        eprintln!(
            "SKIP data_sets_match: no data sets under {} (set THEX_DATA_DIR)",
            data_dir().display()
        );
        return;
    }
    let pairs = standard_pairs(&f, 512);
    let mut total = 0;
    for (name, sentences) in &sets {
        for p in &pairs {
            for s in sentences {
                p.check(s);
            }
        }
        println!(
            "{name}: {} sentences, equal for {} tokenizers",
            sentences.len(),
            pairs.len()
        );
        total += sentences.len();
    }
    println!("data sets: {total} sentences compared, all equal");
}

#[test]
fn truncation_matches() {
    let Some(f) = fixture("truncation_matches") else {
        return;
    };
    let mut texts = hard_cases();
    if let Some((_, sst2)) = data_sets().into_iter().find(|(n, _)| n.contains("sst2")) {
        texts.extend(sst2.into_iter().take(2000));
    }
    for max_len in [2, 3, 5, 8, 16, 128] {
        for p in standard_pairs(&f, max_len) {
            for t in &texts {
                p.check(t);
                assert!(p.ours.encode(t).len() <= max_len);
            }
        }
    }
    println!(
        "truncation: {} texts at max_len 2, 3, 5, 8, 16, 128",
        texts.len()
    );
}

/// A character drawn mostly from interesting ranges.
fn random_char(rng: &mut Rng) -> char {
    const POOLS: [(u32, u32); 12] = [
        (0x20, 0x7E),
        (0x20, 0x7E),
        (0x00, 0x20),
        (0x80, 0x24F),
        (0x300, 0x36F),
        (0x370, 0x52F),
        (0x2000, 0x206F),
        (0x3000, 0x30FF),
        (0x4E00, 0x4F00),
        (0xE000, 0xE010),
        (0x1F300, 0x1FAFF),
        (0x0, 0x10FFFF),
    ];
    loop {
        let (lo, hi) = POOLS[rng.below(POOLS.len() as u64) as usize];
        if let Some(c) = char::from_u32(lo + rng.below(u64::from(hi - lo + 1)) as u32) {
            return c;
        }
    }
}

fn random_text(rng: &mut Rng, vocab: &[&str]) -> String {
    let mut s = String::new();
    for _ in 0..rng.below(40) {
        match rng.below(4) {
            0 => s.push_str(vocab[rng.below(vocab.len() as u64) as usize]),
            1 => s.push(' '),
            _ => s.push(random_char(rng)),
        }
    }
    s
}

#[test]
fn random_strings_match() {
    let Some(f) = fixture("random_strings_match") else {
        return;
    };
    let vocab: Vec<&str> = f.vocab_txt.lines().collect();
    let pairs = standard_pairs(&f, 64);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let n = 20_000;
    for _ in 0..n {
        let text = random_text(&mut rng, &vocab);
        for p in &pairs {
            p.check(&text);
        }
    }
    println!("random strings: {n} compared");
}

/// Every code point alone and among combining marks, through the normalizer and through the
/// whole tokenizer.
#[test]
fn every_code_point_matches() {
    let Some(f) = fixture("every_code_point_matches") else {
        return;
    };
    let settings = [
        (true, true, None, true),
        (true, true, None, false),
        (false, false, Some(true), false),
        (false, true, Some(true), true),
    ];
    let normalizers: Vec<(BertNormalizer, HfNormalizer)> = settings
        .iter()
        .map(|&(c, h, s, l)| {
            (
                BertNormalizer::new(c, h, s, l),
                HfNormalizer::new(c, h, s, l),
            )
        })
        .collect();
    let json = json_pair("tokenizer.json", &f.json_text, 64);
    let cased = vocab_pair(&f.vocab_txt, false, 64);
    let mut count = 0;
    for c in (0..=0x10FFFFu32).filter_map(char::from_u32) {
        let texts = [c.to_string(), format!("a{c}\u{323}\u{301}{c}\u{316}x{c}")];
        for text in &texts {
            for (ours, hf) in &normalizers {
                let mut n = NormalizedString::from(text.as_str());
                hf.normalize(&mut n).unwrap();
                assert_eq!(
                    ours.normalize(text),
                    n.get(),
                    "{ours:?} on U+{:04X} in {text:?}",
                    c as u32
                );
            }
        }
        let text = format!("x{c}y {c}");
        json.check(&text);
        cased.check(&text);
        count += 1;
    }
    println!("code points: {count} compared");
}

/// Added-token options, other normalizer settings and `BertProcessing`, in variants of the real
/// `tokenizer.json`.
#[test]
fn tokenizer_json_variants_match() {
    let Some(f) = fixture("tokenizer_json_variants_match") else {
        return;
    };
    let mut texts = hard_cases();
    texts.extend(
        [
            "the <ent> is here  <ent>  and<ent>x",
            "Hello World and hello world, HELLO WORLD",
            "a [NEW]   b [NEW]c",
            "xyz axyz xyz. xyzb (xyz)",
            "Déjà vu: DÉJÀ VU",
            "[MASK] [MASK][MASK]",
        ]
        .map(String::from),
    );
    let added = |content: &str, single_word, lstrip, rstrip, normalized, special| {
        serde_json::json!({"id": 0, "content": content, "single_word": single_word,
            "lstrip": lstrip, "rstrip": rstrip, "normalized": normalized, "special": special})
    };
    let mut variants: Vec<(&str, Value)> = vec![];
    let mut v = f.json.clone();
    let list = v["added_tokens"].as_array_mut().unwrap();
    list.push(added("<ent>", false, true, false, true, false));
    list.push(added("hello world", false, false, false, true, false));
    list.push(added("[NEW]", false, false, true, false, true));
    list.push(added("xyz", true, false, false, false, false));
    list.push(added("déjà", false, false, false, true, false));
    list.push(added("[MASK]", false, true, true, false, true));
    variants.push(("added tokens", v));
    for (name, key, value) in [
        ("keep accents", "strip_accents", Value::Bool(false)),
        ("strip accents", "strip_accents", Value::Bool(true)),
        ("no CJK spacing", "handle_chinese_chars", Value::Bool(false)),
        ("no cleaning", "clean_text", Value::Bool(false)),
        ("cased", "lowercase", Value::Bool(false)),
    ] {
        let mut v = f.json.clone();
        v["normalizer"][key] = value;
        variants.push((name, v));
    }
    let mut v = f.json.clone();
    v["post_processor"] = serde_json::json!({"type": "BertProcessing",
        "sep": ["[SEP]", 102], "cls": ["[CLS]", 101]});
    variants.push(("BertProcessing", v));
    let mut v = f.json.clone();
    v["model"]["max_input_chars_per_word"] = Value::from(7);
    v["model"]["continuing_subword_prefix"] = Value::from("");
    variants.push(("short words, no prefix", v));
    for (name, v) in &variants {
        let p = json_pair(name, &v.to_string(), 512);
        for t in &texts {
            p.check(t);
            p.check_tokens(t);
        }
        assert_eq!(p.ours.vocab_size(), p.hf.get_vocab_size(true), "{name}");
        for t in ["<ent>", "[NEW]", "[PAD]", "hello", "nonexistent-token"] {
            assert_eq!(p.ours.token_to_id(t), p.hf.token_to_id(t), "{name}: {t}");
        }
    }
    println!("tokenizer.json variants: {}", variants.len());
}

#[test]
fn metadata_matches() {
    let Some(f) = fixture("metadata_matches") else {
        return;
    };
    for p in standard_pairs(&f, 512) {
        assert_eq!(p.ours.vocab_size(), p.hf.get_vocab_size(true), "{}", p.name);
        assert_eq!(p.ours.pad_id(), p.hf.token_to_id("[PAD]"), "{}", p.name);
        for t in [
            "[CLS]", "[SEP]", "[UNK]", "[MASK]", "the", "##ing", "zzzzqqq",
        ] {
            assert_eq!(
                p.ours.token_to_id(t),
                p.hf.token_to_id(t),
                "{}: {t}",
                p.name
            );
        }
    }
}
