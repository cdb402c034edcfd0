//! Stage 5, applying: `apply_labels` writes the next dataset version from the decisions (or
//! flips or drops flagged rows, the judge-free baselines), with an audit trail.

pub mod apply_labels;
