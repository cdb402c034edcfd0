//! `llm_annotator`: labels an unlabelled set with an LLM, the prompt holding every label's
//! definition and a few examples, the answer constrained to the label set. Prompt debugging
//! first: the same prompt on a human-labelled test file, with accuracy, per-class errors and
//! the confusion matrix reported per prompt version (the template's digest).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use relabel_engine::plugin::{
    ConfigProblem, Inputs, Metrics, NodeContext, NodeError, NodeKind, NodeOutput,
};
use relabel_engine::span::Path as CfgPath;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::data::{content_id, Dataset, LabelSpec, Split};
use crate::sources::rows::{read_rows, Columns, Format};
use relabel_llm::client::{CallError, Client};

/// The prompt used when the config names no template (templates/llm_annotate.j2).
pub const DEFAULT_TEMPLATE: &str = include_str!("../../../templates/llm_annotate.j2");

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnnotatorConfig {
    #[serde(default)]
    pub llm: Option<String>,
    /// The label spec: every label's definition and examples go into the prompt.
    pub labels: PathBuf,
    /// The texts to label (JSONL, CSV, TSV or Parquet; `text_column`, optional `id_column`).
    #[serde(default)]
    pub unlabelled: Option<PathBuf>,
    /// A human-labelled file to debug the prompt on (`label_column`); it becomes the test split.
    #[serde(default)]
    pub test: Option<PathBuf>,
    #[serde(default = "d_text")]
    pub text_column: String,
    #[serde(default = "d_label")]
    pub label_column: String,
    #[serde(default)]
    pub id_column: Option<String>,
    #[serde(default)]
    pub template: Option<PathBuf>,
    /// Examples per label in the prompt (from the label spec).
    #[serde(default = "d_examples")]
    pub examples: usize,
    /// Label at most this many unlabelled rows.
    #[serde(default)]
    pub max_rows: Option<usize>,
    /// Only debug the prompt on `test`; label nothing else.
    #[serde(default)]
    pub debug_only: bool,
    /// The files are inside the folder given as input `data` (e.g. a command's output),
    /// not next to the manifest.
    #[serde(default)]
    pub in_input: bool,
}

fn d_text() -> String {
    "text".into()
}
fn d_label() -> String {
    "label".into()
}
fn d_examples() -> usize {
    2
}

/// The chat request asking for one of `labels`.
pub fn request(
    prompt: &str,
    labels: &[&str],
    temperature: f64,
    server: relabel_llm::endpoint::Server,
) -> Value {
    let mut r = json!({
        "messages": [{"role": "user", "content": prompt}],
        "temperature": temperature,
        "max_tokens": 64,
    });
    relabel_llm::endpoint::constrain_choice(&mut r, server, "label", "label", labels);
    r
}

/// The label an answer names, if it is one of `labels` (exact, then case-insensitive).
pub fn parse_label(content: &str, labels: &[&str]) -> Option<String> {
    let named = match serde_json::from_str::<Value>(content.trim()) {
        Ok(v) => v.get("label")?.as_str()?.trim().to_string(),
        Err(_) => content.trim().trim_matches('"').trim().to_string(),
    };
    labels
        .iter()
        .find(|l| **l == named)
        .or_else(|| labels.iter().find(|l| l.eq_ignore_ascii_case(&named)))
        .map(|l| l.to_string())
}

pub struct LlmAnnotator;

struct Rows {
    ids: Vec<String>,
    texts: Vec<String>,
    labels: Vec<Option<String>>,
}

fn load(
    path: &std::path::Path,
    c: &AnnotatorConfig,
    shown: &std::path::Path,
) -> Result<Rows, String> {
    let raw = read_rows(
        path,
        Format::Auto,
        &Columns {
            text: c.text_column.clone(),
            label: c.label_column.clone(),
            id: c.id_column.clone(),
            extra: Vec::new(),
        },
    )?;
    let mut out = Rows {
        ids: Vec::new(),
        texts: Vec::new(),
        labels: Vec::new(),
    };
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for r in raw {
        if let Some(why) = &r.unreadable {
            return Err(format!("{}:{}: {why}", shown.display(), r.row));
        }
        let Some(text) = r.text else {
            return Err(format!(
                "{}:{}: no \"{}\" value",
                shown.display(),
                r.row,
                c.text_column
            ));
        };
        let id = r.id.unwrap_or_else(|| {
            let n = seen.entry(text.clone()).or_default();
            *n += 1;
            content_id(&text, *n - 1)
        });
        out.ids.push(id);
        out.texts.push(text);
        out.labels.push(r.label);
    }
    Ok(out)
}

impl NodeKind for LlmAnnotator {
    type Config = AnnotatorConfig;
    const KIND: &'static str = "llm_annotator";
    const VERSION: &'static str = "2";
    const ABOUT: &'static str = "Labels unlabelled texts with an LLM over the whole label set; debugs the prompt on a human-labelled test file first";

    fn resources(_: &AnnotatorConfig) -> Vec<&'static str> {
        vec![relabel_llm::endpoint::SECTION]
    }

    fn outputs(_: &AnnotatorConfig) -> Vec<String> {
        vec!["dataset".into(), "debug".into()]
    }

    fn files(c: &AnnotatorConfig) -> Vec<PathBuf> {
        if c.in_input {
            return c.template.iter().cloned().collect();
        }
        [
            Some(c.labels.clone()),
            c.unlabelled.clone(),
            c.test.clone(),
            c.template.clone(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    fn check(c: &AnnotatorConfig, inputs: &[String]) -> Vec<ConfigProblem> {
        let mut p = Vec::new();
        p.extend(crate::inputs::require_data_input(c.in_input, inputs));
        if c.unlabelled.is_none() && !c.debug_only {
            p.push(ConfigProblem::new(
                CfgPath::root(),
                "needs `unlabelled` (the texts to label), or `debug_only: true` with `test`",
            ));
        }
        if c.debug_only && c.test.is_none() {
            p.push(ConfigProblem::new(
                CfgPath::root().key("debug_only"),
                "debugging the prompt needs a human-labelled `test` file",
            ));
        }
        if !(1..=5).contains(&c.examples) {
            p.push(ConfigProblem::new(
                CfgPath::root().key("examples"),
                format!("must be 1 to 5; found {}", c.examples),
            ));
        }
        p
    }

    async fn run(
        &self,
        ctx: NodeContext,
        c: AnnotatorConfig,
        inputs: Inputs,
    ) -> Result<NodeOutput, NodeError> {
        let fail = NodeError::Failed;
        let at = |p: &std::path::Path| crate::inputs::config_path(&ctx, &inputs, c.in_input, p);
        let spec = LabelSpec::load(&at(&c.labels)).map_err(fail)?;
        let names: Vec<String> = spec.names().iter().map(|s| s.to_string()).collect();
        let template =
            crate::template::template_text(&ctx, c.template.as_deref(), DEFAULT_TEMPLATE)
                .map_err(fail)?;
        let (env, digest) = crate::template::strict_template(&template).map_err(fail)?;
        let labels_ctx: Vec<Value> = spec
            .labels
            .iter()
            .map(|l| json!({"name": l.name, "definition": l.definition.trim(), "examples": l.examples.iter().take(c.examples).collect::<Vec<_>>()}))
            .collect();
        let client = Arc::new(Client::for_node(&ctx).map_err(fail)?);
        let label_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        // Labels every text; None where no valid label came back.
        let annotate = |texts: Vec<String>| {
            let client = client.clone();
            let env = &env;
            let labels_ctx = &labels_ctx;
            let label_refs = &label_refs;
            async move {
                let conc = client.endpoint.max_concurrency.max(1) as usize;
                let mut got: Vec<(usize, Option<String>)> =
                    futures::stream::iter(texts.into_iter().enumerate())
                        .map(|(i, text)| {
                            let client = client.clone();
                            async move {
                                let prompt = env
                                    .get_template("prompt")
                                    .and_then(|t| {
                                        t.render(
                                    minijinja::context! {text => text.trim(), labels => labels_ctx},
                                )
                                    })
                                    .map_err(|e| CallError::Rejected(format!("template: {e:#}")))?;
                                let mut answer = None;
                                for attempt in 0..2u32 {
                                    let t = if attempt == 0 {
                                        client.endpoint.temperature
                                    } else {
                                        0.7
                                    };
                                    let mut req =
                                        request(&prompt, label_refs, t, client.endpoint.server);
                                    if attempt > 0 {
                                        req["seed"] = json!(attempt);
                                    }
                                    match client.chat(req).await {
                                        Ok(r) => {
                                            answer =
                                                parse_label(r.content().unwrap_or(""), label_refs);
                                            if answer.is_some() {
                                                break;
                                            }
                                        }
                                        Err(e) if e.is_fatal() => return Err(e),
                                        Err(_) => break,
                                    }
                                }
                                Ok::<_, CallError>((i, answer))
                            }
                        })
                        .buffer_unordered(conc)
                        .try_collect()
                        .await?;
                got.sort_by_key(|x| x.0);
                Ok::<_, CallError>(got.into_iter().map(|x| x.1).collect::<Vec<_>>())
            }
        };
        let mut m = Metrics::new();
        let mut splits = BTreeMap::new();
        let mut debug = json!({"template_digest": digest, "labels": names});
        if let Some(test) = &c.test {
            let rows = load(&at(test), &c, test).map_err(fail)?;
            let human: Vec<u32> = rows
                .labels
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    let l = l.as_deref().unwrap_or("").trim();
                    spec.index(l).ok_or_else(|| {
                        format!(
                            "{}: row {}: label \"{l}\" is not in the label spec",
                            test.display(),
                            i + 1
                        )
                    })
                })
                .collect::<Result<_, _>>()
                .map_err(fail)?;
            let answers = annotate(rows.texts.clone())
                .await
                .map_err(|e| fail(e.to_string()))?;
            let k = names.len();
            let mut confusion = vec![vec![0u64; k]; k];
            let (mut right, mut unanswered) = (0usize, 0usize);
            let mut errors: BTreeMap<String, usize> = BTreeMap::new();
            for (y, a) in human.iter().zip(&answers) {
                match a.as_deref().and_then(|a| spec.index(a)) {
                    Some(p) => {
                        confusion[*y as usize][p as usize] += 1;
                        if p == *y {
                            right += 1;
                        } else {
                            *errors.entry(names[*y as usize].clone()).or_default() += 1;
                        }
                    }
                    None => unanswered += 1,
                }
            }
            let acc = right as f64 / rows.texts.len().max(1) as f64;
            debug["test"] = json!({"rows": rows.texts.len(), "accuracy": acc, "unanswered": unanswered, "errors_per_class": errors, "confusion": confusion});
            m.insert("test_accuracy".into(), json!(acc));
            m.insert("test_unanswered".into(), json!(unanswered));
            splits.insert(
                "test".to_string(),
                Split {
                    ids: rows.ids,
                    texts: rows.texts,
                    labels: human,
                    ..Default::default()
                },
            );
        }
        if !c.debug_only {
            let path = c.unlabelled.as_ref().expect("checked");
            let mut rows = load(&at(path), &c, path).map_err(fail)?;
            if let Some(n) = c.max_rows {
                rows.ids.truncate(n);
                rows.texts.truncate(n);
            }
            let answers = annotate(rows.texts.clone())
                .await
                .map_err(|e| fail(e.to_string()))?;
            let mut split = Split::default();
            let mut per_label: BTreeMap<String, usize> = BTreeMap::new();
            let mut unlabelled = 0usize;
            for ((id, text), a) in rows.ids.into_iter().zip(rows.texts).zip(answers) {
                match a.as_deref().and_then(|a| spec.index(a)) {
                    Some(l) => {
                        *per_label.entry(names[l as usize].clone()).or_default() += 1;
                        split.ids.push(id);
                        split.texts.push(text);
                        split.labels.push(l);
                    }
                    None => unlabelled += 1,
                }
            }
            m.insert("labelled".into(), json!(split.len()));
            m.insert("left_unlabelled".into(), json!(unlabelled));
            m.insert("per_label".into(), json!(per_label));
            splits.insert("train".to_string(), split);
        }
        let ds = Dataset {
            task: Default::default(),
            labels: spec,
            splits,
            ctr: None,
        };
        let out = ctx.output_path("dataset");
        ds.write(&out)
            .map_err(|e| NodeError::io("writing the dataset", e))?;
        let dbg = ctx.output_path("debug");
        std::fs::write(&dbg, serde_json::to_vec_pretty(&debug).expect("json"))
            .map_err(|e| NodeError::io("writing debug", e))?;
        // A batch endpoint: the texts not answered yet go out as a batch, and the node waits.
        if let Some(waiting) = client.settle().await.map_err(|e| fail(e.to_string()))? {
            return Err(NodeError::Pending(waiting));
        }
        m.extend(client.metrics());
        m.insert("template_digest".into(), json!(digest));
        Ok(NodeOutput {
            outputs: [("dataset".to_string(), out), ("debug".to_string(), dbg)].into(),
            metrics: m,
        })
    }
}
