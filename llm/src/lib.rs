//! relabel-llm: what an LLM endpoint is ([`endpoint`]: the manifest's `llm:` entries, a
//! resource kind of the engine), the OpenAI-compatible client that memoises every answer in
//! the cache's `llm` memo table ([`client`]), and the local llama-server it starts ([`local`]).

pub mod client;
pub mod endpoint;
pub mod local;
