//! OpenAI request and response types.

pub mod chat;
