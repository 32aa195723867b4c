//! Request ids: a client's `X-Request-Id` is kept only when it is short and of a safe
//! alphabet, so it can be logged and echoed verbatim (no spaces or `=` to forge log
//! fields, no 100 KB ids); anything else is replaced by a generated UUID v4 (by
//! `SetRequestIdLayer`, which only fills in a missing id).

use axum::extract::Request;
use axum::http::HeaderValue;

use super::REQUEST_ID_HEADER;

/// Longest client request id kept.
pub const MAX_REQUEST_ID_LEN: usize = 64;

/// Whether a client's id is kept: 1 to 64 characters of `A-Z a-z 0-9 - _ . :`.
pub fn is_acceptable(id: &HeaderValue) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_REQUEST_ID_LEN
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Removes the request's `X-Request-Id` unless there is exactly one and it is acceptable.
pub fn drop_unacceptable(mut request: Request) -> Request {
    let headers = request.headers_mut();
    let values: Vec<&HeaderValue> = headers.get_all(REQUEST_ID_HEADER).iter().collect();
    let keep = matches!(values.as_slice(), [one] if is_acceptable(one));
    if !keep {
        headers.remove(REQUEST_ID_HEADER);
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_safe_ids_are_kept() {
        for good in ["abc", "req-1_2.3:4", "550e8400-e29b-41d4-a716-446655440000"] {
            assert!(is_acceptable(&HeaderValue::from_static(good)), "{good}");
        }
        let long = "x".repeat(MAX_REQUEST_ID_LEN + 1);
        for bad in ["", "a b", "a=b", "id\"x", "é", long.as_str()] {
            let value = HeaderValue::from_bytes(bad.as_bytes()).unwrap();
            assert!(!is_acceptable(&value), "{bad}");
        }
        let request = Request::builder()
            .header(REQUEST_ID_HEADER, "a")
            .header(REQUEST_ID_HEADER, "b")
            .body(axum::body::Body::empty())
            .unwrap();
        assert!(
            drop_unacceptable(request)
                .headers()
                .get(REQUEST_ID_HEADER)
                .is_none(),
            "two ids: neither is trusted"
        );
    }
}
