//! GLUE-style single-sentence datasets: TSV with a header naming `sentence` and `label` columns.
//!
//! Files are read with quoting off (sentences contain `"`), one example per line. Every error names
//! the file and the 1-based line number.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// One labelled sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// The sentence, as in the file (no trimming beyond the line ending).
    pub text: String,
    /// The class label.
    pub label: u32,
}

/// A labelled dataset read from a TSV file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    /// The file it was read from.
    pub path: PathBuf,
    /// The examples, in file order.
    pub examples: Vec<Example>,
}

/// Errors reading a dataset.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is empty or its header lacks a required column.
    #[error("{path}:1: header must name 'sentence' and 'label' columns, found {found:?}")]
    BadHeader {
        /// The file.
        path: PathBuf,
        /// The header line as found.
        found: String,
    },
    /// A data line has the wrong number of tab-separated fields.
    #[error("{path}:{line}: expected {expected} tab-separated fields, found {found}")]
    FieldCount {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Fields in the header.
        expected: usize,
        /// Fields on this line.
        found: usize,
    },
    /// A label is not a non-negative integer.
    #[error("{path}:{line}: label {label:?} is not a non-negative integer")]
    BadLabel {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The label text.
        label: String,
    },
    /// The file is not valid UTF-8.
    #[error("{path}:{line}: not valid UTF-8")]
    NotUtf8 {
        /// The file.
        path: PathBuf,
        /// 1-based line number of the first invalid byte.
        line: usize,
    },
}

impl Dataset {
    /// Reads a TSV dataset (header with `sentence` and `label` columns, quoting off).
    pub fn read_tsv(path: impl AsRef<Path>) -> Result<Self, DataError> {
        let path = path.as_ref();
        let bytes = fs::read(path).map_err(|source| DataError::Io {
            path: path.into(),
            source,
        })?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let line = 1 + valid.iter().filter(|&&b| b == b'\n').count();
            DataError::NotUtf8 {
                path: path.into(),
                line,
            }
        })?;
        Self::parse(path, &text)
    }

    /// Parses TSV text; `path` is used in error messages and stored in the result.
    pub fn parse(path: &Path, text: &str) -> Result<Self, DataError> {
        let mut lines = text.lines();
        let header = lines.next().unwrap_or("");
        let columns: Vec<&str> = header.split('\t').map(str::trim).collect();
        let find = |name: &str| columns.iter().position(|c| *c == name);
        let (Some(sentence_col), Some(label_col)) = (find("sentence"), find("label")) else {
            return Err(DataError::BadHeader {
                path: path.into(),
                found: header.into(),
            });
        };
        let mut examples = Vec::new();
        for (i, line) in lines.enumerate() {
            let line_no = i + 2;
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split('\t').collect();
            if fields.len() != columns.len() {
                return Err(DataError::FieldCount {
                    path: path.into(),
                    line: line_no,
                    expected: columns.len(),
                    found: fields.len(),
                });
            }
            let label_text = fields[label_col].trim();
            let label = label_text.parse::<u32>().map_err(|_| DataError::BadLabel {
                path: path.into(),
                line: line_no,
                label: label_text.into(),
            })?;
            examples.push(Example {
                text: fields[sentence_col].to_string(),
                label,
            });
        }
        Ok(Self {
            path: path.into(),
            examples,
        })
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    /// True when the dataset has no examples.
    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// How many examples carry each label.
    pub fn label_counts(&self) -> BTreeMap<u32, usize> {
        let mut counts = BTreeMap::new();
        for e in &self.examples {
            *counts.entry(e.label).or_insert(0) += 1;
        }
        counts
    }

    /// Number of classes: one more than the largest label (0 for an empty dataset).
    pub fn num_labels(&self) -> usize {
        self.examples
            .iter()
            .map(|e| e.label as usize + 1)
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Dataset, DataError> {
        Dataset::parse(Path::new("t.tsv"), text)
    }

    #[test]
    fn parses_quotes_literally_and_skips_blank_lines() {
        let d = parse("sentence\tlabel\nhe said \"hi\t1\n\n'tis \"odd\" . \t0\n").unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d.examples[0].text, "he said \"hi");
        assert_eq!(
            d.examples[1],
            Example {
                text: "'tis \"odd\" . ".into(),
                label: 0
            }
        );
        assert_eq!(d.num_labels(), 2);
    }

    #[test]
    fn columns_are_found_by_name() {
        let d = parse("label\tsentence\r\n1\tgood\r\n").unwrap();
        assert_eq!(
            d.examples,
            vec![Example {
                text: "good".into(),
                label: 1
            }]
        );
    }

    #[test]
    fn errors_name_file_and_line() {
        let err = parse("sentence\tlabel\nok\t1\nbad line\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.tsv:3: expected 2 tab-separated fields, found 1"
        );
        let err = parse("sentence\tlabel\nok\t1\nx\tpositive\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.tsv:3: label \"positive\" is not a non-negative integer"
        );
        let err = parse("text\ty\n").unwrap_err();
        assert!(matches!(err, DataError::BadHeader { .. }), "{err}");
        let err = parse("").unwrap_err();
        assert!(matches!(err, DataError::BadHeader { .. }), "{err}");
    }

    #[test]
    fn invalid_utf8_and_missing_files_are_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("bad.tsv");
        fs::write(&p, b"sentence\tlabel\nok\t1\n\xff\xfe\t0\n").unwrap();
        let err = Dataset::read_tsv(&p).unwrap_err();
        assert!(matches!(err, DataError::NotUtf8 { line: 3, .. }), "{err}");
        let err = Dataset::read_tsv(tmp.path().join("none.tsv")).unwrap_err();
        assert!(err.to_string().contains("none.tsv"), "{err}");
    }
}
