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

/// What kind of server answers, where its API differs from OpenAI's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Server {
    /// OpenAI's API (and llama.cpp's server): the answer is constrained by a JSON-schema
    /// `response_format`.
    #[default]
    Openai,
    /// vLLM (0.10.2 or later): the answer is constrained to exactly one option title with
    /// `structured_outputs: {choice: [...]}`, and comes back as that bare title.
    Vllm,
}

/// Constrains a chat request's answer to one of `options`, the way `server` understands: a
/// JSON object `{"<field>": option}` under a strict JSON schema named `name`, or (vLLM) the bare
/// option text by `structured_outputs.choice`. Answers of both shapes are read by the nodes.
pub fn constrain_choice(
    request: &mut serde_json::Value,
    server: Server,
    name: &str,
    field: &str,
    options: &[&str],
) {
    match server {
        Server::Openai => {
            request["response_format"] = serde_json::json!({
                "type": "json_schema",
                "json_schema": {
                    "name": name,
                    "strict": true,
                    "schema": {
                        "type": "object",
                        "properties": {field: {"type": "string", "enum": options}},
                        "required": [field],
                        "additionalProperties": false,
                    },
                },
            });
        }
        Server::Vllm => {
            request["structured_outputs"] = serde_json::json!({ "choice": options });
        }
    }
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
    /// `provider: local` only: the GGUF weights to serve (default: the model `cargo xtask setup` fetched).
    #[serde(default)]
    pub model_path: Option<std::path::PathBuf>,
    /// `provider: local` only: CPU threads for llama-server (default: all cores).
    #[serde(default)]
    pub threads: Option<u32>,
    /// Send each request's `metadata` (which row a question is about: `relabel_split`,
    /// `relabel_id`) to the server, for servers that log or route by it (a simulated judge
    /// finds its item by it). Off by default: not every server accepts the field. Never part
    /// of an answer's key.
    #[serde(default)]
    pub send_metadata: bool,
    /// The model reads images (OpenAI `image_url` content parts): detection questions then go
    /// with their crop as a PNG data URL. Off by default; a text-only endpoint refuses them.
    #[serde(default)]
    pub multimodal: bool,
    /// The server's kind, where its API differs from OpenAI's (`vllm`: answers constrained by
    /// `structured_outputs.choice`).
    #[serde(default)]
    pub server: Server,
    /// Judge through the Batch API: requests the cache cannot answer go out as one batch job
    /// (`/v1/files` + `/v1/batches`), the node ends pending (exit 3), and the next run
    /// collects the answers. Not for `provider: local`.
    #[serde(default)]
    pub batch: bool,
    /// The batch's completion window (OpenAI accepts `24h`).
    #[serde(default = "default_window")]
    pub completion_window: String,
    /// The price cut on batch answers, for the cost metric (OpenAI: 0.5, half price).
    #[serde(default = "default_batch_discount")]
    pub batch_discount: f64,
}

fn default_window() -> String {
    "24h".into()
}

fn default_batch_discount() -> f64 {
    0.5
}

impl Endpoint {
    /// A node's endpoint (its `llm` resource) and its name, or the local model (`local`) when
    /// the manifest declares none.
    pub fn for_node(
        ctx: &relabel_engine::plugin::NodeContext,
    ) -> Result<(String, Endpoint), String> {
        Ok(match ctx.resource(SECTION) {
            Some((name, v)) => (
                name.to_string(),
                serde_json::from_value::<Endpoint>(v.clone())
                    .map_err(|e| format!("LLM endpoint \"{name}\": {e}"))?,
            ),
            None => ("local".to_string(), Endpoint::default_local()),
        })
    }

    /// The endpoint a node uses when the manifest declares none: the local Qwen2.5 0.5B server.
    pub fn default_local() -> Endpoint {
        Endpoint {
            provider: Provider::Local,
            base_url: None,
            model: LOCAL_MODEL_ALIAS.into(),
            api_key_env: None,
            max_concurrency: 1,
            requests_per_minute: None,
            timeout: default_timeout(),
            max_retries: default_retries(),
            temperature: 0.0,
            token_budget: None,
            price_per_million: BTreeMap::new(),
            model_path: None,
            threads: None,
            send_metadata: false,
            multimodal: false,
            server: Server::Openai,
            batch: false,
            completion_window: default_window(),
            batch_discount: default_batch_discount(),
        }
    }

    /// Price of `tokens` of `kind` (`input` / `output`), when prices are configured.
    pub fn cost(&self, prompt_tokens: u64, completion_tokens: u64) -> Option<f64> {
        if self.price_per_million.is_empty() {
            return None;
        }
        let p = |k: &str| self.price_per_million.get(k).copied().unwrap_or(0.0);
        Some((prompt_tokens as f64 * p("input") + completion_tokens as f64 * p("output")) / 1e6)
    }
}

/// The name llama-server is asked to serve the local model under.
pub const LOCAL_MODEL_ALIAS: &str = "qwen2.5-0.5b";

pub use relabel_tasks::home::relabel_home;

/// llama-server as built by `cargo xtask setup` (`$RELABEL_LLAMA_SERVER` overrides).
pub fn llama_server_path() -> std::path::PathBuf {
    std::env::var_os("RELABEL_LLAMA_SERVER")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| relabel_home().join("llama-server-11434/llama-server"))
}

/// The local model's weights as fetched by `cargo xtask setup`.
pub fn local_model_path() -> std::path::PathBuf {
    relabel_home().join("models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
}

/// The models `provider: local` serves by `model:` alone, and their weights' file under the
/// cache folder (both fetched by `cargo xtask setup`).
pub const LOCAL_MODELS: [(&str, &str); 2] = [
    (
        LOCAL_MODEL_ALIAS,
        "models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    ),
    (
        "qwen2.5-1.5b",
        "models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    ),
];

impl Endpoint {
    /// `provider: local`: the weights to serve (`model_path`, else the file of a known `model`
    /// alias); an error names the known aliases.
    pub fn local_weights(&self) -> Result<std::path::PathBuf, String> {
        if let Some(p) = &self.model_path {
            return Ok(p.clone());
        }
        LOCAL_MODELS
            .iter()
            .find(|(alias, _)| *alias == self.model)
            .map(|(_, file)| relabel_home().join(file))
            .ok_or_else(|| {
                format!(
                    "provider: local has no model \"{}\"; known: {} (or give model_path: a GGUF file)",
                    self.model,
                    LOCAL_MODELS.map(|(a, _)| a).join(", ")
                )
            })
    }
}

/// The fields of an endpoint that can change its answers: they join the cache key of the nodes
/// using it. Concurrency, rate limits, timeouts, retries, key names and prices do not.
pub fn cache_key(endpoint: &serde_json::Value) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    if let Some(m) = endpoint.as_object() {
        for k in [
            "provider",
            "base_url",
            "model",
            "temperature",
            "token_budget",
            "model_path",
            "server",
        ] {
            if let Some(v) = m.get(k) {
                out.insert(k.into(), v.clone());
            }
        }
    }
    serde_json::Value::Object(out)
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
    if e.batch && e.provider == Provider::Local {
        return Err(ConfigProblem::new(
            Path::root().key("batch"),
            "llama-server has no Batch API; `batch: true` needs `provider: openai` with a server that has one (OpenAI, or vLLM's run-batch for the same JSONL)",
        ));
    }
    if !(0.0..=1.0).contains(&e.batch_discount) {
        return Err(ConfigProblem::new(
            Path::root().key("batch_discount"),
            format!(
                "must be between 0 and 1 (0.5: half price); found {}",
                e.batch_discount
            ),
        ));
    }
    if e.completion_window.trim().is_empty() {
        return Err(ConfigProblem::new(
            Path::root().key("completion_window"),
            "must name a window, like 24h",
        ));
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

/// The manifest section of endpoints, the config field naming one, and the memo table of
/// their answers.
pub const SECTION: &str = "llm";

/// Endpoints as the engine's resource kind: node kinds that call an LLM list [`SECTION`] in
/// their `resources`.
pub const RESOURCE: relabel_engine::plugin::ResourceKind = relabel_engine::plugin::ResourceKind {
    section: SECTION,
    noun: "LLM endpoint",
    without: "use the local model",
    check,
    schema,
    key: cache_key,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_model_is_chosen_by_its_alias_or_its_path() {
        let mut e = Endpoint::default_local();
        let small = e.local_weights().unwrap();
        assert!(small.ends_with("models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"));
        e.model = "qwen2.5-1.5b".into();
        let big = e.local_weights().unwrap();
        assert!(big.ends_with("models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"));
        assert_eq!(small.parent(), big.parent());
        e.model = "qwen-7b".into();
        let err = e.local_weights().unwrap_err();
        assert!(
            err.contains("\"qwen-7b\"") && err.contains("qwen2.5-0.5b, qwen2.5-1.5b"),
            "{err}"
        );
        e.model_path = Some("/models/mine.gguf".into());
        assert_eq!(
            e.local_weights().unwrap(),
            std::path::PathBuf::from("/models/mine.gguf")
        );
    }
}
