//! relabel-llm: what an LLM endpoint is ([`endpoint`]: the manifest's `llm:` entries, a
//! resource kind of the engine), the OpenAI-compatible client that memoises every answer in
//! the cache's `llm` memo table ([`client`]), the local llama-server it starts ([`local`]), and batch judging through the Batch API
//! ([`batch`]).

pub mod batch;
pub mod client;
pub mod endpoint;
pub mod local;
