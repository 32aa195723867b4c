//! Agent identity: which agent (or session) a request belongs to, so that its KV cache can
//! be kept for it. Taken from the `X-Agent-Id` header, else `X-Session-Id`, else the body's
//! `agent_id`. The id later names files on disk, so only a safe alphabet is accepted.

use axum::http::HeaderMap;

use super::error::ApiError;
use crate::cache_store::manifest::{MAX_AGENT_ID_LEN, valid_agent_id};

pub const AGENT_ID_HEADER: &str = "x-agent-id";
pub const SESSION_ID_HEADER: &str = "x-session-id";

/// A validated agent id: 1 to 128 characters of `[A-Za-z0-9_.-]`, and not `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentId(String);

impl AgentId {
    pub fn parse(id: &str, param: &str) -> Result<AgentId, ApiError> {
        if !valid_agent_id(id) {
            return Err(ApiError::invalid_request(
                Some(param.to_owned()),
                format!(
                    "{param} must be 1 to {MAX_AGENT_ID_LEN} characters of A-Z, a-z, 0-9, `_`, \
                     `.` and `-` (and not `.` or `..`)"
                ),
            ));
        }
        Ok(AgentId(id.to_owned()))
    }

    /// The request's agent, if it names one.
    pub fn from_request(
        headers: &HeaderMap,
        body: Option<&str>,
    ) -> Result<Option<AgentId>, ApiError> {
        for name in [AGENT_ID_HEADER, SESSION_ID_HEADER] {
            if let Some(value) = headers.get(name) {
                let value = value.to_str().map_err(|_| {
                    ApiError::invalid_request(
                        Some(name.to_owned()),
                        format!("the {name} header must be ASCII"),
                    )
                })?;
                return AgentId::parse(value, name).map(Some);
            }
        }
        body.map(|id| AgentId::parse(id, "agent_id")).transpose()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn only_safe_ids_pass() {
        for good in ["agent-1", "a", "A.b_c-9", &"x".repeat(128)] {
            assert!(AgentId::parse(good, "agent_id").is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../etc",
            "a/b",
            "a\\b",
            "a b",
            "é",
            &"x".repeat(129),
        ] {
            let e = AgentId::parse(bad, "agent_id").unwrap_err();
            assert_eq!(e.param.as_deref(), Some("agent_id"), "{bad}");
        }
    }

    #[test]
    fn headers_win_over_the_body() {
        let mut headers = HeaderMap::new();
        assert_eq!(AgentId::from_request(&headers, None).unwrap(), None);
        let from_body = AgentId::from_request(&headers, Some("b")).unwrap().unwrap();
        assert_eq!(from_body.as_str(), "b");
        headers.insert(SESSION_ID_HEADER, HeaderValue::from_static("s"));
        assert_eq!(
            AgentId::from_request(&headers, Some("b"))
                .unwrap()
                .unwrap()
                .as_str(),
            "s"
        );
        headers.insert(AGENT_ID_HEADER, HeaderValue::from_static("../x"));
        let e = AgentId::from_request(&headers, Some("b")).unwrap_err();
        assert_eq!(e.param.as_deref(), Some(AGENT_ID_HEADER));
    }
}
