//! One module per top-level subcommand; each only parses arguments and formats output.

pub mod attack;
pub mod bench;
pub mod bench_e2e;
pub mod demo;
pub mod infer;
pub mod infer_plain;
pub mod model;
pub mod serve;
pub mod train;
