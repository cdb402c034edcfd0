//! `binary_relabeler`: for each flagged row, an LLM (or a person) chooses between exactly two
//! labels, the row's current label and the model's candidate. The prompt shows only those two
//! labels' definitions and a few examples; no answer can ever leave the pair.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use relabel_engine::plugin::{
    ConfigProblem, Inputs, Metrics, NodeContext, NodeError, NodeKind, NodeOutput,
};
use relabel_engine::span::Path as CfgPath;
use relabel_tasks::data::relabelable;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::data::{Dataset, LabelSpec};
use crate::flags::{self, Flag};
use crate::judge::human;
use relabel_llm::client::{CallError, Client, Reply};
use relabel_llm::endpoint::{constrain_choice, Server};
pub use relabel_tasks::decisions::{
    read_decisions, write_decisions, Decision, Failure, Outcome, Source, ENDPOINT_FAILURES,
};

/// The prompt used when the config names no template (templates/binary_relabel.j2).
pub const DEFAULT_TEMPLATE: &str = include_str!("../../../templates/binary_relabel.j2");

/// The prompt used for tagging datasets when the config names no template.
pub const TAGGING_TEMPLATE: &str = include_str!("../../../templates/tag_relabel.j2");

/// The prompt used for CTR datasets when the config names no template.
pub const CTR_TEMPLATE: &str = include_str!("../../../templates/ctr_relabel.j2");

/// The prompt used for generation datasets when the config names no template.
pub const GENERATION_TEMPLATE: &str = include_str!("../../../templates/gen_relabel.j2");

/// The prompt used for detection datasets (a multimodal endpoint sees the crop as an image).
pub const DETECTION_TEMPLATE: &str = include_str!("../../../templates/det_relabel.j2");

/// The built-in template for a dataset's task.
pub fn default_template(task: relabel_tasks::task::TaskKind) -> &'static str {
    match task {
        relabel_tasks::task::TaskKind::Classification => DEFAULT_TEMPLATE,
        relabel_tasks::task::TaskKind::Tagging => TAGGING_TEMPLATE,
        relabel_tasks::task::TaskKind::Ctr => CTR_TEMPLATE,
        relabel_tasks::task::TaskKind::Generation => GENERATION_TEMPLATE,
        relabel_tasks::task::TaskKind::Detection => DETECTION_TEMPLATE,
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// An LLM endpoint decides.
    #[default]
    Llm,
    /// Export the rows for people; import their answers (`answers:`) in a later run.
    Human,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RelabelerConfig {
    /// The endpoint (a name from the manifest's `llm:` section); optional when it declares one.
    /// With none declared, the local Qwen2.5 0.5B server is started.
    #[serde(default)]
    pub llm: Option<String>,
    #[serde(default)]
    pub mode: Mode,
    /// A minijinja template (relative to the manifest); default: the built-in binary_relabel.j2.
    #[serde(default)]
    pub template: Option<PathBuf>,
    /// Examples shown per candidate label (1-5; the paper found LLMs use no more than 1-5).
    #[serde(default = "default_examples")]
    pub examples: usize,
    /// Seeds the candidate order and the choice of examples.
    #[serde(default)]
    pub seed: u64,
    /// Judge at most this many flags (the first ones: flags come ranked).
    #[serde(default)]
    pub max_rows: Option<usize>,
    /// Ask for token logprobs (to compute a confidence) when the endpoint offers them.
    #[serde(default = "yes")]
    pub logprobs: bool,
    /// Answers below this confidence count as undecided.
    #[serde(default)]
    pub min_confidence: Option<f64>,
    /// Ask every row twice, with the candidates in both orders; rows whose two answers differ
    /// (the model followed the position, not the item) stay undecided. Doubles the requests.
    /// [default: on for generation datasets, whose two long texts small models choose by
    /// position; off otherwise]
    #[serde(default)]
    pub both_orders: Option<bool>,
    /// Agreement of answers: ask every row this many times, each with its own example set
    /// (seeded `seed + i`), the candidate order alternating, and the votes after the first at
    /// `vote_temperature`; take the majority, and leave a tie (or no decided vote) undecided.
    /// 1 (the default): ask once. Multiplies the requests.
    #[serde(default = "one_vote")]
    pub votes: u32,
    /// The sampling temperature of the votes after the first (a temperature-0 LLM answers the
    /// same question the same way, so repeated votes would agree by construction).
    #[serde(default = "default_vote_temperature")]
    pub vote_temperature: f64,
    /// Extra tries (at temperature 0.7) after a malformed, refused or out-of-set answer.
    #[serde(default = "default_answer_retries")]
    pub answer_retries: u32,
    /// Human mode: the filled-in file (CSV, JSONL or a Label Studio export) to import; an
    /// empty string is none (so a manifest can leave `${params.answers}` empty until people
    /// have answered).
    #[serde(default, deserialize_with = "empty_as_none")]
    pub answers: Option<PathBuf>,
    /// Human mode: also copy the export files to this folder (relative to the manifest).
    #[serde(default)]
    pub export_to: Option<PathBuf>,
    /// LLM mode: fail the node (nothing is cached, so a rerun asks again) when more than this
    /// share of the rows got no answer because of the endpoint (429, 5xx, timeouts, transport
    /// faults, rejected requests): an outage must not become a cached run of undecided rows.
    #[serde(default = "default_max_failure_rate")]
    pub max_failure_rate: f64,
}

fn default_max_failure_rate() -> f64 {
    0.5
}

fn one_vote() -> u32 {
    1
}

fn default_vote_temperature() -> f64 {
    0.7
}

fn default_examples() -> usize {
    3
}

fn default_answer_retries() -> u32 {
    2
}

fn yes() -> bool {
    true
}

/// A candidate label as the template sees it.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    pub name: String,
    pub definition: String,
    pub examples: Vec<String>,
}

/// Renders prompts: the template, its digest, and the examples for each label.
pub struct Prompter {
    env: minijinja::Environment<'static>,
    pub digest: String,
    labels: LabelSpec,
    examples: HashMap<String, Vec<String>>,
    seed: u64,
    /// How many examples each option shows.
    per_option: usize,
    /// For tasks whose options are readings of a part of a row rather than labels (tagging),
    /// the dataset the task builds each question from.
    rows: Option<Dataset>,
    /// CTR: the users' clicks, for the question's history.
    history: relabel_tasks::rows::CtrHistory,
    /// Detection for a multimodal endpoint: each question's crop, by question key.
    pictures: Arc<HashMap<String, crate::judge::crops::Picture>>,
}

fn empty_as_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    Ok(Option::<PathBuf>::deserialize(d)?.filter(|p| !p.as_os_str().is_empty()))
}

fn mix(seed: u64, s: &str) -> u64 {
    let h = blake3::hash(format!("{seed}\u{0}{s}").as_bytes());
    u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
}

fn clip(s: &str, n: usize) -> String {
    let s = s.trim();
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}...", s.chars().take(n).collect::<String>())
    }
}

impl Prompter {
    /// `examples` per label: the label spec's own, then training rows with that label that are
    /// not flagged, chosen by `seed`.
    pub fn new(
        template: &str,
        ds: &Dataset,
        flagged: &HashSet<String>,
        examples: usize,
        seed: u64,
    ) -> Result<Prompter, String> {
        let (env, digest) = crate::template::strict_template(template)?;
        let mut by_label: HashMap<String, Vec<String>> = HashMap::new();
        for l in &ds.labels.labels {
            by_label.insert(
                l.name.clone(),
                l.examples
                    .iter()
                    .take(examples)
                    .map(|e| clip(e, 200))
                    .collect(),
            );
        }
        if let Some(train) = ds.split("train").filter(|t| t.labels.len() == t.len()) {
            let mut pool: HashMap<u32, Vec<(u64, usize)>> = HashMap::new();
            for i in 0..train.len() {
                if !flagged.contains(&train.ids[i]) {
                    pool.entry(train.labels[i])
                        .or_default()
                        .push((mix(seed, &train.ids[i]), i));
                }
            }
            for (label, mut rows) in pool {
                let name = &ds.labels.labels[label as usize].name;
                let have = by_label.entry(name.clone()).or_default();
                if have.len() >= examples {
                    continue;
                }
                rows.sort_unstable();
                for (_, i) in rows.into_iter().take(examples - have.len()) {
                    have.push(clip(&train.texts[i], 200));
                }
            }
        }
        Ok(Prompter {
            env,
            digest,
            labels: ds.labels.clone(),
            examples: by_label,
            seed,
            per_option: examples,
            rows: (ds.task != relabel_tasks::task::TaskKind::Classification).then(|| ds.clone()),
            history: relabel_tasks::rows::CtrHistory::new(ds),
            pictures: Arc::default(),
        })
    }

    /// Sends each question with its crop (detection, for a multimodal endpoint).
    pub fn set_pictures(&mut self, p: Arc<HashMap<String, crate::judge::crops::Picture>>) {
        self.pictures = p;
    }

    /// The crop question `flag` goes with, if any.
    pub fn picture(&self, flag: &Flag) -> Option<&crate::judge::crops::Picture> {
        if self.pictures.is_empty() {
            return None;
        }
        self.pictures.get(&human::question_key(flag))
    }

    /// The item and the two options in `order`, as the template shows them: for classification
    /// the flag's text and the two labels; otherwise what the task's question says.
    pub fn shown(&self, flag: &Flag, order: [&str; 2]) -> Result<(String, [Candidate; 2]), String> {
        let Some(ds) = &self.rows else {
            return Ok((
                flag.text.trim().to_string(),
                [self.candidate(order[0]), self.candidate(order[1])],
            ));
        };
        let q = relabel_tasks::rows::question_with(ds, flag, self.per_option, &self.history)?;
        let pick = |title: &str| -> Result<Candidate, String> {
            let o = q.options.iter().find(|o| o.title == title).ok_or_else(|| {
                format!(
                    "row {}: \"{title}\" is not one of the question's options",
                    flag.id
                )
            })?;
            Ok(Candidate {
                name: o.title.clone(),
                definition: o.definition.trim().to_string(),
                examples: o.examples.iter().map(|e| clip(e, 200)).collect(),
            })
        };
        Ok((q.item.clone(), [pick(order[0])?, pick(order[1])?]))
    }

    pub fn candidate(&self, name: &str) -> Candidate {
        let def = self.labels.labels.iter().find(|l| l.name == name);
        Candidate {
            name: name.to_string(),
            definition: def
                .map(|d| d.definition.trim().to_string())
                .unwrap_or_default(),
            examples: self.examples.get(name).cloned().unwrap_or_default(),
        }
    }

    /// The two candidates in this row's (seeded, random) order.
    pub fn order<'a>(&self, flag: &'a Flag) -> [&'a str; 2] {
        if mix(self.seed, &flag.id) & 1 == 0 {
            [&flag.label, &flag.candidate]
        } else {
            [&flag.candidate, &flag.label]
        }
    }

    /// The prompt for `flag`, with the candidates in `order`.
    pub fn render(&self, flag: &Flag, order: [&str; 2]) -> Result<String, String> {
        let tmpl = self.env.get_template("prompt").map_err(|e| e.to_string())?;
        let (text, candidates) = self.shown(flag, order)?;
        tmpl.render(minijinja::context! {
            text => text,
            candidates => candidates.to_vec(),
        })
        .map_err(|e| format!("template: {e:#}"))
    }
}

/// The chat request for a prompt; `attempt` > 0 asks again with some temperature. The answer
/// is constrained to the two options the way `server` understands.
pub fn request(
    prompt: &str,
    order: [&str; 2],
    temperature: f64,
    logprobs: bool,
    attempt: u32,
    server: Server,
) -> Value {
    let mut r = json!({
        "messages": [{"role": "user", "content": prompt}],
        "temperature": if attempt == 0 { temperature } else { temperature.max(0.7) },
        "max_tokens": 64,
    });
    constrain_choice(&mut r, server, "binary_choice", "label", &order);
    if attempt > 0 {
        r["seed"] = json!(attempt);
    }
    if logprobs {
        r["logprobs"] = json!(true);
        r["top_logprobs"] = json!(5);
    }
    r
}

/// The label an answer names, if it names exactly one of the two candidates; else why not.
pub fn parse_answer(content: &str, pair: [&str; 2]) -> Result<String, Failure> {
    let named = match serde_json::from_str::<Value>(content.trim()) {
        Ok(v) => match v.get("label").and_then(Value::as_str) {
            Some(s) => s.trim().to_string(),
            None => return Err(Failure::Malformed),
        },
        Err(_) => {
            let t = content.trim().trim_matches('"').trim();
            if t.is_empty() {
                return Err(Failure::Malformed);
            }
            t.to_string()
        }
    };
    for c in pair {
        if named == c {
            return Ok(c.to_string());
        }
    }
    for c in pair {
        if named.eq_ignore_ascii_case(c) {
            return Ok(c.to_string());
        }
    }
    if serde_json::from_str::<Value>(content.trim()).is_ok() {
        Err(Failure::OutOfSet)
    } else {
        Err(Failure::Malformed)
    }
}

/// The judge's confidence in `chosen` over `other`, from the logprobs of the token where the
/// two labels' spellings part: p(chosen) / (p(chosen) + p(other)), or p(chosen) alone when the
/// other's token is not among the alternatives.
pub fn confidence(reply: &Reply, content: &str, chosen: &str, other: &str) -> Option<f64> {
    let lps = reply.logprobs();
    if lps.is_empty() {
        return None;
    }
    let quoted = format!("\"{chosen}\"");
    // A JSON answer names it in quotes; a choice-constrained one (vLLM) is the bare title.
    let start = match content.rfind(&quoted) {
        Some(i) => i + 1,
        None => content.find(chosen).filter(|_| content.trim() == chosen)?,
    };
    let common = chosen
        .bytes()
        .zip(other.bytes())
        .take_while(|(a, b)| a == b)
        .count();
    let d = start + common;
    let other_rest = &other.as_bytes()[common..];
    let mut pos = 0usize;
    for t in &lps {
        let (tok, lp, alts) = (&t.token, t.logprob, &t.top);
        let end = pos + tok.len();
        if d < end || (d == end && end == content.len()) {
            // A server's numbers are not trusted: a logprob above 0 or not finite is no
            // probability (a positive one gave a "confidence" of 148).
            if !lp.is_finite() {
                return None;
            }
            let p_c = lp.min(0.0).exp();
            let shared = content.as_bytes().get(pos..d)?;
            let p_o: f64 = alts
                .iter()
                .filter(|(t, _)| {
                    let t = t.as_bytes();
                    t.len() > shared.len()
                        && t.starts_with(shared)
                        && other_rest.starts_with(&t[shared.len()..])
                })
                .filter(|(_, l)| l.is_finite())
                .map(|(_, l)| l.min(0.0).exp())
                .sum();
            let conf = if p_o > 0.0 { p_c / (p_c + p_o) } else { p_c };
            return conf.is_finite().then(|| conf.clamp(0.0, 1.0));
        }
        pos = end;
    }
    None
}

pub struct BinaryRelabeler;

impl NodeKind for BinaryRelabeler {
    type Config = RelabelerConfig;
    const KIND: &'static str = "binary_relabeler";
    const VERSION: &'static str = "1";
    const ABOUT: &'static str = "For each flagged row, an LLM or a person chooses between its current label and the model's candidate";

    fn resources(c: &RelabelerConfig) -> Vec<&'static str> {
        if c.mode == Mode::Llm {
            vec![relabel_llm::endpoint::SECTION]
        } else {
            Vec::new()
        }
    }

    fn outputs(c: &RelabelerConfig) -> Vec<String> {
        match c.mode {
            Mode::Llm => vec!["decisions".into()],
            Mode::Human => vec!["decisions".into(), "export".into()],
        }
    }

    fn on_cached(
        c: &RelabelerConfig,
        manifest_dir: &std::path::Path,
        outputs: &BTreeMap<String, PathBuf>,
    ) -> Result<(), NodeError> {
        match (c.mode, outputs.get("export")) {
            (Mode::Human, Some(export)) => human::restore_export(c, manifest_dir, export),
            _ => Ok(()),
        }
    }

    fn files(c: &RelabelerConfig) -> Vec<PathBuf> {
        c.template.iter().chain(c.answers.iter()).cloned().collect()
    }

    fn check(c: &RelabelerConfig, inputs: &[String]) -> Vec<ConfigProblem> {
        let mut p = Vec::new();
        if !(1..=5).contains(&c.examples) {
            p.push(ConfigProblem::new(
                CfgPath::root().key("examples"),
                format!(
                    "must be 1 to 5 (the paper found LLMs use no more than 1-5 examples); found {}",
                    c.examples
                ),
            ));
        }
        if c.mode == Mode::Llm && c.answers.is_some() {
            p.push(ConfigProblem::new(
                CfgPath::root().key("answers"),
                "`answers` imports people's answers: it needs `mode: human`",
            ));
        }
        if !(0.0..=1.0).contains(&c.max_failure_rate) {
            p.push(ConfigProblem::new(
                CfgPath::root().key("max_failure_rate"),
                format!("must be between 0 and 1; found {}", c.max_failure_rate),
            ));
        }
        if let Some(m) = c.min_confidence {
            if !(0.0..=1.0).contains(&m) {
                p.push(ConfigProblem::new(
                    CfgPath::root().key("min_confidence"),
                    format!("must be between 0 and 1; found {m}"),
                ));
            }
        }
        if c.votes == 0 {
            p.push(ConfigProblem::new(
                CfgPath::root().key("votes"),
                "ask at least once (1: no repeated votes)",
            ));
        } else if c.votes > 1 && c.both_orders == Some(true) {
            p.push(ConfigProblem::new(
                CfgPath::root().key("both_orders"),
                "votes already alternate the candidate order; use one of votes and both_orders",
            ));
        }
        if !(0.0..=2.0).contains(&c.vote_temperature) {
            p.push(ConfigProblem::new(
                CfgPath::root().key("vote_temperature"),
                format!("must be between 0 and 2; found {}", c.vote_temperature),
            ));
        }
        p.extend(crate::inputs::require_inputs(
            inputs,
            &["flags", "dataset"],
            "{flags: FILTER.flags, dataset: DATA.dataset}",
        ));
        p
    }

    async fn run(
        &self,
        ctx: NodeContext,
        c: RelabelerConfig,
        inputs: Inputs,
    ) -> Result<NodeOutput, NodeError> {
        let fail = NodeError::Failed;
        let ds =
            Dataset::read(&inputs["dataset"].path).map_err(|e| fail(format!("dataset: {e}")))?;
        let mut c = c;
        let generation = ds.task == relabel_tasks::task::TaskKind::Generation;
        c.both_orders = Some(c.both_orders.unwrap_or(generation && c.votes <= 1));
        let mut flags =
            flags::read(&inputs["flags"].path).map_err(|e| fail(format!("flags: {e}")))?;
        if let Some(n) = c.max_rows {
            flags.truncate(n);
        }
        if let Some((f, e)) = flags
            .iter()
            .find_map(|f| relabelable(&f.split).err().map(|e| (f, e)))
        {
            return Err(fail(format!("flag for row {} ({}): {e}", f.row, f.id)));
        }
        let template =
            crate::template::template_text(&ctx, c.template.as_deref(), default_template(ds.task))
                .map_err(fail)?;
        let flagged: HashSet<String> = flags.iter().map(|f| f.id.clone()).collect();
        let prompter = Prompter::new(&template, &ds, &flagged, c.examples, c.seed).map_err(fail)?;
        let out = ctx.output_path("decisions");
        let (decisions, mut metrics) = match c.mode {
            Mode::Human => {
                let export = ctx.output_path("export");
                if c.votes > 1 {
                    return Err(fail("votes repeat an LLM's question; a person answers each row once (mode: human)".into()));
                }
                let m = human::run(
                    &ctx,
                    &c,
                    &prompter,
                    flags,
                    &export,
                    Some((&ds, &inputs["dataset"].path)),
                )?;
                (m.0, m.1)
            }
            Mode::Llm => {
                // One prompter per vote after the first: its own example set.
                let mut voters = vec![prompter];
                for i in 1..c.votes.max(1) as u64 {
                    voters.push(
                        Prompter::new(&template, &ds, &flagged, c.examples, c.seed + i)
                            .map_err(fail)?,
                    );
                }
                if ds.task == relabel_tasks::task::TaskKind::Detection {
                    // A text-only model cannot see where a box is; guessing from coordinates
                    // would be noise presented as a judgement. A multimodal one gets the crop.
                    let (_, endpoint) =
                        relabel_llm::endpoint::Endpoint::for_node(&ctx).map_err(fail)?;
                    if !endpoint.multimodal {
                        return Err(fail(format!("a detection dispute is about pixels, and LLM endpoint `{}` is not declared multimodal: set `multimodal: true` on an endpoint whose model reads images (each question then goes with its crop), or have people judge the flags (`mode: human`, then `answers:`)", endpoint.model)));
                    }
                    let mut pictures = HashMap::new();
                    for f in &flags {
                        let p = crate::judge::crops::Picture::of(f, &ds, &inputs["dataset"].path)
                            .map_err(|e| {
                            fail(format!("flag for row {} ({}): {e}", f.row, f.id))
                        })?;
                        pictures.insert(human::question_key(f), p);
                    }
                    let pictures = Arc::new(pictures);
                    for v in &mut voters {
                        v.set_pictures(pictures.clone());
                    }
                }
                judge_all(&ctx, &c, &voters, flags).await?
            }
        };
        write_decisions(&out, &decisions).map_err(|e| NodeError::io("writing decisions", e))?;
        summarise(&decisions, &mut metrics);
        let mut outputs: BTreeMap<String, PathBuf> = [("decisions".to_string(), out)].into();
        if c.mode == Mode::Human {
            outputs.insert("export".into(), ctx.output_path("export"));
        }
        Ok(NodeOutput { outputs, metrics })
    }
}

/// Counts of outcomes, failures and first-option choices.
fn summarise(ds: &[Decision], m: &mut Metrics) {
    let mut failures: BTreeMap<String, usize> = BTreeMap::new();
    let (mut keep, mut change, mut undecided, mut first) = (0, 0, 0, 0);
    for d in ds {
        match d.outcome {
            Outcome::Keep => keep += 1,
            Outcome::Change => change += 1,
            Outcome::Undecided => undecided += 1,
        }
        if let Some(f) = d.failure {
            *failures.entry(f.as_str().to_string()).or_default() += 1;
        }
        if d.chosen.is_some() && d.chosen == d.first_option {
            first += 1;
        }
    }
    let decided = keep + change;
    m.insert("rows".into(), json!(ds.len()));
    m.insert("keep".into(), json!(keep));
    m.insert("change".into(), json!(change));
    m.insert("undecided".into(), json!(undecided));
    m.insert("failures".into(), json!(failures));
    if decided > 0 {
        m.insert("change_rate".into(), json!(change as f64 / decided as f64));
        m.insert(
            "chose_first_option".into(),
            json!(first as f64 / decided as f64),
        );
    }
}

async fn judge_all(
    ctx: &NodeContext,
    c: &RelabelerConfig,
    voters: &[Prompter],
    flags: Vec<Flag>,
) -> Result<(Vec<Decision>, Metrics), NodeError> {
    let prompter = &voters[0];
    let client = Arc::new(Client::for_node(ctx).map_err(NodeError::Failed)?);
    ctx.progress.set_length(flags.len() as u64);
    ctx.progress
        .set_message(format!("asking {}", client.describe()));
    let concurrency = client.endpoint.max_concurrency.max(1) as usize;
    // Stops at the first fatal error (unreachable endpoint, refused key); every answer received
    // so far is already in the LLM cache, so a rerun resumes where this one stopped.
    let mut results: Vec<(usize, Decision)> = futures::stream::iter(flags.into_iter().enumerate())
        .map(|(i, flag)| {
            let client = client.clone();
            async move {
                let d = if voters.len() > 1 {
                    judge_votes(&client, c, voters, flag).await?
                } else {
                    judge(&client, c, prompter, flag).await?
                };
                ctx.progress.inc(1);
                Ok::<_, CallError>((i, d))
            }
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await
        .map_err(|e| NodeError::Failed(e.to_string()))?;
    // A batch endpoint: what was not answered yet goes out as a batch, and the node waits.
    if let Some(waiting) = client
        .settle()
        .await
        .map_err(|e| NodeError::Failed(e.to_string()))?
    {
        return Err(NodeError::Pending(waiting));
    }
    results.sort_by_key(|(i, _)| *i);
    let decisions: Vec<Decision> = results.into_iter().map(|(_, d)| d).collect();
    let failed = decisions
        .iter()
        .filter(|d| d.outcome == Outcome::Undecided && d.failure.is_some_and(Failure::is_endpoint))
        .count();
    if !decisions.is_empty() && failed as f64 > c.max_failure_rate * decisions.len() as f64 {
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        for d in &decisions {
            if let Some(f) = d.failure.filter(|f| f.is_endpoint()) {
                *kinds.entry(f.as_str()).or_default() += 1;
            }
        }
        return Err(NodeError::Failed(format!(
            "{failed} of {} rows got no answer from {} ({kinds:?}), more than max_failure_rate {}; nothing is recorded, and every answer received is cached, so a rerun asks only the rest",
            decisions.len(),
            client.describe(),
            c.max_failure_rate
        )));
    }
    let mut m = client.metrics();
    m.insert(
        "local_server_started".into(),
        json!(client.server_started().await),
    );
    m.insert("template_digest".into(), json!(prompter.digest));
    if voters.len() > 1 {
        m.insert("votes".into(), json!(voters.len()));
    }
    Ok((decisions, m))
}

/// One question in one candidate order: the chosen label (one of the pair) or why not.
struct Asked {
    chosen: Option<String>,
    confidence: Option<f64>,
    answer: Option<String>,
    failure: Option<Failure>,
    at: Option<String>,
    attempts: u32,
}

/// Asks with the candidates in `order`; asks again (warmer) after a malformed, refused or
/// out-of-set answer.
async fn ask(
    client: &Client,
    c: &RelabelerConfig,
    prompter: &Prompter,
    flag: &Flag,
    order: [&str; 2],
    vote: u32,
) -> Result<Asked, CallError> {
    let prompt = prompter.render(flag, order).map_err(CallError::Rejected)?;
    let mut a = Asked {
        chosen: None,
        confidence: None,
        answer: None,
        failure: Some(Failure::Malformed),
        at: None,
        attempts: 0,
    };
    for attempt in 0..=c.answer_retries {
        a.attempts = attempt + 1;
        let temperature = if vote == 0 {
            client.endpoint.temperature
        } else {
            c.vote_temperature
        };
        let mut req = request(
            &prompt,
            order,
            temperature,
            c.logprobs,
            attempt,
            client.endpoint.server,
        );
        if let Some(p) = prompter.picture(flag) {
            // Image, then the question: the crop with both boxes drawn, and which is whose.
            req["messages"][0]["content"] = json!([
                {"type": "text", "text": p.note(order)},
                {"type": "image_url", "image_url": {"url": p.url}},
                {"type": "text", "text": prompt},
            ]);
        }
        if vote > 0 {
            // Each vote its own sample (and its own answer in the LLM cache).
            req["seed"] = json!(1000 * vote + attempt);
        }
        // Which row the question is about, for servers that use it (sent only when the
        // endpoint's `send_metadata` is set; never part of the answer's key).
        req["metadata"] = json!({"relabel_split": flag.split, "relabel_id": flag.id});
        if !flag.site.is_null() {
            // Where in the row the question is (tagging: the span), for the same servers.
            req["metadata"]["relabel_site"] = json!(flag.site.to_string());
        }
        let reply = match client.chat(req).await {
            Ok(r) => r,
            Err(e) if e.is_fatal() => return Err(e),
            Err(CallError::BadResponse(_)) => {
                a.failure = Some(Failure::BadResponse);
                continue;
            }
            Err(e) => {
                a.failure = Some(Failure::of_call(e.kind()));
                return Ok(a);
            }
        };
        a.at = Some(reply.at.clone());
        if reply
            .body
            .pointer("/choices/0/message/refusal")
            .is_some_and(|r| !r.is_null())
        {
            a.failure = Some(Failure::Refusal);
            continue;
        }
        let content = reply.content().unwrap_or("").to_string();
        a.answer = Some(clip(&content, 500));
        match parse_answer(&content, order) {
            Ok(chosen) => {
                let other = if chosen == order[0] {
                    order[1]
                } else {
                    order[0]
                };
                a.confidence = confidence(&reply, &content, &chosen, other);
                a.chosen = Some(chosen);
                a.failure = None;
                return Ok(a);
            }
            Err(kind) => a.failure = Some(kind),
        }
    }
    Ok(a)
}

/// One row: asked in its seeded order, or (with `both_orders`) in both orders, where two
/// different answers mean the model followed the position, not the item: undecided.
async fn judge(
    client: &Client,
    c: &RelabelerConfig,
    prompter: &Prompter,
    flag: Flag,
) -> Result<Decision, CallError> {
    let order = prompter.order(&flag);
    let order = [order[0].to_string(), order[1].to_string()];
    let first = ask(client, c, prompter, &flag, [&order[0], &order[1]], 0).await?;
    let second = if c.both_orders == Some(true) && first.chosen.is_some() {
        Some(ask(client, c, prompter, &flag, [&order[1], &order[0]], 0).await?)
    } else {
        None
    };
    let mut d = Decision::undecided(flag, Source::Llm, Failure::Malformed);
    d.first_option = Some(order[0].clone());
    d.endpoint = Some(client.describe());
    d.model = Some(client.endpoint.model.clone());
    d.template_digest = Some(prompter.digest.clone());
    d.attempts = first.attempts + second.as_ref().map_or(0, |s| s.attempts);
    d.at = second
        .as_ref()
        .and_then(|s| s.at.clone())
        .or(first.at.clone());
    d.answer = match &second {
        Some(s) => Some(format!(
            "{} | swapped: {}",
            first.answer.as_deref().unwrap_or(""),
            s.answer.as_deref().unwrap_or("")
        )),
        None => first.answer.clone(),
    };
    d.failure = first.failure;
    let Some(chosen) = first.chosen.clone() else {
        return Ok(d);
    };
    d.confidence = first.confidence;
    if let Some(s) = &second {
        match &s.chosen {
            Some(c2) if *c2 == chosen => {
                d.confidence = match (first.confidence, s.confidence) {
                    (Some(a), Some(b)) => Some((a + b) / 2.0),
                    (a, b) => a.or(b),
                };
            }
            Some(_) => {
                d.failure = Some(Failure::Inconsistent);
                return Ok(d);
            }
            None => {
                d.failure = s.failure;
                return Ok(d);
            }
        }
    }
    d.decide(&chosen);
    if let (Some(min), Some(conf)) = (c.min_confidence, d.confidence) {
        if conf < min {
            d.outcome = Outcome::Undecided;
            d.failure = Some(Failure::LowConfidence);
        }
    }
    Ok(d)
}

/// One row asked `voters.len()` times: vote i with voter i's examples, the candidate order
/// alternating from the row's seeded one; the majority of the decided votes wins, and a tie (or
/// no decided vote) leaves the row undecided. Confidence: the winner's share of all votes.
async fn judge_votes(
    client: &Client,
    c: &RelabelerConfig,
    voters: &[Prompter],
    flag: Flag,
) -> Result<Decision, CallError> {
    let order = voters[0].order(&flag);
    let order = [order[0].to_string(), order[1].to_string()];
    let mut asked = Vec::with_capacity(voters.len());
    for (i, voter) in voters.iter().enumerate() {
        let o = if i % 2 == 0 {
            [order[0].as_str(), order[1].as_str()]
        } else {
            [order[1].as_str(), order[0].as_str()]
        };
        asked.push(ask(client, c, voter, &flag, o, i as u32).await?);
    }
    let mut d = Decision::undecided(flag, Source::Llm, Failure::Malformed);
    d.first_option = Some(order[0].clone());
    d.endpoint = Some(client.describe());
    d.model = Some(client.endpoint.model.clone());
    d.template_digest = Some(voters[0].digest.clone());
    d.attempts = asked.iter().map(|a| a.attempts).sum();
    d.at = asked.iter().rev().find_map(|a| a.at.clone());
    d.ballots = asked.iter().map(|a| a.chosen.clone()).collect();
    d.answer = Some(
        asked
            .iter()
            .map(|a| a.answer.as_deref().unwrap_or("-"))
            .collect::<Vec<_>>()
            .join(" | "),
    );
    let tally = |name: &str| {
        asked
            .iter()
            .filter(|a| a.chosen.as_deref() == Some(name))
            .count()
    };
    let (a, b) = (tally(&order[0]), tally(&order[1]));
    if a + b == 0 {
        d.failure = asked.iter().find_map(|a| a.failure);
        return Ok(d);
    }
    if a == b {
        d.failure = Some(Failure::Inconsistent);
        return Ok(d);
    }
    let (winner, n) = if a > b {
        (&order[0], a)
    } else {
        (&order[1], b)
    };
    d.confidence = Some(n as f64 / voters.len() as f64);
    d.decide(winner);
    if let (Some(min), Some(conf)) = (c.min_confidence, d.confidence) {
        if conf < min {
            d.outcome = Outcome::Undecided;
            d.failure = Some(Failure::LowConfidence);
        }
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{LabelDef, Split};

    const NAMES: [&str; 6] = [
        "card_lost",
        "top_up",
        "refund",
        "exchange_rate",
        "pin_blocked",
        "transfer_failed",
    ];

    fn dataset() -> Dataset {
        let labels = LabelSpec::new(
            NAMES
                .iter()
                .map(|n| LabelDef {
                    name: n.to_string(),
                    definition: format!("Definition of {n}: the customer talks about {n}."),
                    examples: vec![],
                })
                .collect(),
        );
        let mut train = Split::default();
        for i in 0..60 {
            train.ids.push(format!("t{i}"));
            train
                .texts
                .push(format!("training text {i} about {}", NAMES[i % 6]));
            train.labels.push((i % 6) as u32);
        }
        Dataset {
            task: Default::default(),
            labels,
            splits: [("train".to_string(), train)].into(),
            ctr: None,
        }
    }

    fn flag(id: &str, label: &str, candidate: &str) -> Flag {
        Flag {
            split: "train".into(),
            row: 0,
            id: id.into(),
            text: "where is my money, the transfer to my friend did not arrive".into(),
            label: label.into(),
            candidate: candidate.into(),
            label_prob: 0.2,
            candidate_prob: 0.7,
            score: 0.8,
            rule: "pred_neq_label".into(),
            site: serde_json::Value::Null,
        }
    }

    #[test]
    fn prompts_show_only_the_two_candidates() {
        let ds = dataset();
        let flags = [
            flag("t0", "card_lost", "transfer_failed"),
            flag("t7", "top_up", "refund"),
        ];
        let flagged: HashSet<String> = flags.iter().map(|f| f.id.clone()).collect();
        let p = Prompter::new(DEFAULT_TEMPLATE, &ds, &flagged, 3, 7).unwrap();
        let mut orders = HashSet::new();
        for f in &flags {
            let order = p.order(f);
            orders.insert(order[0] == f.label);
            let prompt = p.render(f, order).unwrap();
            for n in NAMES {
                let shown = prompt.contains(n);
                let allowed = n == f.label || n == f.candidate;
                assert_eq!(
                    shown, allowed,
                    "label {n} in the prompt for {}:\n{prompt}",
                    f.id
                );
                assert_eq!(prompt.contains(&format!("Definition of {n}")), allowed);
            }
            // Examples never include a flagged row, and there are 3 per candidate.
            assert!(!prompt.contains("training text 0 "), "{prompt}");
            assert_eq!(
                prompt.matches("e.g. \"training text").count(),
                6,
                "{prompt}"
            );
            insta::assert_snapshot!(format!("prompt_{}", f.id), prompt);
        }
        // The seeded order differs between rows here: both orders occur.
        assert_eq!(orders.len(), 2);
    }

    #[test]
    fn a_ctr_prompt_shows_the_users_profile_other_clicks_and_the_item_only() {
        use relabel_tasks::ctr::{default_spec, row_text, CtrFields};
        let fields = CtrFields {
            user: vec!["user_id".into(), "age".into()],
            item: vec!["item_id".into(), "title".into(), "genres".into()],
            ..Default::default()
        };
        let names = fields.fields();
        let mut train = Split::default();
        for (id, user, item, title, click) in [
            ("a", "7", "1", "Toy Story", 1),
            ("b", "7", "2", "Heat", 0),
            ("c", "7", "3", "Babe", 1),
            ("d", "8", "4", "Alien", 1),
        ] {
            train.ids.push(id.into());
            train
                .texts
                .push(row_text(&names, &[user, "31", item, title, "Comedy"]));
            train.labels.push(click);
        }
        let ds = Dataset {
            task: relabel_tasks::task::TaskKind::Ctr,
            labels: default_spec(),
            splits: [("train".to_string(), train.clone())].into(),
            ctr: Some(fields),
        };
        let mut f = flag("c", "click", "no_click");
        f.row = 2;
        f.text = train.texts[2].clone();
        let p = Prompter::new(CTR_TEMPLATE, &ds, &HashSet::new(), 2, 0).unwrap();
        let prompt = p.render(&f, p.order(&f)).unwrap();
        assert!(prompt.contains("User: age: 31"), "{prompt}");
        // The user's other click, not their non-click, nor another user's click, nor itself.
        assert!(prompt.contains("- title: Toy Story"), "{prompt}");
        assert!(
            !prompt.contains("Heat") && !prompt.contains("Alien"),
            "{prompt}"
        );
        assert!(
            prompt.contains("Candidate item: title: Babe, genres: Comedy"),
            "{prompt}"
        );
        assert!(prompt.contains("genuine interest") && prompt.contains("a false positive"));
        assert!(
            prompt.contains("\nclick (") && prompt.contains("\nno_click ("),
            "{prompt}"
        );
    }

    #[test]
    fn a_strict_template_fails_on_unknown_variables() {
        let ds = dataset();
        let p = Prompter::new(
            "{{ text }} {{ not_a_variable }}",
            &ds,
            &HashSet::new(),
            1,
            0,
        )
        .unwrap();
        let f = flag("t1", "top_up", "refund");
        assert!(p.render(&f, p.order(&f)).is_err());
    }

    #[test]
    fn answers_outside_the_pair_are_never_accepted() {
        let pair = ["top_up", "refund"];
        assert_eq!(
            parse_answer(r#"{"label": "refund"}"#, pair),
            Ok("refund".into())
        );
        assert_eq!(
            parse_answer(r#"{"label":"TOP_UP"}"#, pair),
            Ok("top_up".into())
        );
        assert_eq!(parse_answer("refund", pair), Ok("refund".into()));
        assert_eq!(
            parse_answer(r#"{"label": "card_lost"}"#, pair),
            Err(Failure::OutOfSet)
        );
        assert_eq!(
            parse_answer(r#"{"answer": "refund"}"#, pair),
            Err(Failure::Malformed)
        );
        assert_eq!(
            parse_answer("I would say refund or top_up", pair),
            Err(Failure::Malformed)
        );
        assert_eq!(parse_answer("", pair), Err(Failure::Malformed));
        let mut d = Decision::undecided(
            flag("t1", "top_up", "refund"),
            Source::Llm,
            Failure::Malformed,
        );
        d.decide("card_lost");
        assert_eq!((d.outcome, d.chosen.clone()), (Outcome::Undecided, None));
        d.decide("refund");
        assert_eq!(d.outcome, Outcome::Change);
        d.decide("top_up");
        assert_eq!(d.outcome, Outcome::Keep);
    }

    #[test]
    fn confidence_compares_the_two_labels_where_their_spellings_part() {
        // "card_lost" vs "card_arrival": they part after "card_".
        let content = r#"{"label": "card_lost"}"#;
        let body = json!({"choices": [{"message": {"content": content}, "logprobs": {"content": [
            {"token": "{\"label\": \"", "logprob": 0.0, "top_logprobs": []},
            {"token": "card", "logprob": 0.0, "top_logprobs": []},
            {"token": "_l", "logprob": (0.6f64).ln(), "top_logprobs": [
                {"token": "_l", "logprob": (0.6f64).ln()},
                {"token": "_a", "logprob": (0.2f64).ln()},
                {"token": "_x", "logprob": (0.1f64).ln()}]},
            {"token": "ost\"}", "logprob": 0.0, "top_logprobs": []}]}}]});
        let reply = Reply {
            body,
            at: String::new(),
            cached: false,
        };
        let c = confidence(&reply, content, "card_lost", "card_arrival").unwrap();
        assert!((c - 0.75).abs() < 1e-9, "{c}");
        // Without logprobs there is no confidence.
        let bare = Reply {
            body: json!({"choices": [{"message": {"content": content}}]}),
            at: String::new(),
            cached: false,
        };
        assert_eq!(
            confidence(&bare, content, "card_lost", "card_arrival"),
            None
        );
    }

    #[test]
    fn confidence_stays_a_probability_whatever_the_server_sends() {
        let content = r#"{"label": "card_lost"}"#;
        let reply = |lp: f64| Reply {
            body: json!({"choices": [{"message": {"content": content}, "logprobs": {"content": [
                {"token": "{\"label\": \"card_l", "logprob": lp, "top_logprobs": []},
                {"token": "ost\"}", "logprob": 0.0, "top_logprobs": []}]}}]}),
            at: String::new(),
            cached: false,
        };
        // A positive logprob (5.0 gave 148.4 before) is at most certainty.
        assert_eq!(
            confidence(&reply(5.0), content, "card_lost", "card_arrival"),
            Some(1.0)
        );
        let c = confidence(&reply(-0.1), content, "card_lost", "card_arrival").unwrap();
        assert!((0.0..=1.0).contains(&c), "{c}");
    }

    #[test]
    fn human_answers_must_be_one_of_the_rows_two_candidates() {
        let dir = tempfile::tempdir().unwrap();
        let flags = vec![
            flag("a", "top_up", "refund"),
            flag("b", "card_lost", "pin_blocked"),
            flag("c", "refund", "exchange_rate"),
        ];
        let ds = dataset();
        let p = Prompter::new(DEFAULT_TEMPLATE, &ds, &HashSet::new(), 2, 0).unwrap();
        // A good file: one change, one keep, one skipped.
        let good = dir.path().join("good.csv");
        std::fs::write(&good, "id,answer\na,refund\nb,card_lost\nc,\n").unwrap();
        let given = crate::judge::human::read_answers(&good, &good).unwrap();
        let ds_ =
            crate::judge::human::apply_answers(&good, flags.clone(), given, &p.digest).unwrap();
        let outcomes: Vec<Outcome> = ds_.iter().map(|d| d.outcome).collect();
        assert_eq!(
            outcomes,
            [Outcome::Change, Outcome::Keep, Outcome::Undecided]
        );
        assert!(ds_.iter().all(|d| d.source == Source::Human));
        // A bad file: every problem with its line number; nothing imported.
        let bad = dir.path().join("bad.csv");
        std::fs::write(
            &bad,
            "id,answer\na,card_lost\nzz,refund\nb,pin_blocked\nb,card_lost\n",
        )
        .unwrap();
        let given = crate::judge::human::read_answers(&bad, &bad).unwrap();
        let err =
            crate::judge::human::apply_answers(&bad, flags.clone(), given, &p.digest).unwrap_err();
        assert!(
            err.contains(
                "bad.csv:2: row \"a\": answer \"card_lost\" is not one of its two candidates"
            ),
            "{err}"
        );
        assert!(err.contains("bad.csv:3: row id \"zz\""), "{err}");
        assert!(
            err.contains("bad.csv:5: row \"b\" is answered twice (first at line 4)"),
            "{err}"
        );
        // Label Studio's export format is read too.
        let ls = dir.path().join("export.json");
        std::fs::write(
            &ls,
            json!([{"data": {"id": "a"}, "annotations": [{"result": [{"value": {"choices": ["refund"]}}]}]}]).to_string(),
        )
        .unwrap();
        let given = crate::judge::human::read_answers(&ls, &ls).unwrap();
        let ds_ = crate::judge::human::apply_answers(&ls, flags, given, &p.digest).unwrap();
        assert_eq!(ds_[0].outcome, Outcome::Change);
        assert_eq!(ds_[1].failure, Some(Failure::AwaitingHuman));
    }
}
