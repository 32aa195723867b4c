//! `JsonBody<T>`: the request-body extractor every endpoint uses instead of axum's `Json`,
//! so that every way a body can be wrong (not declared as JSON, too large, not UTF-8, not
//! JSON, wrong shape) is answered in OpenAI's error envelope and names the field at fault.
//!
//! The body must be declared `Content-Type: application/json` (parameters such as
//! `charset` allowed), else 415 with a hint. Besides being what every OpenAI client sends,
//! this closes a hole: a web page may POST `text/plain` to a local server without asking
//! the browser's permission first, but never `application/json` (that needs a CORS
//! preflight, which fails unless `--cors-origin` allows the page).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::error::ApiError;
use super::openai::params::GenerationFields;
use super::state::AppState;

pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let content_type = request.headers().get(header::CONTENT_TYPE);
        if !content_type.is_some_and(is_json) {
            let shown = content_type.map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            return Err(ApiError::unsupported_media_type(shown.as_deref()));
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::body_too_large(state.max_body_bytes())
                } else {
                    ApiError::invalid_request(
                        None,
                        format!("could not read the request body: {rejection}"),
                    )
                }
            })?;
        parse(&bytes).map(JsonBody)
    }
}

/// Whether a `Content-Type` declares JSON: `application/json`, any case, any parameters.
fn is_json(value: &HeaderValue) -> bool {
    let Ok(value) = value.to_str() else {
        return false;
    };
    let media_type = value.split(';').next().unwrap_or_default().trim();
    media_type.eq_ignore_ascii_case("application/json")
}

/// Parses `bytes` as one JSON document of type `T`.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid_request(
            None,
            "the request body is empty; send a JSON object",
        ));
    }
    let document: Value = serde_json::from_slice(bytes).map_err(|error| {
        ApiError::invalid_request(None, format!("the request body is not valid JSON: {error}"))
    })?;
    serde_path_to_error::deserialize(&document).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        let param = if path != "." {
            Some(path)
        } else {
            missing_field(&inner.to_string()).or_else(|| shared_field_at_fault(&document))
        };
        ApiError::invalid_request(param, format!("invalid request body: {inner}"))
    })
}

/// serde's `flatten` (how both endpoints embed [`GenerationFields`]) loses the path of an
/// error inside the flattened fields; deserializing those fields alone finds it again.
fn shared_field_at_fault(document: &Value) -> Option<String> {
    serde_path_to_error::deserialize::<_, GenerationFields>(document)
        .err()
        .map(|error| error.path().to_string())
}

/// The field named by serde's "missing field `x`" message.
fn missing_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    Some(rest[..rest.find('`')?].to_owned())
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Body {
        model: String,
        messages: Vec<Message>,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Message {
        role: String,
    }

    fn error(body: &[u8]) -> ApiError {
        parse::<Body>(body).unwrap_err()
    }

    #[test]
    fn errors_name_the_field() {
        let e = error(br#"{"model": "m", "messages": [{"role": 3}]}"#);
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let e = error(br#"{"model": "m"}"#);
        assert_eq!(e.param.as_deref(), Some("messages"));
        assert!(e.message.contains("missing field"));
    }

    #[test]
    fn errors_in_shared_fields_name_the_field() {
        use crate::api::openai::chat::ChatCompletionRequest;
        let e = parse::<ChatCompletionRequest>(
            br#"{"model": "m", "messages": [], "max_tokens": "ten"}"#,
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        let e = parse::<ChatCompletionRequest>(
            br#"{"model": "m", "messages": [], "stream_options": {"include_usage": 3}}"#,
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("stream_options.include_usage"));
    }

    #[test]
    fn only_json_content_types_pass() {
        for good in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
        ] {
            assert!(is_json(&HeaderValue::from_static(good)), "{good}");
        }
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/jsonx",
            "",
        ] {
            assert!(!is_json(&HeaderValue::from_static(bad)), "{bad}");
        }
    }

    #[test]
    fn broken_documents_are_invalid_requests() {
        for body in [
            &b""[..],
            b"   ",
            b"{",
            b"[1, 2]",
            b"null",
            b"{\"model\": \"\xff\xfe\", \"messages\": []}",
            b"{\"model\": \"m\", \"messages\": []} trailing",
        ] {
            let e = error(body);
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body:?}");
            assert_eq!(e.kind, "invalid_request_error");
        }
        let deep = "[".repeat(100_000);
        assert_eq!(error(deep.as_bytes()).status, StatusCode::BAD_REQUEST);
    }
}
