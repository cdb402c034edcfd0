//! The `trainer` node kind: trains a text classifier in the ML worker, early-stopped on dev loss.

use relabel_engine::plugin::{ConfigProblem, Inputs, NodeContext, NodeError, NodeKind, NodeOutput};
use relabel_engine::span::Path;

pub use relabel_tasks::protocol::{
    checkpoint_path, default_encoder_dir, Device, EncoderConfig, FastTextConfig, ModelKind,
    ModelMeta, TrainerConfig,
};

/// Checks of a trainer config beyond its types.
pub fn problems(c: &TrainerConfig) -> Vec<ConfigProblem> {
    let r = Path::root();
    let mut p = Vec::new();
    if c.batch_size == 0 {
        p.push(ConfigProblem::new(
            r.key("batch_size"),
            "must be at least 1",
        ));
    }
    if c.epochs == 0 {
        p.push(ConfigProblem::new(r.key("epochs"), "must be at least 1"));
    }
    if let Some(lr) = c.learning_rate {
        if !(lr > 0.0 && lr.is_finite()) {
            p.push(ConfigProblem::new(
                r.key("learning_rate"),
                "must be a positive number",
            ));
        }
    }
    if c.fasttext.dim < 1 || c.fasttext.buckets < 1 {
        p.push(ConfigProblem::new(
            r.key("fasttext"),
            "dim and buckets must be at least 1",
        ));
    }
    if !(1..=2).contains(&c.fasttext.word_ngrams) {
        p.push(ConfigProblem::new(
            r.key("fasttext").key("word_ngrams"),
            "must be 1 or 2",
        ));
    }
    p
}

/// The `trainer` node kind.
pub struct Trainer;

impl NodeKind for Trainer {
    type Config = TrainerConfig;
    const KIND: &'static str = "trainer";
    const VERSION: &'static str = "1";
    const ABOUT: &'static str = "Trains a text classifier (tch) on a dataset's train split; keeps the checkpoint with the lowest dev loss.";

    fn outputs(_: &TrainerConfig) -> Vec<String> {
        vec!["model".into()]
    }

    fn check(c: &TrainerConfig, inputs: &[String]) -> Vec<ConfigProblem> {
        let mut p = problems(c);
        if inputs.len() != 1 {
            p.push(ConfigProblem::new(
                Path::root(),
                format!(
                    "a trainer takes exactly one input, a dataset; it has {}",
                    inputs.len()
                ),
            ));
        }
        p
    }

    async fn run(
        &self,
        ctx: NodeContext,
        c: TrainerConfig,
        inputs: Inputs,
    ) -> Result<NodeOutput, NodeError> {
        let dataset = inputs
            .values()
            .next()
            .ok_or_else(|| NodeError::Failed("no dataset input".into()))?;
        let out = ctx.output_path("model");
        let request = relabel_tasks::protocol::TrainRequest {
            config: c,
            dataset: dataset.path.clone(),
            out: out.clone(),
        };
        let metrics = crate::model::worker::run_task(&ctx, "train", &request).await?;
        Ok(NodeOutput {
            outputs: [("model".to_string(), out)].into(),
            metrics,
        })
    }
}
