//! The `self_predictor` node kind: class probabilities for every train, dev and test row.

use relabel_engine::plugin::{ConfigProblem, Inputs, NodeContext, NodeError, NodeKind, NodeOutput};
use relabel_engine::span::Path;

pub use relabel_tasks::protocol::SelfPredictorConfig;

/// The `self_predictor` node kind.
pub struct SelfPredictor;

impl NodeKind for SelfPredictor {
    type Config = SelfPredictorConfig;
    const KIND: &'static str = "self_predictor";
    const VERSION: &'static str = "2";
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
        p.extend(crate::inputs::require_inputs(
            inputs,
            &["model", "dataset"],
            "{model: train.model, dataset: data.dataset}",
        ));
        p
    }

    /// With `kfold: K` under an executor, the K fold trainings run as K tasks of a job array.
    fn shards(c: &SelfPredictorConfig) -> usize {
        c.kfold.unwrap_or(0)
    }

    async fn run_shard(
        &self,
        ctx: NodeContext,
        c: SelfPredictorConfig,
        inputs: Inputs,
        shard: usize,
    ) -> Result<NodeOutput, NodeError> {
        let out = ctx.output_path("shard");
        let mut metrics = predict(&ctx, c, &inputs, &out, Some(shard), Vec::new()).await?;
        metrics.insert("fold".into(), shard.into());
        Ok(NodeOutput {
            outputs: [("shard".to_string(), out)].into(),
            metrics,
        })
    }

    async fn run(
        &self,
        ctx: NodeContext,
        c: SelfPredictorConfig,
        inputs: Inputs,
    ) -> Result<NodeOutput, NodeError> {
        let out = ctx.output_path("predictions");
        let pieces = ctx.shards.clone();
        let metrics = predict(&ctx, c, &inputs, &out, None, pieces).await?;
        Ok(NodeOutput {
            outputs: [("predictions".to_string(), out)].into(),
            metrics,
        })
    }
}

/// The worker's `predict` task: everything, one k-fold piece (`fold`), or everything with the
/// pieces computed elsewhere (`folds`).
async fn predict(
    ctx: &NodeContext,
    config: SelfPredictorConfig,
    inputs: &Inputs,
    out: &std::path::Path,
    fold: Option<usize>,
    folds: Vec<std::path::PathBuf>,
) -> Result<relabel_engine::plugin::Metrics, NodeError> {
    let request = relabel_tasks::protocol::PredictRequest {
        config,
        model: inputs["model"].path.clone(),
        dataset: inputs["dataset"].path.clone(),
        out: out.to_path_buf(),
        work: ctx.work_dir.clone(),
        fold,
        folds,
    };
    crate::model::worker::run_task(ctx, "predict", &request).await
}
