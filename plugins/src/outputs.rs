//! Writing outputs several source kinds share: a train-only dataset and its flags.

use crate::{data, flags};

/// Writes a train-only dataset and its flags as the outputs `dataset` and `flags`.
pub fn write_train_and_flags(
    ctx: &relabel_engine::plugin::NodeContext,
    labels: data::LabelSpec,
    train: data::Split,
    flags: &[flags::Flag],
) -> Result<(std::path::PathBuf, std::path::PathBuf), relabel_engine::plugin::NodeError> {
    use relabel_engine::plugin::NodeError;
    let ds = data::Dataset {
        task: Default::default(),
        labels,
        splits: [("train".to_string(), train)].into(),
        ctr: None,
    };
    let out = ctx.output_path("dataset");
    ds.write(&out)
        .map_err(|e| NodeError::io("writing the dataset", e))?;
    let fl = ctx.output_path("flags");
    flags::write(&fl, flags).map_err(|e| NodeError::io("writing flags", e))?;
    Ok((out, fl))
}
