//! DNS-rebinding defence. A web page can make a browser send requests to
//! `127.0.0.1:8000` under a name the attacker controls (rebound to 127.0.0.1), and read
//! the answers, since to the browser that is the attacker's own origin. Such requests
//! carry the attacker's name in `Host`. So while the server listens on a loopback address,
//! it answers only requests whose `Host` is a loopback name (`localhost`, `*.localhost`,
//! `127.x.x.x`, `[::1]`) or one allowed with `--allowed-host` (`*` allows any). On other
//! addresses the check is off unless `--allowed-host` is given. A request without a host
//! (HTTP/1.0) is not from a browser and passes.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::http::uri::Authority;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// Which `Host` values the server answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedHosts {
    /// Every host (not bound to loopback and none configured, or `--allowed-host '*'`).
    Any,
    /// Loopback names and these (lowercase, without port).
    Only(Vec<String>),
}

impl AllowedHosts {
    /// The policy for a server listening on `listen_host` with these `--allowed-host`
    /// values.
    pub fn new(listen_host: &str, allowed: &[String]) -> AllowedHosts {
        if allowed.iter().any(|h| h == "*") {
            return AllowedHosts::Any;
        }
        if allowed.is_empty() && !is_loopback(listen_host) {
            return AllowedHosts::Any;
        }
        AllowedHosts::Only(allowed.iter().map(|h| h.to_ascii_lowercase()).collect())
    }

    /// Whether a request naming `host` (without port) is answered.
    pub fn allows(&self, host: &str) -> bool {
        match self {
            AllowedHosts::Any => true,
            AllowedHosts::Only(names) => {
                is_loopback(host) || names.iter().any(|name| name.eq_ignore_ascii_case(host))
            }
        }
    }
}

/// `localhost`, a name under `.localhost` (which browsers resolve to loopback themselves),
/// or a loopback IP address (IPv6 with or without brackets).
fn is_loopback(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    literal.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The host a request names: its URI's authority (HTTP/2, absolute form), else `Host`;
/// `Ok(None)` without either, `Err` with the raw header when it is not a valid authority.
fn request_host(request: &Request) -> Result<Option<String>, String> {
    if let Some(host) = request.uri().host() {
        return Ok(Some(host.to_owned()));
    }
    let Some(value) = request.headers().get(header::HOST) else {
        return Ok(None);
    };
    let raw = || String::from_utf8_lossy(value.as_bytes()).into_owned();
    let text = value.to_str().map_err(|_| raw())?;
    let authority: Authority = text.parse().map_err(|_| raw())?;
    Ok(Some(authority.host().to_owned()))
}

/// Middleware: 403 `host_not_allowed` for a host the policy does not answer.
pub async fn check_host(
    State(allowed): State<Arc<AllowedHosts>>,
    request: Request,
    next: Next,
) -> Response {
    if *allowed != AllowedHosts::Any {
        let refused = match request_host(&request) {
            Ok(Some(host)) => (!allowed.allows(&host)).then_some(host),
            Ok(None) => None,
            Err(raw) => Some(raw),
        };
        if let Some(host) = refused {
            return ApiError::host_not_allowed(&host).into_response();
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_servers_answer_loopback_names_and_allowed_ones() {
        let local = AllowedHosts::new("127.0.0.1", &[]);
        for host in [
            "localhost",
            "LOCALHOST",
            "app.localhost",
            "127.0.0.1",
            "127.8.9.1",
            "[::1]",
            "::1",
        ] {
            assert!(local.allows(host), "{host}");
        }
        for host in [
            "evil.example",
            "localhost.evil.example",
            "10.0.0.1",
            "0.0.0.0",
        ] {
            assert!(!local.allows(host), "{host}");
        }
        let proxied = AllowedHosts::new("::1", &["Box.Lan".to_owned()]);
        assert!(proxied.allows("box.lan") && proxied.allows("localhost"));
        assert!(!proxied.allows("other.lan"));
        assert_eq!(
            AllowedHosts::new("127.0.0.1", &["*".to_owned()]),
            AllowedHosts::Any
        );
        // Exposed on purpose: no check unless names are given.
        assert_eq!(AllowedHosts::new("0.0.0.0", &[]), AllowedHosts::Any);
        assert!(!AllowedHosts::new("0.0.0.0", &["a.lan".to_owned()]).allows("b.lan"));
    }
}
