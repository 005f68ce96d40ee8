//! Training side of thex: GLUE-style datasets, fine-tuning and THE-X conversion stages.

pub mod data;
