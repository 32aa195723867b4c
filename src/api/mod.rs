//! The OpenAI-compatible HTTP layer. So far: the request types and their validation; the
//! server itself (routes, SSE, errors) follows. No model or MLX types here.

pub mod openai;
