//! BERT for thex: Hugging Face model directories, THE-X approximations, plaintext inference.
//!
//! One module definition ([`ThexModel`]) serves loading, reference inference and training:
//! it is built from named tensors through a candle `VarBuilder`, either as plain tensors
//! ([`ParamMode::Inference`]) or as `Var`s in a `VarMap` ([`ParamMode::Train`]). The THE-X
//! approximations are configuration ([`ThexConfig`], saved as `thex.json`), and
//! [`ThexModel::forward_traced`] exposes every intermediate value for comparison with the
//! encrypted engine.
//!
//! Converting a base checkpoint into a trainable THE-X model, one training step, and saving:
//!
//! ```no_run
//! use candle_nn::{Optimizer, VarMap};
//! use thex_model::*;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let base = std::path::Path::new("/path/to/minilm-l6");
//! let head = HeadConfig { pooling: Pooling::Mean, labels: vec!["neg".into(), "pos".into()] };
//! let varmap = VarMap::new();
//! let opts = LoadOptions {
//!     layers: Some(2),
//!     thex: Some(ThexConfig::full_thex(Some(head))),
//!     mode: ParamMode::Train(TrainParams {
//!         varmap: varmap.clone(),
//!         frozen_prefixes: vec!["embeddings.".into()],
//!         init_missing: true, // new classifier and reciprocal network
//!         init_seed: Some(17), // reproducible new parameters
//!     }),
//!     ..Default::default()
//! };
//! let m = load_model_dir(base, &opts)?;
//! let mut opt = candle_nn::AdamW::new(varmap.all_vars(), Default::default())?;
//! let batch = Batch::new(&[m.tokenize("a fine film")?], 0, m.model.device())?;
//! let labels = candle_core::Tensor::new(&[1u32], m.model.device())?;
//! let logits = m.model.forward(&batch, true)?.logits.expect("head");
//! opt.backward_step(&candle_nn::loss::cross_entropy(&logits, &labels)?)?;
//! save_model_dir(&m.model, base, std::path::Path::new("out/sst2-thex"), &SaveOptions::default())?;
//! # Ok(())
//! # }
//! ```

pub mod approx;
pub mod batch;
pub mod bert;
pub mod config;
pub mod error;
pub mod fetch;
pub mod layers;
pub mod model_dir;
pub mod pipeline;
pub mod synthetic;
pub mod tokenizer;
pub mod weights;

pub use approx::{HeadConfig, LayerNormKind, Pooling, SoftmaxConfig, ThexConfig, ThexSoftmax};
pub use batch::{Batch, length_buckets};
pub use bert::{LayerTrace, ModelOutput, ThexModel, Trace, layer_norm_prefixes};
pub use config::{Activation, BertConfig};
pub use error::{ModelError, Result};
pub use layers::{ReciprocalMlp, ThexSoftmaxTrace, exact_softmax, fit_affine, thex_softmax};
pub use model_dir::{LoadOptions, LoadedModel, SaveOptions, load_model_dir, save_model_dir};
pub use pipeline::{EncodeOutput, Prediction, encode, predict};
pub use tokenizer::{BertTokenizer, lowercase_setting};
pub use weights::{ParamMode, TrainParams, read_safetensors, write_safetensors};
