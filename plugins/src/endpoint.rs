//! LLM endpoints as declared in a manifest's `llm:` section (names of secrets, never secrets).

use std::collections::BTreeMap;

use relabel_engine::plugin::{deserialize_at, ConfigProblem};
use relabel_engine::span::Path;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Who serves the endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    /// Any OpenAI-compatible server at `base_url`.
    #[default]
    Openai,
    /// A llama.cpp server that relabel starts itself on a free loopback port.
    Local,
}

/// One named LLM endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    #[serde(default)]
    pub provider: Provider,
    /// e.g. `http://127.0.0.1:8080/v1`; not needed for `provider: local`.
    #[serde(default)]
    pub base_url: Option<String>,
    pub model: String,
    /// The NAME of the environment variable holding the API key (never the key itself).
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default = "default_concurrency")]
    pub max_concurrency: u32,
    #[serde(default)]
    pub requests_per_minute: Option<u32>,
    /// Seconds per request.
    #[serde(default = "default_timeout")]
    pub timeout: f64,
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    #[serde(default)]
    pub temperature: f64,
    /// Stop sending requests once this many tokens were used in one run.
    #[serde(default)]
    pub token_budget: Option<u64>,
    /// Prices per million tokens, for cost reports: `{input: 0.15, output: 0.6}`.
    #[serde(default)]
    pub price_per_million: BTreeMap<String, f64>,
}

fn default_concurrency() -> u32 {
    4
}

fn default_timeout() -> f64 {
    60.0
}

fn default_retries() -> u32 {
    3
}

/// Checks an endpoint's declaration.
pub fn check(v: &serde_yaml::Value) -> Result<(), ConfigProblem> {
    let e: Endpoint = deserialize_at(v)?;
    if e.provider == Provider::Openai && e.base_url.is_none() {
        return Err(ConfigProblem::new(
            Path::root(),
            "missing `base_url` (or set `provider: local`)",
        ));
    }
    if let Some(k) = &e.api_key_env {
        if k.starts_with("sk-")
            || k.len() > 64
            || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(ConfigProblem::new(
                Path::root().key("api_key_env"),
                "`api_key_env` must be the NAME of an environment variable (like OPENAI_API_KEY), not a key",
            ));
        }
    }
    if e.max_concurrency == 0 {
        return Err(ConfigProblem::new(
            Path::root().key("max_concurrency"),
            "must be at least 1",
        ));
    }
    Ok(())
}

pub fn schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    generator.subschema_for::<Endpoint>()
}
