//! Optional API keys. With none configured every request passes; with keys, each `/v1`
//! request must carry one in `Authorization: Bearer <key>` or `x-api-key: <key>`. Keys are
//! compared in constant time, and every configured key is compared, so the time taken says
//! nothing about which key (or how much of one) matched.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::state::AppState;
use crate::engine::block_pool::BlockHash;

pub const API_KEY_HEADER: &str = "x-api-key";

/// The prefix-cache salt of a request made with an API key (a request extension): KV
/// blocks, in the pool and on disk, are shared only among requests with the same key, so
/// one tenant cannot learn another's prompts from `cached_tokens` or timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSalt(pub BlockHash);

/// Middleware: 401 unless the request carries a configured key (or none are configured).
/// An accepted key's [`CacheSalt`] goes with the request.
pub async fn require_api_key(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let keys = state.api_keys();
    if keys.is_empty() {
        return next.run(request).await;
    }
    let salt = match presented_key(request.headers()) {
        None => {
            return ApiError::unauthorized(
                "missing API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`",
            )
            .into_response();
        }
        Some(key) if matches_any(key.as_bytes(), keys) => CacheSalt(BlockHash::salt(key)),
        Some(_) => return ApiError::unauthorized("incorrect API key provided").into_response(),
    };
    request.extensions_mut().insert(salt);
    next.run(request).await
}

/// Middleware of `/admin/*`: 401 unless the request carries the admin key (compared in
/// constant time). The routes exist only when an admin key is configured.
pub async fn require_admin_key(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(admin) = state.admin_key() else {
        return ApiError::route_not_found(request.method().as_str(), request.uri().path())
            .into_response();
    };
    match presented_key(request.headers()) {
        Some(key) if bool::from(key.as_bytes().ct_eq(admin.as_bytes())) => {
            next.run(request).await
        }
        Some(_) => ApiError::unauthorized("incorrect admin key provided").into_response(),
        None => ApiError::unauthorized(
            "missing admin key: send `Authorization: Bearer <admin key>` or `x-api-key: <admin key>`",
        )
        .into_response(),
    }
}

fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim());
    }
    headers.get(API_KEY_HEADER)?.to_str().ok().map(str::trim)
}

fn matches_any(presented: &[u8], keys: &[String]) -> bool {
    keys.iter().fold(false, |found, key| {
        found | bool::from(presented.ct_eq(key.as_bytes()))
    })
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn keys_come_from_either_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(presented_key(&headers), None);
        headers.insert(API_KEY_HEADER, HeaderValue::from_static("k1"));
        assert_eq!(presented_key(&headers), Some("k1"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer k2"));
        assert_eq!(presented_key(&headers), Some("k2"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic k2"));
        assert_eq!(presented_key(&headers), None);
    }

    #[test]
    fn only_exact_keys_match() {
        let keys = vec!["secret-one".to_owned(), "secret-two".to_owned()];
        assert!(matches_any(b"secret-two", &keys));
        assert!(!matches_any(b"secret-tw", &keys));
        assert!(!matches_any(b"secret-twoo", &keys));
        assert!(!matches_any(b"", &keys));
    }
}
