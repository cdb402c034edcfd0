//! `behavior_log`: labelled rows from user-behaviour events (key, item, action, time) by
//! configured rules: e.g. an order is a strong positive, a click a positive, an impression with
//! no click or order within a window a negative. Exact duplicate events count once; keys whose
//! events disagree are resolved by the strongest rule, dropped, or flagged with both labels as
//! candidates for the binary relabeler.

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
    /// Columns that identify a labelled row (e.g. `[query, item]`).
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
}

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
}

/// Reads events from CSV or JSONL; errors name the file and line.
pub fn read_events(
    path: &std::path::Path,
    shown: &std::path::Path,
    c: &BehaviorConfig,
) -> Result<Vec<Event>, String> {
    let sh = shown.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{sh}: {e}"))?;
    let text_cols = if c.text_columns.is_empty() {
        &c.key_columns
    } else {
        &c.text_columns
    };
    let needs_time = c.rules.iter().any(|r| r.within.is_some());
    let mut out = Vec::new();
    let make = |line: usize, get: &dyn Fn(&str) -> Option<String>| -> Result<Event, String> {
        let field = |n: &str| get(n).ok_or_else(|| format!("{sh}:{line}: missing \"{n}\""));
        let key = c
            .key_columns
            .iter()
            .map(|k| field(k))
            .collect::<Result<Vec<_>, _>>()?;
        let text = text_cols
            .iter()
            .map(|k| field(k))
            .collect::<Result<Vec<_>, _>>()?
            .join(" | ");
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
        if ranked.len() == 1 {
            out.push(Labelled {
                key,
                text,
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
                label: ranked[0].0.to_string(),
                conflict_with: None,
            }),
            OnConflict::Strongest | OnConflict::Flag => out.push(Labelled {
                key,
                text,
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
    const VERSION: &'static str = "2";
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
        if c.key_columns.is_empty() {
            p.push(ConfigProblem::new(
                CfgPath::root().key("key_columns"),
                "name at least one column (e.g. [query, item])",
            ));
        }
        let labels: std::collections::BTreeSet<&str> =
            c.rules.iter().map(|r| r.label.as_str()).collect();
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
        let mut names: Vec<String> = c.rules.iter().map(|r| r.label.clone()).collect();
        names.sort();
        names.dedup();
        let spec = LabelSpec::from_names(names);
        let mut split = Split::default();
        let mut out_flags = Vec::new();
        let mut per_label: BTreeMap<String, usize> = BTreeMap::new();
        for (i, r) in rows.iter().enumerate() {
            let id = r.key.join("|");
            split.ids.push(id.clone());
            split.texts.push(r.text.clone());
            split
                .labels
                .push(spec.index(&r.label).expect("labels come from the rules"));
            *per_label.entry(r.label.clone()).or_default() += 1;
            if let Some(other) = &r.conflict_with {
                out_flags.push(Flag {
                    split: "train".into(),
                    row: i,
                    id,
                    text: r.text.clone(),
                    label: r.label.clone(),
                    candidate: other.clone(),
                    label_prob: f32::NAN,
                    candidate_prob: f32::NAN,
                    score: 1.0,
                    rule: "behavior_conflict".into(),
                    site: serde_json::Value::Null,
                });
            }
        }
        let (out, fl) = crate::outputs::write_train_and_flags(&ctx, spec, split, &out_flags)?;
        let mut m = match serde_json::to_value(&st).expect("stats serialise") {
            serde_json::Value::Object(m) => m,
            _ => Metrics::new(),
        };
        m.insert("rows".into(), json!(rows.len()));
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
}
