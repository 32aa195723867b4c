//! The OpenAI-compatible endpoints: request types and their checks (`chat`, `completions`,
//! `params`), the bridge to the engine (`generation`), response bodies (`response`), SSE
//! streaming (`stream`), and the handlers (`handlers`, `models`).

pub mod chat;
pub mod completions;
pub mod generation;
pub mod handlers;
pub mod models;
pub mod params;
pub mod response;
pub mod stream;
