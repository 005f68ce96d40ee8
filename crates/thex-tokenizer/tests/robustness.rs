//! Refusals with clear errors, and no panic on any input.

mod common;

use thex_tokenizer::{BertTokenizer, MAX_INPUT_BYTES, TokenizerError};

use common::Rng;

const VOCAB: &str = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\n##s\n,\n";

fn json_with(model: &str, post: &str) -> String {
    format!(
        r#"{{"version":"1.0","added_tokens":[{{"id":0,"content":"[PAD]","single_word":false,
        "lstrip":false,"rstrip":false,"normalized":false,"special":true}}],
        "normalizer":{{"type":"BertNormalizer","clean_text":true,"handle_chinese_chars":true,
        "strip_accents":null,"lowercase":true}},"pre_tokenizer":{{"type":"BertPreTokenizer"}},
        "model":{model},"post_processor":{post}}}"#
    )
}

const WORDPIECE: &str = r###"{"type":"WordPiece","unk_token":"[UNK]",
    "continuing_subword_prefix":"##","max_input_chars_per_word":100,
    "vocab":{"[PAD]":0,"[UNK]":1,"[CLS]":2,"[SEP]":3,"the":4}}"###;
const TEMPLATE: &str = r#"{"type":"TemplateProcessing",
    "single":[{"SpecialToken":{"id":"[CLS]","type_id":0}},{"Sequence":{"id":"A","type_id":0}},
              {"SpecialToken":{"id":"[SEP]","type_id":0}}],
    "pair":[],
    "special_tokens":{"[CLS]":{"id":"[CLS]","ids":[2],"tokens":["[CLS]"]},
                      "[SEP]":{"id":"[SEP]","ids":[3],"tokens":["[SEP]"]}}}"#;

fn load(json: &str) -> Result<BertTokenizer, TokenizerError> {
    BertTokenizer::from_tokenizer_json_bytes(json.as_bytes(), 16)
}

#[test]
fn accepts_a_minimal_bert_tokenizer_json() {
    let t = load(&json_with(WORDPIECE, TEMPLATE)).unwrap();
    assert_eq!(t.encode("The THE zz [PAD]"), [2, 4, 4, 1, 0, 3]);
    assert_eq!(t.vocab_size(), 5);
}

#[test]
fn refuses_what_is_not_bert_wordpiece() {
    let e = BertTokenizer::from_tokenizer_json_bytes(b"{not json", 16).unwrap_err();
    assert!(matches!(e, TokenizerError::Json { .. }), "{e}");

    let bpe = r#"{"type":"BPE","vocab":{"a":0},"merges":[]}"#;
    let e = load(&json_with(bpe, TEMPLATE)).unwrap_err();
    assert!(matches!(e, TokenizerError::NotBert(_)), "{e}");
    assert!(e.to_string().contains("model type is BPE"), "{e}");

    let no_cls = TEMPLATE.replace(
        r#""[CLS]":{"id":"[CLS]","ids":[2],"tokens":["[CLS]"]},"#,
        "",
    );
    let e = load(&json_with(WORDPIECE, &no_cls)).unwrap_err();
    assert!(e.to_string().contains("[CLS] is not defined"), "{e}");

    let e = load(&json_with(WORDPIECE, "null")).unwrap_err();
    assert!(e.to_string().contains("post_processor"), "{e}");

    let no_unk = WORDPIECE.replace(r#""[UNK]":1,"#, "");
    let e = load(&json_with(&no_unk, TEMPLATE)).unwrap_err();
    assert!(matches!(e, TokenizerError::MissingToken { .. }), "{e}");

    let byte_level = json_with(WORDPIECE, TEMPLATE).replace("BertPreTokenizer", "ByteLevel");
    let e = load(&byte_level).unwrap_err();
    assert!(
        e.to_string().contains("pre_tokenizer type is ByteLevel"),
        "{e}"
    );

    let e = BertTokenizer::from_vocab_text("[UNK]\n[SEP]\n", true, 8).unwrap_err();
    assert!(
        matches!(e, TokenizerError::MissingToken { ref token } if token == "[CLS]"),
        "{e}"
    );
}

#[test]
fn refuses_max_len_below_two() {
    for max_len in [0, 1] {
        let e = BertTokenizer::from_vocab_text(VOCAB, true, max_len).unwrap_err();
        assert!(
            matches!(e, TokenizerError::MaxLenTooSmall(m) if m == max_len),
            "{e}"
        );
        let e = BertTokenizer::from_tokenizer_json_bytes(
            json_with(WORDPIECE, TEMPLATE).as_bytes(),
            max_len,
        )
        .unwrap_err();
        assert!(matches!(e, TokenizerError::MaxLenTooSmall(_)), "{e}");
    }
    assert_eq!(
        BertTokenizer::from_vocab_text(VOCAB, true, 2)
            .unwrap()
            .encode("the the"),
        [2, 3]
    );
}

#[test]
fn refuses_oversized_input() {
    let big = " ".repeat(MAX_INPUT_BYTES + 1);
    let e = BertTokenizer::from_tokenizer_json_bytes(big.as_bytes(), 16).unwrap_err();
    assert!(matches!(e, TokenizerError::TooLarge { .. }), "{e}");
    let e = BertTokenizer::from_vocab_text(&big, true, 16).unwrap_err();
    assert!(matches!(e, TokenizerError::TooLarge { .. }), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vocab.txt");
    std::fs::write(&path, &big).unwrap();
    let e = BertTokenizer::from_vocab(&path, true, 16).unwrap_err();
    assert!(matches!(e, TokenizerError::TooLarge { .. }), "{e}");
}

#[test]
fn files_and_directories() {
    let dir = tempfile::tempdir().unwrap();
    let e = BertTokenizer::from_dir(dir.path(), 16).unwrap_err();
    assert!(matches!(e, TokenizerError::MissingFile { .. }), "{e}");
    std::fs::write(
        dir.path().join("vocab.txt"),
        "[UNK]\n[CLS]\n[SEP]\nÉcole\necole\n",
    )
    .unwrap();
    assert!(thex_tokenizer::lowercase_setting(dir.path()).unwrap());
    let t = BertTokenizer::from_dir(dir.path(), 16).unwrap();
    assert_eq!(t.encode("École"), [1, 4, 2]);
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"do_lower_case": false}"#,
    )
    .unwrap();
    assert!(!thex_tokenizer::lowercase_setting(dir.path()).unwrap());
    let t = BertTokenizer::from_dir(dir.path(), 16).unwrap();
    assert_eq!(t.encode("École"), [1, 3, 2]);
    std::fs::write(dir.path().join("tokenizer_config.json"), "{").unwrap();
    assert!(thex_tokenizer::lowercase_setting(dir.path()).is_err());
    std::fs::write(dir.path().join("vocab.txt"), b"[UNK]\n\xff\n").unwrap();
    let e = BertTokenizer::from_vocab(&dir.path().join("vocab.txt"), true, 16).unwrap_err();
    assert!(matches!(e, TokenizerError::NotUtf8 { .. }), "{e}");
    std::fs::write(
        dir.path().join("tokenizer.json"),
        json_with(WORDPIECE, TEMPLATE),
    )
    .unwrap();
    assert_eq!(
        BertTokenizer::from_dir(dir.path(), 16)
            .unwrap()
            .vocab_size(),
        5
    );
}

/// Random bytes, and random mutations of a valid file, never panic; whatever loads encodes any
/// text.
#[test]
fn no_panic_on_random_input() {
    let mut rng = Rng(12345);
    let valid = json_with(WORDPIECE, TEMPLATE).into_bytes();
    let texts = [
        "",
        "the [CLS] thes, ",
        "\u{0}\u{301}中 😀 [SEP]x",
        "a\u{1ac1}\u{323}",
    ];
    let mut loaded = 0;
    for i in 0..20_000 {
        let bytes: Vec<u8> = if i % 2 == 0 {
            (0..(rng.next() % 64)).map(|_| rng.next() as u8).collect()
        } else {
            let mut b = valid.clone();
            for _ in 0..1 + rng.next() % 4 {
                let at = (rng.next() % b.len() as u64) as usize;
                let alphabet = b"{}[]\",:0123 aZ#\\";
                b[at] = alphabet[(rng.next() % alphabet.len() as u64) as usize];
            }
            b
        };
        for max_len in [0, 2, 5] {
            if let Ok(t) = BertTokenizer::from_tokenizer_json_bytes(&bytes, max_len) {
                loaded += 1;
                for text in texts {
                    assert!(t.encode(text).len() <= max_len);
                    assert_eq!(t.tokens(text).len(), t.encode(text).len());
                }
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(t) = BertTokenizer::from_vocab_text(&text, i % 3 == 0, 8) {
            loaded += 1;
            t.encode(&text);
        }
        let t = BertTokenizer::from_vocab_text(VOCAB, true, 8).unwrap();
        t.encode(&text);
        t.tokens(&text);
    }
    assert!(loaded > 0, "no mutation loaded");
}
