//! Stage 3, finding suspect labels: `disagreement_filter` (prediction vs label, confident
//! learning, under a budget) and the badcase miner (`embedder`, `similarity_miner`).

pub mod disagreement_filter;
pub mod similarity_miner;
