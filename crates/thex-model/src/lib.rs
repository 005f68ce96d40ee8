//! BERT for thex: Hugging Face model directories, THE-X approximations, plaintext inference.

pub mod fetch;
