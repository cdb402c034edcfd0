//! Stage 6, scoring: `evaluator` scores predictions on the fixed test split (and others) and
//! lists the badcases the miner starts from.

pub mod evaluator;
