//! `behavior_log`: labelled rows from user-behaviour events (key, item, action, time) by
//! configured rules: e.g. an order is a strong positive, a click a positive, an impression with
//! no click or order within a window a negative. Exact duplicate events count once; keys whose
//! events disagree are resolved by the strongest rule, dropped, or flagged with both labels as
//! candidates for the binary relabeler. With `ctr:` the rows are CTR rows (features by role, a
//! click or not), so a log of impressions and clicks feeds the CTR task directly.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use relabel_engine::plugin::{
    ConfigProblem, Inputs, Metrics, NodeContext, NodeError, NodeKind, NodeOutput,
};
use relabel_engine::span::Path as CfgPath;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::data::{LabelSpec, Split};
use crate::flags::Flag;

/// One rule: events with `action` give `label` with `strength` (higher wins conflicts).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionRule {
    pub action: String,
    pub label: String,
    #[serde(default = "one")]
    pub strength: u32,
    /// The rule holds only if none of these actions follows for the same key within `within`
    /// seconds (e.g. an impression without a click).
    #[serde(default)]
    pub unless_followed_by: Vec<String>,
    #[serde(default)]
    pub within: Option<f64>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnConflict {
    /// The label of the strongest event (a tie between labels is flagged).
    #[default]
    Strongest,
    /// Leave the key out.
    Drop,
    /// Keep the strongest label and flag the key with both labels as candidates.
    Flag,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BehaviorConfig {
    /// The events: CSV or JSONL (relative to the manifest, or to the input folder `data` with
    /// `in_input: true`).
    pub file: PathBuf,
    #[serde(default)]
    pub in_input: bool,
    /// Columns that identify a labelled row (e.g. `[query, item]`); with `ctr:` the default is
    /// the user's and the item's key fields.
    #[serde(default)]
    pub key_columns: Vec<String>,
    /// Columns joined (with " | ") into the row's text; default: the key columns.
    #[serde(default)]
    pub text_columns: Vec<String>,
    #[serde(default = "d_action")]
    pub action_column: String,
    /// Seconds (a number); needed by rules with `within`.
    #[serde(default = "d_time")]
    pub time_column: String,
    pub rules: Vec<ActionRule>,
    #[serde(default)]
    pub on_conflict: OnConflict,
    /// A column naming each event's split (`train`, `dev`, `test`, `badcase`); a key takes its
    /// first event's. Without it every row is train.
    #[serde(default)]
    pub split_column: Option<String>,
    /// CTR rows (`task: ctr`): the feature columns by role, as in `dataset`'s `ctr:`. A key's row
    /// takes the features of its first event; the rules' labels are clicks (`click`/`no_click`,
    /// 1/0, true/false).
    #[serde(default)]
    pub ctr: Option<relabel_tasks::ctr::CtrFields>,
}

impl BehaviorConfig {
    /// The key columns, defaulted for CTR rows.
    fn keys(&self) -> Vec<String> {
        match (&self.ctr, self.key_columns.is_empty()) {
            (Some(f), true) => f
                .user
                .iter()
                .take(1)
                .chain(f.item.iter().take(1))
                .cloned()
                .collect(),
            _ => self.key_columns.clone(),
        }
    }
}

/// The splits a `split_column` may name.
const SPLITS: [&str; 4] = ["train", "dev", "test", "badcase"];

fn d_action() -> String {
    "action".into()
}
fn d_time() -> String {
    "timestamp".into()
}

/// One event as read.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub line: usize,
    pub key: Vec<String>,
    pub text: String,
    pub action: String,
    pub time: f64,
    pub split: String,
}

/// Reads events from CSV or JSONL; errors name the file and line.
pub fn read_events(
    path: &std::path::Path,
    shown: &std::path::Path,
    c: &BehaviorConfig,
) -> Result<Vec<Event>, String> {
    let sh = shown.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{sh}: {e}"))?;
    let key_cols = c.keys();
    let text_cols = if c.text_columns.is_empty() {
        &key_cols
    } else {
        &c.text_columns
    };
    let features = c.ctr.as_ref().map(|f| f.fields());
    let needs_time = c.rules.iter().any(|r| r.within.is_some());
    let mut out = Vec::new();
    let make = |line: usize, get: &dyn Fn(&str) -> Option<String>| -> Result<Event, String> {
        let field = |n: &str| get(n).ok_or_else(|| format!("{sh}:{line}: missing \"{n}\""));
        let key = key_cols
            .iter()
            .map(|k| field(k))
            .collect::<Result<Vec<_>, _>>()?;
        let text = match (&features, &c.ctr) {
            (Some(names), Some(f)) => {
                let values = names
                    .iter()
                    .map(|k| field(k).map(|v| v.trim().to_string()))
                    .collect::<Result<Vec<_>, _>>()?;
                for (name, v) in names.iter().zip(&values) {
                    if f.numeric.iter().any(|n| n == name)
                        && !v.parse::<f64>().is_ok_and(f64::is_finite)
                    {
                        return Err(format!(
                            "{sh}:{line}: field \"{name}\" is numeric but holds \"{v}\""
                        ));
                    }
                }
                let refs: Vec<&str> = values.iter().map(String::as_str).collect();
                relabel_tasks::ctr::row_text(names, &refs)
            }
            _ => text_cols
                .iter()
                .map(|k| field(k))
                .collect::<Result<Vec<_>, _>>()?
                .join(" | "),
        };
        let split = match &c.split_column {
            Some(col) => {
                let v = field(col)?;
                if !SPLITS.contains(&v.trim()) {
                    return Err(format!(
                        "{sh}:{line}: \"{col}\" names a split ({}); found \"{v}\"",
                        SPLITS.join(", ")
                    ));
                }
                v.trim().to_string()
            }
            None => "train".to_string(),
        };
        let time = match get(&c.time_column) {
            Some(t) => t.trim().parse::<f64>().map_err(|_| {
                format!(
                    "{sh}:{line}: \"{}\" must be seconds (a number); found \"{t}\"",
                    c.time_column
                )
            })?,
            None if needs_time => {
                return Err(format!(
                    "{sh}:{line}: missing \"{}\" (rules with `within` need times)",
                    c.time_column
                ))
            }
            None => 0.0,
        };
        Ok(Event {
            line,
            key,
            text,
            action: field(&c.action_column)?,
            time,
            split,
        })
    };
    if path
        .to_string_lossy()
        .to_ascii_lowercase()
        .ends_with(".jsonl")
    {
        for (i, l) in text.lines().enumerate() {
            if l.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value =
                serde_json::from_str(l).map_err(|e| format!("{sh}:{}: {e}", i + 1))?;
            let get = |n: &str| match &v[n] {
                serde_json::Value::Null => None,
                serde_json::Value::String(s) => Some(s.clone()),
                other => Some(other.to_string()),
            };
            out.push(make(i + 1, &get)?);
        }
    } else {
        let mut r = csv::Reader::from_reader(text.as_bytes());
        let h = r.headers().map_err(|e| format!("{sh}: {e}"))?.clone();
        for (i, rec) in r.records().enumerate() {
            let rec = rec.map_err(|e| format!("{sh}:{}: {e}", i + 2))?;
            let get = |n: &str| {
                h.iter()
                    .position(|x| x == n)
                    .and_then(|j| rec.get(j))
                    .filter(|s| !s.is_empty())
                    .map(String::from)
            };
            out.push(make(i + 2, &get)?);
        }
    }
    Ok(out)
}

/// A labelled key: its label, or a conflict.
#[derive(Debug, Clone, PartialEq)]
pub struct Labelled {
    pub key: Vec<String>,
    pub text: String,
    /// The split of the key's first event.
    pub split: String,
    pub label: String,
    /// The other label when the key's events disagreed.
    pub conflict_with: Option<String>,
}

/// Counts for the metrics.
#[derive(Debug, Default, Clone, Serialize)]
pub struct LogStats {
    pub events: usize,
    pub duplicates: usize,
    pub unknown_actions: BTreeMap<String, usize>,
    /// Events whose rule did not hold (e.g. an impression followed by a click).
    pub overridden: usize,
    pub keys: usize,
    pub conflicts: usize,
    pub dropped: usize,
}

/// Applies the rules. Deterministic: keys in first-seen order.
pub fn label_events(events: &[Event], c: &BehaviorConfig) -> (Vec<Labelled>, LogStats) {
    let mut st = LogStats {
        events: events.len(),
        ..LogStats::default()
    };
    let rules: HashMap<&str, &ActionRule> =
        c.rules.iter().map(|r| (r.action.as_str(), r)).collect();
    // Group by key, dropping exact duplicates (same key, action and time).
    let mut order: Vec<Vec<String>> = Vec::new();
    let mut groups: HashMap<Vec<String>, Vec<&Event>> = HashMap::new();
    for e in events {
        let g = groups.entry(e.key.clone()).or_insert_with(|| {
            order.push(e.key.clone());
            Vec::new()
        });
        if g.iter().any(|x| x.action == e.action && x.time == e.time) {
            st.duplicates += 1;
        } else {
            g.push(e);
        }
    }
    let mut out = Vec::new();
    for key in order {
        let g = &groups[&key];
        // label -> strongest strength seen
        let mut votes: BTreeMap<&str, u32> = BTreeMap::new();
        for e in g {
            let Some(rule) = rules.get(e.action.as_str()) else {
                *st.unknown_actions.entry(e.action.clone()).or_default() += 1;
                continue;
            };
            let window = rule.within.unwrap_or(f64::INFINITY);
            let undone = g.iter().any(|f| {
                rule.unless_followed_by.contains(&f.action)
                    && f.time >= e.time
                    && f.time - e.time <= window
            });
            if undone {
                st.overridden += 1;
                continue;
            }
            let s = votes.entry(rule.label.as_str()).or_default();
            *s = (*s).max(rule.strength);
        }
        if votes.is_empty() {
            continue;
        }
        st.keys += 1;
        let mut ranked: Vec<(&str, u32)> = votes.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let text = g[0].text.clone();
        let split = g[0].split.clone();
        if ranked.len() == 1 {
            out.push(Labelled {
                key,
                text,
                split: split.clone(),
                label: ranked[0].0.to_string(),
                conflict_with: None,
            });
            continue;
        }
        st.conflicts += 1;
        let tie = ranked[0].1 == ranked[1].1;
        match c.on_conflict {
            OnConflict::Drop => st.dropped += 1,
            OnConflict::Strongest if !tie => out.push(Labelled {
                key,
                text,
                split: split.clone(),
                label: ranked[0].0.to_string(),
                conflict_with: None,
            }),
            OnConflict::Strongest | OnConflict::Flag => out.push(Labelled {
                key,
                text,
                split: split.clone(),
                label: ranked[0].0.to_string(),
                conflict_with: Some(ranked[1].0.to_string()),
            }),
        }
    }
    (out, st)
}

pub struct BehaviorLog;

impl NodeKind for BehaviorLog {
    type Config = BehaviorConfig;
    const KIND: &'static str = "behavior_log";
    const VERSION: &'static str = "3";
    const ABOUT: &'static str = "Labelled rows from user-behaviour events by rules (order > click > impression without click), with de-duplication and conflicts reported";

    fn outputs(_: &BehaviorConfig) -> Vec<String> {
        vec!["dataset".into(), "flags".into()]
    }

    fn files(c: &BehaviorConfig) -> Vec<PathBuf> {
        if c.in_input {
            Vec::new()
        } else {
            vec![c.file.clone()]
        }
    }

    fn check(c: &BehaviorConfig, inputs: &[String]) -> Vec<ConfigProblem> {
        let mut p = Vec::new();
        p.extend(crate::inputs::require_data_input(c.in_input, inputs));
        if c.keys().is_empty() {
            p.push(ConfigProblem::new(
                CfgPath::root().key("key_columns"),
                "name at least one column (e.g. [query, item])",
            ));
        }
        let mut labels: std::collections::BTreeSet<String> =
            c.rules.iter().map(|r| r.label.clone()).collect();
        if let Some(f) = &c.ctr {
            for msg in f.problems() {
                p.push(ConfigProblem::new(CfgPath::root().key("ctr"), msg));
            }
            if !c.text_columns.is_empty() {
                p.push(ConfigProblem::new(
                    CfgPath::root().key("text_columns"),
                    "CTR rows are their feature fields (`ctr:`); leave `text_columns` out",
                ));
            }
            let spec = relabel_tasks::ctr::default_spec();
            labels.clear();
            for (i, r) in c.rules.iter().enumerate() {
                match relabel_tasks::ctr::parse_click(&r.label, &spec) {
                    Some(k) => {
                        labels.insert(spec.labels[k as usize].name.clone());
                    }
                    None => p.push(ConfigProblem::new(
                        CfgPath::root().key("rules").index(i).key("label"),
                        format!(
                            "a CTR rule's label is a click or not (click/no_click, 1/0, true/false); found \"{}\"",
                            r.label
                        ),
                    )),
                }
            }
        }
        if labels.len() < 2 {
            p.push(ConfigProblem::new(
                CfgPath::root().key("rules"),
                "rules must give at least two labels (e.g. positive and negative)",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, r) in c.rules.iter().enumerate() {
            if !seen.insert(r.action.as_str()) {
                p.push(ConfigProblem::new(
                    CfgPath::root().key("rules").index(i).key("action"),
                    format!("action \"{}\" has a rule already", r.action),
                ));
            }
            if r.within.is_some() && r.unless_followed_by.is_empty() {
                p.push(ConfigProblem::new(
                    CfgPath::root().key("rules").index(i).key("within"),
                    "`within` needs `unless_followed_by`",
                ));
            }
        }
        p
    }

    async fn run(
        &self,
        ctx: NodeContext,
        c: BehaviorConfig,
        inputs: Inputs,
    ) -> Result<NodeOutput, NodeError> {
        let path = crate::inputs::config_path(&ctx, &inputs, c.in_input, &c.file);
        let events = read_events(&path, &c.file, &c).map_err(NodeError::Failed)?;
        let (rows, st) = label_events(&events, &c);
        let ctr_spec = c.ctr.as_ref().map(|_| relabel_tasks::ctr::default_spec());
        let spec = match &ctr_spec {
            Some(s) => s.clone(),
            None => {
                let mut names: Vec<String> = c.rules.iter().map(|r| r.label.clone()).collect();
                names.sort();
                names.dedup();
                LabelSpec::from_names(names)
            }
        };
        // A rule's label as the spec names it (CTR rules may say 1/0 or true/false).
        let name_of = |l: &str| match &ctr_spec {
            Some(s) => relabel_tasks::ctr::parse_click(l, s)
                .map(|k| s.labels[k as usize].name.clone())
                .unwrap_or_else(|| l.to_string()),
            None => l.to_string(),
        };
        let mut splits: BTreeMap<String, Split> = [("train".to_string(), Split::default())].into();
        let mut out_flags = Vec::new();
        let mut per_label: BTreeMap<String, usize> = BTreeMap::new();
        for r in &rows {
            let id = r.key.join("|");
            let label = name_of(&r.label);
            let split = splits.entry(r.split.clone()).or_default();
            let row = split.ids.len();
            split.ids.push(id.clone());
            split.texts.push(r.text.clone());
            split.labels.push(spec.index(&label).ok_or_else(|| {
                NodeError::Failed(format!("label \"{label}\" is not in the rules' labels"))
            })?);
            *per_label.entry(label.clone()).or_default() += 1;
            if let Some(other) = &r.conflict_with {
                out_flags.push(Flag {
                    split: r.split.clone(),
                    row,
                    id,
                    text: r.text.clone(),
                    label,
                    candidate: name_of(other),
                    label_prob: f32::NAN,
                    candidate_prob: f32::NAN,
                    score: 1.0,
                    rule: "behavior_conflict".into(),
                    site: serde_json::Value::Null,
                });
            }
        }
        if splits["train"].is_empty() {
            return Err(NodeError::Failed(format!(
                "{}: no event gave a train row (check the rules' actions and `split_column`)",
                c.file.display()
            )));
        }
        let split_rows: BTreeMap<String, usize> =
            splits.iter().map(|(k, v)| (k.clone(), v.len())).collect();
        let ds = crate::data::Dataset {
            task: if c.ctr.is_some() {
                relabel_tasks::task::TaskKind::Ctr
            } else {
                Default::default()
            },
            labels: spec,
            splits,
            ctr: c.ctr.clone(),
        };
        let out = ctx.output_path("dataset");
        ds.write(&out)
            .map_err(|e| NodeError::io("writing the dataset", e))?;
        let fl = ctx.output_path("flags");
        crate::flags::write(&fl, &out_flags).map_err(|e| NodeError::io("writing flags", e))?;
        let mut m = match serde_json::to_value(&st).expect("stats serialise") {
            serde_json::Value::Object(m) => m,
            _ => Metrics::new(),
        };
        m.insert("rows".into(), json!(rows.len()));
        m.insert("split_rows".into(), json!(split_rows));
        m.insert("per_label".into(), json!(per_label));
        m.insert("flags".into(), json!(out_flags.len()));
        Ok(NodeOutput {
            outputs: [("dataset".to_string(), out), ("flags".to_string(), fl)].into(),
            metrics: m,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(on_conflict: &str) -> BehaviorConfig {
        serde_yaml::from_str(&format!(
            r#"
file: events.csv
key_columns: [query, item]
on_conflict: {on_conflict}
rules:
  - {{action: order, label: positive, strength: 3}}
  - {{action: click, label: positive, strength: 2}}
  - {{action: impression, label: negative, strength: 1, unless_followed_by: [click, order], within: 60}}
  - {{action: return, label: negative, strength: 3}}
"#
        ))
        .unwrap()
    }

    const LOG: &str = "query,item,action,timestamp
shoes,a,impression,0
shoes,a,click,10
shoes,b,impression,0
shoes,b,click,500
shoes,c,impression,0
shoes,c,impression,0
hat,d,order,5
hat,d,return,900
hat,e,click,1
hat,e,wishlist,2
hat,f,click,1
hat,f,impression,100
";

    #[test]
    fn rules_give_the_documented_labels_and_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("events.csv");
        std::fs::write(&p, LOG).unwrap();
        let c = cfg("strongest");
        let events = read_events(&p, &p, &c).unwrap();
        let (rows, st) = label_events(&events, &c);
        let got: Vec<(String, String, Option<String>)> = rows
            .iter()
            .map(|r| (r.key.join("|"), r.label.clone(), r.conflict_with.clone()))
            .collect();
        let want = vec![
            // impression then a click within 60 s: only the click counts
            ("shoes|a".to_string(), "positive".to_string(), None),
            // the click came 500 s later: the impression is a negative, the click a stronger positive
            ("shoes|b".into(), "positive".into(), None),
            // two identical impressions: one event, a negative
            ("shoes|c".into(), "negative".into(), None),
            // an order (3) and a return (3): a tie between labels is flagged
            ("hat|d".into(), "negative".into(), Some("positive".into())),
            // a click, and an action no rule knows
            ("hat|e".into(), "positive".into(), None),
            // a click, then an impression with no later click: click (2) beats impression (1)
            ("hat|f".into(), "positive".into(), None),
        ];
        assert_eq!(got, want);
        assert_eq!(st.duplicates, 1);
        assert_eq!(st.overridden, 1);
        assert_eq!(st.unknown_actions.get("wishlist"), Some(&1));
        assert_eq!(st.conflicts, 3); // shoes|b, hat|d, hat|f
                                     // Other policies: drop every conflicting key, or flag each with both labels.
        let (rows, st) = label_events(&events, &cfg("drop"));
        assert_eq!(rows.len(), 3);
        assert_eq!(st.dropped, 3);
        let (rows, _) = label_events(&events, &cfg("flag"));
        let flagged: Vec<String> = rows
            .iter()
            .filter(|r| r.conflict_with.is_some())
            .map(|r| r.key.join("|"))
            .collect();
        assert_eq!(flagged, ["shoes|b", "hat|d", "hat|f"]);
    }

    #[test]
    fn bad_times_are_reported_with_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("events.csv");
        std::fs::write(&p, "query,item,action,timestamp\nq,a,click,yesterday\n").unwrap();
        let err =
            read_events(&p, std::path::Path::new("events.csv"), &cfg("strongest")).unwrap_err();
        assert!(
            err.starts_with("events.csv:2: \"timestamp\" must be seconds"),
            "{err}"
        );
    }

    fn ctr_cfg() -> BehaviorConfig {
        serde_yaml::from_str(
            r#"
file: log.csv
split_column: split
ctr: {user: [user, age], item: [item, genres], numeric: [age], multi: {genres: "|"}}
rules:
  - {action: click, label: 1, strength: 2}
  - {action: impression, label: no_click, strength: 1, unless_followed_by: [click], within: 30}
"#,
        )
        .unwrap()
    }

    const CTR_LOG: &str = "user,age,item,genres,action,timestamp,split
u1,30,m1,Drama|War,impression,0,train
u1,30,m1,Drama|War,click,4,train
u1,30,m2,Comedy,impression,0,train
u2,41,m1,Drama|War,impression,10,test
u2,41,m1,Drama|War,click,100,test
u2,41,m3,Horror,impression,10,test
u2,41,m3,Horror,click,12,test
";

    #[test]
    fn a_ctr_log_gives_feature_rows_clicks_and_splits() {
        let c = ctr_cfg();
        assert!(BehaviorLog::check(&c, &[]).is_empty());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log.csv");
        std::fs::write(&p, CTR_LOG).unwrap();
        let events = read_events(&p, &p, &c).unwrap();
        // The keys default to the user's and the item's key fields.
        assert_eq!(events[0].key, ["u1", "m1"]);
        assert_eq!(events[0].text, "user=u1\tage=30\titem=m1\tgenres=Drama|War");
        let (rows, st) = label_events(&events, &c);
        let got: Vec<(String, &str, &str)> = rows
            .iter()
            .map(|r| (r.key.join("|"), r.label.as_str(), r.split.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("u1|m1".to_string(), "1", "train"),
                ("u1|m2".into(), "no_click", "train"),
                // the click came 90 s after the impression: click (2) beats impression (1)
                ("u2|m1".into(), "1", "test"),
                ("u2|m3".into(), "1", "test"),
            ]
        );
        assert_eq!(st.overridden, 2);
    }

    #[test]
    fn ctr_logs_refuse_labels_that_are_not_clicks_and_bad_numbers_and_splits() {
        let mut c = ctr_cfg();
        c.rules[0].label = "relevant".into();
        let probs = BehaviorLog::check(&c, &[]);
        assert!(
            probs
                .iter()
                .any(|p| p.path.to_string() == "rules[0].label"
                    && p.message.contains("click or not")),
            "{probs:?}"
        );
        let c = ctr_cfg();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log.csv");
        std::fs::write(
            &p,
            "user,age,item,genres,action,timestamp,split\nu1,30,m1,War,click,0,train\nu1,old,m2,War,click,0,train\n",
        )
        .unwrap();
        let err = read_events(&p, std::path::Path::new("log.csv"), &c).unwrap_err();
        assert_eq!(err, "log.csv:3: field \"age\" is numeric but holds \"old\"");
        std::fs::write(
            &p,
            "user,age,item,genres,action,timestamp,split\nu1,30,m1,War,click,0,holdout\n",
        )
        .unwrap();
        let err = read_events(&p, std::path::Path::new("log.csv"), &c).unwrap_err();
        assert!(
            err.starts_with("log.csv:2: \"split\" names a split"),
            "{err}"
        );
    }
}
