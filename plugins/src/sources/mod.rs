//! Stage 1, the initial dataset: read from files (`dataset`), aggregated from annotators' votes
//! (`votes`), labelled by an LLM from a prompt (`llm_annotator`), or derived from behaviour logs
//! (`behavior_log`). Reading source files (JSON lines, CSV/TSV, Parquet) is in [`rows`]; box annotations
//! (COCO, VOC, CSV) in [`boxes`].

pub mod behavior_log;
pub mod boxes;
pub mod dataset;
pub mod llm_annotator;
pub mod rows;
pub mod tagged;
pub mod votes;
