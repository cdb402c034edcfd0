//! Decisions: what a judge (an LLM or a person) made of each flagged row — the outcome, the
//! chosen label, or why none — in the JSON lines `apply_labels` reads.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::flags::Flag;

/// Failures that say the endpoint failed, not that the model answered badly.
pub const ENDPOINT_FAILURES: &[Failure] = &[
    Failure::RateLimited,
    Failure::ServerError,
    Failure::Timeout,
    Failure::TransportError,
    Failure::Rejected,
    Failure::CacheWrite,
    Failure::BadResponse,
    Failure::BatchFailed,
];

/// Who (or what) decided a row: a judge, or a judge-free baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// An LLM endpoint.
    Llm,
    /// A person, through export and import.
    Human,
    /// The `flip` baseline: every flagged row takes its candidate.
    Flip,
    /// The `drop` baseline: every flagged row is left out.
    Drop,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Llm => "llm",
            Source::Human => "human",
            Source::Flip => "flip",
            Source::Drop => "drop",
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What became of one flagged row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The judge chose the current label.
    Keep,
    /// The judge chose the candidate.
    Change,
    /// No valid answer: the label stays as it is.
    Undecided,
}

/// Why a row got no decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// The answer was not one of the two options in the expected shape.
    Malformed,
    /// The answer named a label other than the two candidates.
    OutOfSet,
    /// The model refused.
    Refusal,
    /// The answers in the two candidate orders differed (`both_orders`).
    Inconsistent,
    /// The confidence was below `min_confidence`.
    LowConfidence,
    /// A person has not answered yet.
    AwaitingHuman,
    /// A person left the answer empty.
    Skipped,
    // What the endpoint did (see [`ENDPOINT_FAILURES`]):
    RateLimited,
    ServerError,
    Timeout,
    TransportError,
    BadResponse,
    Rejected,
    CacheWrite,
    TokenBudget,
    Unreachable,
    Auth,
    /// A finished batch did not answer the request (an error line, or the batch expired or
    /// was cancelled first); a later run may ask it again.
    BatchFailed,
    /// The request is in a batch not finished yet (the node ends pending; never recorded).
    Pending,
}

impl Failure {
    /// The failure for an LLM call's error kind ([`relabel_llm::client::CallError::kind`]).
    pub fn of_call(kind: &str) -> Failure {
        match kind {
            "rate_limited" => Failure::RateLimited,
            "server_error" => Failure::ServerError,
            "timeout" => Failure::Timeout,
            "transport_error" => Failure::TransportError,
            "bad_response" => Failure::BadResponse,
            "cache_write" => Failure::CacheWrite,
            "token_budget" => Failure::TokenBudget,
            "unreachable" => Failure::Unreachable,
            "auth" => Failure::Auth,
            "batch_failed" => Failure::BatchFailed,
            "pending" => Failure::Pending,
            _ => Failure::Rejected,
        }
    }

    /// Whether the endpoint failed (rather than the model answering badly).
    pub fn is_endpoint(self) -> bool {
        ENDPOINT_FAILURES.contains(&self)
    }

    /// The name used in decisions and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Malformed => "malformed",
            Failure::OutOfSet => "out_of_set",
            Failure::Refusal => "refusal",
            Failure::Inconsistent => "inconsistent",
            Failure::LowConfidence => "low_confidence",
            Failure::AwaitingHuman => "awaiting_human",
            Failure::Skipped => "skipped",
            Failure::RateLimited => "rate_limited",
            Failure::ServerError => "server_error",
            Failure::Timeout => "timeout",
            Failure::TransportError => "transport_error",
            Failure::BadResponse => "bad_response",
            Failure::Rejected => "rejected",
            Failure::CacheWrite => "cache_write",
            Failure::TokenBudget => "token_budget",
            Failure::Unreachable => "unreachable",
            Failure::Auth => "auth",
            Failure::BatchFailed => "batch_failed",
            Failure::Pending => "pending",
        }
    }
}

/// One judged row: the flag, the answer, and where the answer came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    #[serde(flatten)]
    pub flag: Flag,
    pub outcome: Outcome,
    /// The chosen label (one of the two candidates), if any.
    pub chosen: Option<String>,
    pub confidence: Option<f64>,
    /// The judge's raw answer text.
    pub answer: Option<String>,
    /// Why the row is undecided.
    pub failure: Option<Failure>,
    /// Who decided.
    pub source: Source,
    /// The candidate shown first (small models favour the first option).
    pub first_option: Option<String>,
    pub endpoint: Option<String>,
    pub model: Option<String>,
    pub template_digest: Option<String>,
    /// When the answer arrived (RFC 3339).
    pub at: Option<String>,
    pub attempts: u32,
    /// With `votes: k`: the candidate each vote chose, in the order asked (`null`: that vote
    /// gave no usable answer), so agreement can be measured per vote. Empty for one answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ballots: Vec<Option<String>>,
}

impl Decision {
    pub fn undecided(flag: Flag, source: Source, failure: Failure) -> Decision {
        Decision {
            flag,
            outcome: Outcome::Undecided,
            chosen: None,
            confidence: None,
            answer: None,
            failure: Some(failure),
            source,
            first_option: None,
            endpoint: None,
            model: None,
            template_digest: None,
            at: None,
            attempts: 0,
            ballots: Vec::new(),
        }
    }

    /// Sets the answer: `chosen` must be one of the two candidates (anything else is undecided).
    pub fn decide(&mut self, chosen: &str) {
        if chosen == self.flag.label {
            self.outcome = Outcome::Keep;
        } else if chosen == self.flag.candidate {
            self.outcome = Outcome::Change;
        } else {
            self.outcome = Outcome::Undecided;
            self.failure = Some(Failure::OutOfSet);
            return;
        }
        self.chosen = Some(chosen.to_string());
        self.failure = None;
    }
}

pub fn write_decisions(path: &Path, ds: &[Decision]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for d in ds {
        serde_json::to_writer(&mut f, d)?;
        f.write_all(b"\n")?;
    }
    f.flush()
}

pub fn read_decisions(path: &Path) -> Result<Vec<Decision>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))
        })
        .collect()
}
