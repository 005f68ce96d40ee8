//! BERT for thex: Hugging Face model directories, THE-X approximations, plaintext inference.
//!
//! One module definition ([`ThexModel`]) serves loading, reference inference and training:
//! it is built from named tensors through a candle `VarBuilder`, either as plain tensors
//! ([`ParamMode::Inference`]) or as `Var`s in a `VarMap` ([`ParamMode::Train`]). The THE-X
//! approximations are configuration ([`ThexConfig`], saved as `thex.json`), and
//! [`ThexModel::forward_traced`] exposes every intermediate value for comparison with the
//! encrypted engine.

pub mod approx;
pub mod batch;
pub mod bert;
pub mod config;
pub mod error;
pub mod fetch;
pub mod layers;
pub mod model_dir;
pub mod pipeline;
pub mod tokenizer;
pub mod weights;

pub use approx::{HeadConfig, LayerNormKind, Pooling, SoftmaxConfig, ThexConfig, ThexSoftmax};
pub use batch::{Batch, length_buckets};
pub use bert::{LayerTrace, ModelOutput, ThexModel, Trace};
pub use config::{Activation, BertConfig};
pub use error::{ModelError, Result};
pub use layers::{ReciprocalMlp, ThexSoftmaxTrace, exact_softmax, fit_affine, thex_softmax};
pub use model_dir::{LoadOptions, LoadedModel, SaveOptions, load_model_dir, save_model_dir};
pub use pipeline::{EncodeOutput, Prediction, encode, predict};
pub use tokenizer::BertTokenizer;
pub use weights::{ParamMode, TrainParams, read_safetensors, write_safetensors};
