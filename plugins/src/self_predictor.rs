//! The `self_predictor` node kind: class probabilities for every train, dev and test row.

use relabel_engine::plugin::{ConfigProblem, Inputs, NodeContext, NodeError, NodeKind, NodeOutput};
use relabel_engine::span::Path;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Config of a `self_predictor` node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SelfPredictorConfig {
    /// Out-of-sample mode: train K models, each on K-1 folds of train (same settings as the
    /// input model, early-stopped on dev), and predict each train row with the model that did
    /// not see it. Without it (the paper's way), train rows are predicted in-sample by the
    /// input model. Dev and test rows are always predicted by the input model.
    #[serde(default)]
    pub kfold: Option<usize>,
    /// Seed of the fold assignment.
    #[serde(default)]
    pub seed: u64,
}

/// The `self_predictor` node kind.
pub struct SelfPredictor;

impl NodeKind for SelfPredictor {
    type Config = SelfPredictorConfig;
    const KIND: &'static str = "self_predictor";
    const VERSION: &'static str = "1";
    const ABOUT: &'static str = "Predicts every train, dev and test row with a model (in-sample, or out-of-sample by k-fold); writes probabilities, argmax and loss.";

    fn outputs(_: &SelfPredictorConfig) -> Vec<String> {
        vec!["predictions".into()]
    }

    fn check(c: &SelfPredictorConfig, inputs: &[String]) -> Vec<ConfigProblem> {
        let mut p = Vec::new();
        if let Some(k) = c.kfold {
            if !(2..=20).contains(&k) {
                p.push(ConfigProblem::new(
                    Path::root().key("kfold"),
                    "must be from 2 to 20",
                ));
            }
        }
        p.extend(crate::require_inputs(
            inputs,
            &["model", "dataset"],
            "{model: train.model, dataset: data.dataset}",
        ));
        p
    }

    async fn run(
        &self,
        ctx: NodeContext,
        c: SelfPredictorConfig,
        inputs: Inputs,
    ) -> Result<NodeOutput, NodeError> {
        let out = ctx.output_path("predictions");
        let request = json!({
            "config": c,
            "model": inputs["model"].path,
            "dataset": inputs["dataset"].path,
            "out": out,
            "work": ctx.work_dir,
        });
        let metrics = crate::worker::run_task(&ctx, "predict", &request).await?;
        Ok(NodeOutput {
            outputs: [("predictions".to_string(), out)].into(),
            metrics,
        })
    }
}
