//! The integration tests, as one test binary: one module per suite (`cargo test --test it
//! SUITE::` runs one). One binary instead of one per suite links the crate and its
//! dependencies once instead of 38 times and lets the harness run the suites' tests side
//! by side. Two suites stay binaries of their own: `tests/bench_aa.rs` times models and must
//! not share the cores with other tests; `tests/registry_removal.rs` closes the process's
//! temporary-path registry for good.

#[path = "../common/mod.rs"]
mod common;
#[path = "../../fixtures/graphs.rs"]
mod graphs;
#[allow(dead_code)]
#[path = "../../fixtures/resnet50.rs"]
mod resnet50;

#[path = "../../fixtures/inception_v1.rs"]
mod inception_v1;

mod activation_stats;
mod allocate;
mod cli;
mod compensate_cli;
mod compress_cli;
mod cost;
mod data;
mod drop_blocks;
mod eval;
mod examples;
mod fuzz_mutations;
mod golden;
mod golden_prune;
mod hostile;
mod hostile_ir;
mod hostile_signals;
mod importance;
mod latency_table;
mod masked_cost;
mod methods_cli;
mod onnx_conformance;
mod opset9;
mod plan_file;
mod prune_cli;
mod prune_models;
mod prune_property;
mod prune_ratio;
mod prune_target;
mod remove_dead;
mod report;
mod roundtrip;
mod shapes_vs_ort;
mod simplify;
mod train_cli;
mod train_conv_transpose;
mod train_step;
mod vjp_elementwise;
mod vjp_linear;
mod vjp_more;
mod whole_groups;
