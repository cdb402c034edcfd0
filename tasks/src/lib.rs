//! relabel-tasks: the [`task::Task`] seam and its tasks ([`classification`], [`tagging`], [`ctr`], [`generation`], [`detection`]; [`rows`]
//! dispatches on a dataset's task), label specs
//! and datasets ([`data`]), predictions, flags, their on-disk formats ([`io`], [`le`]), and the
//! ML worker's typed messages ([`protocol`]). No tokio, no HTTP, no engine: the `relabel-ml`
//! worker links this crate and libtorch only.

pub mod classification;
pub mod ctr;
pub mod data;
pub mod decisions;
pub mod detection;
pub mod flags;
pub mod generation;
pub mod home;
pub mod io;
pub mod le;
pub mod predictions;
pub mod protocol;
pub mod rows;
pub mod table;
pub mod tagging;
pub mod task;
pub mod textmetrics;
