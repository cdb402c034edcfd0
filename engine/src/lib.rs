//! relabel-engine: manifests -> a checked DAG -> cached, concurrent, resumable runs.
//!
//! Stages: [`manifest`] (raw YAML, shapes, substitution) -> [`resolve`] (kinds, configs, inputs,
//! loops) -> [`graph`] (the DAG) -> [`runner`] (execution over the [`cache`]). The engine knows
//! nothing about labels, models or LLMs: node kinds come in through a [`plugin::Registry`].

pub mod cache;
pub mod child;
pub mod diag;
pub mod executor;
pub mod graph;
pub mod lock;
pub mod manifest;
pub mod plugin;
pub mod progress;
pub mod remote;
pub mod report;
pub mod resolve;
pub mod runner;
pub mod schema;
pub mod span;
pub mod view;

pub use diag::{Diagnostic, Diagnostics};
pub use plugin::{NodeContext, NodeError, NodeKind, NodeOutput, Plugin, Registry};
pub use resolve::{load_pipeline, Pipeline};
