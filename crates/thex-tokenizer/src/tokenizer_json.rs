//! Reading the parts of a Hugging Face `tokenizer.json` that a BERT WordPiece tokenizer has;
//! anything else is refused.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::Value;

use crate::added::AddedToken;
use crate::error::{Result, TokenizerError};
use crate::normalize::BertNormalizer;

/// What a BERT `tokenizer.json` describes.
#[derive(Debug)]
pub(crate) struct Parts {
    pub vocab: HashMap<String, u32>,
    pub unk_token: String,
    pub continuing_subword_prefix: String,
    pub max_input_chars_per_word: usize,
    pub normalizer: BertNormalizer,
    pub added_tokens: Vec<AddedToken>,
    /// `[CLS]` as the post-processor adds it: token and id.
    pub cls: (String, u32),
    /// `[SEP]` likewise.
    pub sep: (String, u32),
}

#[derive(Deserialize)]
struct File {
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    added_tokens: Vec<AddedTokenJson>,
    #[serde(default)]
    normalizer: Value,
    #[serde(default)]
    pre_tokenizer: Value,
    #[serde(default)]
    model: Value,
    #[serde(default)]
    post_processor: Value,
}

#[derive(Deserialize)]
struct AddedTokenJson {
    content: String,
    #[serde(default)]
    single_word: bool,
    #[serde(default)]
    lstrip: bool,
    #[serde(default)]
    rstrip: bool,
    #[serde(default = "yes")]
    normalized: bool,
    #[serde(default)]
    special: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
struct WordPieceJson {
    unk_token: String,
    continuing_subword_prefix: String,
    max_input_chars_per_word: usize,
    vocab: HashMap<String, u32>,
}

#[derive(Deserialize)]
struct BertNormalizerJson {
    clean_text: bool,
    handle_chinese_chars: bool,
    #[serde(default)]
    strip_accents: Option<bool>,
    lowercase: bool,
}

#[derive(Deserialize)]
struct BertProcessingJson {
    sep: (String, u32),
    cls: (String, u32),
}

#[derive(Deserialize)]
struct TemplateProcessingJson {
    single: Vec<TemplatePiece>,
    special_tokens: HashMap<String, TemplateSpecial>,
}

#[derive(Deserialize)]
enum TemplatePiece {
    SpecialToken { id: String },
    Sequence { id: String },
}

#[derive(Deserialize)]
struct TemplateSpecial {
    ids: Vec<u32>,
    tokens: Vec<String>,
}

fn not_bert(msg: impl Into<String>) -> TokenizerError {
    TokenizerError::NotBert(msg.into())
}

/// The `type` of a component, or `None` for JSON `null` / absent.
fn component_type<'a>(what: &str, v: &'a Value) -> Result<Option<&'a str>> {
    match v {
        Value::Null => Ok(None),
        Value::Object(m) => match m.get("type") {
            Some(Value::String(t)) => Ok(Some(t)),
            _ => Err(not_bert(format!("{what} has no \"type\""))),
        },
        _ => Err(not_bert(format!("{what} is not an object"))),
    }
}

fn part<T: serde::de::DeserializeOwned>(what: &str, v: Value) -> Result<T> {
    serde_json::from_value(v).map_err(|source| TokenizerError::Json {
        what: format!("tokenizer.json {what}"),
        source,
    })
}

/// Parses `tokenizer.json` text.
pub(crate) fn parse(bytes: &[u8]) -> Result<Parts> {
    let file: File = serde_json::from_slice(bytes).map_err(|source| TokenizerError::Json {
        what: "tokenizer.json".into(),
        source,
    })?;
    if let Some(v) = &file.version
        && v != "1.0"
    {
        return Err(not_bert(format!("unknown tokenizer.json version {v:?}")));
    }

    match component_type("model", &file.model)? {
        Some("WordPiece") => {}
        Some(t) => return Err(not_bert(format!("model type is {t}, expected WordPiece"))),
        None => return Err(not_bert("no model")),
    }
    let model: WordPieceJson = part("model", file.model)?;

    let normalizer = match component_type("normalizer", &file.normalizer)? {
        Some("BertNormalizer") => {
            let n: BertNormalizerJson = part("normalizer", file.normalizer)?;
            BertNormalizer::new(
                n.clean_text,
                n.handle_chinese_chars,
                n.strip_accents,
                n.lowercase,
            )
        }
        Some(t) => {
            return Err(not_bert(format!(
                "normalizer type is {t}, expected BertNormalizer"
            )));
        }
        None => return Err(not_bert("no normalizer (expected BertNormalizer)")),
    };

    match component_type("pre_tokenizer", &file.pre_tokenizer)? {
        Some("BertPreTokenizer") => {}
        Some(t) => {
            return Err(not_bert(format!(
                "pre_tokenizer type is {t}, expected BertPreTokenizer"
            )));
        }
        None => return Err(not_bert("no pre_tokenizer (expected BertPreTokenizer)")),
    }

    let (cls, sep) = match component_type("post_processor", &file.post_processor)? {
        Some("BertProcessing") => {
            let p: BertProcessingJson = part("post_processor", file.post_processor)?;
            (p.cls, p.sep)
        }
        Some("TemplateProcessing") => {
            template_cls_sep(part("post_processor", file.post_processor)?)?
        }
        Some(t) => {
            return Err(not_bert(format!(
                "post_processor type is {t}, expected BertProcessing or TemplateProcessing"
            )));
        }
        None => return Err(not_bert("no post_processor adding [CLS] and [SEP]")),
    };

    Ok(Parts {
        vocab: model.vocab,
        unk_token: model.unk_token,
        continuing_subword_prefix: model.continuing_subword_prefix,
        max_input_chars_per_word: model.max_input_chars_per_word,
        normalizer,
        added_tokens: file
            .added_tokens
            .into_iter()
            .map(|t| AddedToken {
                content: t.content,
                single_word: t.single_word,
                lstrip: t.lstrip,
                rstrip: t.rstrip,
                normalized: t.normalized,
                special: t.special,
            })
            .collect(),
        cls,
        sep,
    })
}

/// `[CLS]` and `[SEP]` of a template that must read `<special> $A <special>`.
fn template_cls_sep(t: TemplateProcessingJson) -> Result<((String, u32), (String, u32))> {
    let shape = "post_processor template for one sequence is not [CLS] $A [SEP]";
    let [
        TemplatePiece::SpecialToken { id: first },
        TemplatePiece::Sequence { id: seq },
        TemplatePiece::SpecialToken { id: last },
    ] = t.single.as_slice()
    else {
        return Err(not_bert(shape));
    };
    if seq != "A" {
        return Err(not_bert(shape));
    }
    let special = |name: &str| -> Result<(String, u32)> {
        let s = t.special_tokens.get(name).ok_or_else(|| {
            not_bert(format!(
                "post_processor special token {name} is not defined"
            ))
        })?;
        match (s.tokens.as_slice(), s.ids.as_slice()) {
            ([token], [id]) => Ok((token.clone(), *id)),
            _ => Err(not_bert(format!(
                "post_processor special token {name} is not one token"
            ))),
        }
    };
    Ok((special(first)?, special(last)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal(model: &str, normalizer: &str, post: &str) -> String {
        format!(
            r#"{{"version":"1.0","added_tokens":[],"normalizer":{normalizer},
            "pre_tokenizer":{{"type":"BertPreTokenizer"}},"model":{model},"post_processor":{post}}}"#
        )
    }
    const WP: &str = r###"{"type":"WordPiece","unk_token":"[UNK]","continuing_subword_prefix":"##",
        "max_input_chars_per_word":100,"vocab":{"[UNK]":0,"[CLS]":1,"[SEP]":2}}"###;
    const NORM: &str = r#"{"type":"BertNormalizer","clean_text":true,"handle_chinese_chars":true,
        "strip_accents":null,"lowercase":false}"#;
    const BERT_POST: &str = r#"{"type":"BertProcessing","sep":["[SEP]",2],"cls":["[CLS]",1]}"#;

    #[test]
    fn reads_bert_processing() {
        let p = parse(minimal(WP, NORM, BERT_POST).as_bytes()).unwrap();
        assert_eq!(p.cls, ("[CLS]".to_string(), 1));
        assert_eq!(p.sep, ("[SEP]".to_string(), 2));
        assert!(!p.normalizer.strip_accents);
        assert_eq!(p.vocab.len(), 3);
    }

    #[test]
    fn refusals() {
        let bpe = r#"{"type":"BPE","vocab":{},"merges":[]}"#;
        let e = parse(minimal(bpe, NORM, BERT_POST).as_bytes()).unwrap_err();
        assert!(e.to_string().contains("model type is BPE"), "{e}");
        let e = parse(minimal(WP, "null", BERT_POST).as_bytes()).unwrap_err();
        assert!(e.to_string().contains("no normalizer"), "{e}");
        let e = parse(minimal(WP, NORM, "null").as_bytes()).unwrap_err();
        assert!(e.to_string().contains("post_processor"), "{e}");
        let roberta = r#"{"type":"RobertaProcessing","sep":["</s>",2],"cls":["<s>",0]}"#;
        assert!(parse(minimal(WP, NORM, roberta).as_bytes()).is_err());
        let tpl_no_cls = r#"{"type":"TemplateProcessing",
            "single":[{"SpecialToken":{"id":"[CLS]","type_id":0}},{"Sequence":{"id":"A","type_id":0}},
                      {"SpecialToken":{"id":"[SEP]","type_id":0}}],
            "special_tokens":{"[SEP]":{"id":"[SEP]","ids":[2],"tokens":["[SEP]"]}}}"#;
        let e = parse(minimal(WP, NORM, tpl_no_cls).as_bytes()).unwrap_err();
        assert!(e.to_string().contains("[CLS] is not defined"), "{e}");
        let tpl_shape = r#"{"type":"TemplateProcessing",
            "single":[{"Sequence":{"id":"A","type_id":0}}],"special_tokens":{}}"#;
        assert!(parse(minimal(WP, NORM, tpl_shape).as_bytes()).is_err());
        let e = parse(b"not json").unwrap_err();
        assert!(matches!(e, TokenizerError::Json { .. }), "{e}");
        let e = parse(b"[1,2]").unwrap_err();
        assert!(matches!(e, TokenizerError::Json { .. }), "{e}");
        let bad_vocab = WP.replace(r#""[UNK]":0"#, r#""[UNK]":-1"#);
        let e = parse(minimal(&bad_vocab, NORM, BERT_POST).as_bytes()).unwrap_err();
        assert!(e.to_string().contains("model"), "{e}");
    }
}
