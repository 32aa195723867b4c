//! The latency layer: one tracing span per request, its latency recorded into the
//! per-route histograms ([`crate::metrics::http`]), and one access log line, all when the
//! response *body* ends (a streamed generation is measured to its last byte, not to its
//! headers), or when the client goes away first (outcome `disconnected`).
//!
//! It runs after routing (it is added with `Router::layer`), so the route is the matched
//! pattern and the number of series stays bounded. Handlers add what only they know
//! (token counts, the agent id) through the [`RequestRecord`] extension.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request};
use axum::http::{Method, header};
use axum::response::Response;
use futures_util::future::BoxFuture;
use http_body::{Frame, SizeHint};
use tower::{Layer, Service};
use tracing::Instrument;

use super::REQUEST_ID_HEADER;
use crate::metrics::Metrics;
use crate::metrics::http::{BodyOutcome, RouteKey, status_class};

/// The route label of requests no route matched (404).
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// What a handler learned about its request, for the access log line.
#[derive(Debug, Clone, Default)]
pub struct RequestRecord(Arc<RecordInner>);

#[derive(Debug, Default)]
struct RecordInner {
    has_usage: AtomicBool,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    agent_id: OnceLock<String>,
}

impl RequestRecord {
    /// Adds one generation's token counts (a request with several prompts adds several).
    pub fn add_usage(&self, prompt_tokens: usize, completion_tokens: usize) {
        let inner = &self.0;
        inner
            .prompt_tokens
            .fetch_add(prompt_tokens as u64, Ordering::Relaxed);
        inner
            .completion_tokens
            .fetch_add(completion_tokens as u64, Ordering::Relaxed);
        inner.has_usage.store(true, Ordering::Relaxed);
    }

    /// The request's agent (the first call wins).
    pub fn set_agent_id(&self, agent_id: &str) {
        let _ = self.0.agent_id.set(agent_id.to_owned());
    }

    fn usage(&self) -> Option<(u64, u64)> {
        let inner = &self.0;
        inner.has_usage.load(Ordering::Relaxed).then(|| {
            (
                inner.prompt_tokens.load(Ordering::Relaxed),
                inner.completion_tokens.load(Ordering::Relaxed),
            )
        })
    }
}

/// The method's label: standard methods by name, anything else as `OTHER`, so a client
/// inventing methods cannot create series without bound.
fn method_label(method: &Method) -> &'static str {
    const STANDARD: [&str; 9] = [
        "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE",
    ];
    STANDARD
        .into_iter()
        .find(|standard| *standard == method.as_str())
        .unwrap_or("OTHER")
}

/// Adds the span, the latency metrics and the access log line to every route.
#[derive(Debug, Clone)]
pub struct LatencyLayer {
    metrics: Arc<Metrics>,
}

impl LatencyLayer {
    /// Records into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        LatencyLayer { metrics }
    }
}

impl<S> Layer<S> for LatencyLayer {
    type Service = LatencyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LatencyService {
            inner,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

/// A route wrapped by [`LatencyLayer`].
#[derive(Debug, Clone)]
pub struct LatencyService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S> Service<Request> for LatencyService<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let started = Instant::now();
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map_or(UNMATCHED_ROUTE, MatchedPath::as_str)
            .to_owned();
        let method = method_label(request.method()).to_owned();
        let path = request.uri().path().to_owned();
        let request_id = request
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let span = tracing::info_span!(
            "request",
            method = %method,
            route = %route,
            request_id = %request_id,
            agent_id = tracing::field::Empty,
        );
        let record = RequestRecord::default();
        request.extensions_mut().insert(record.clone());
        let head = request.method() == Method::HEAD;
        let response = self.inner.call(request).instrument(span.clone());
        // Until the response exists, dropping this (the client left) records the request.
        let mut waiting = WaitingForResponse(Some(Access {
            metrics: Arc::clone(&self.metrics),
            route,
            method,
            status: CLIENT_CLOSED_REQUEST,
            path,
            request_id,
            record,
            started,
            span,
        }));
        Box::pin(async move {
            let response = response.await?;
            let Some(mut access) = waiting.0.take() else {
                return Ok(response);
            };
            access.status = response.status().as_u16();
            if head {
                // axum drops a HEAD response's body after this layer: it ends here.
                access.finish(BodyOutcome::Completed, None);
                return Ok(response);
            }
            let streaming = response
                .headers()
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
            let (parts, body) = response.into_parts();
            let body = TimedBody {
                inner: body,
                access: Some(access),
                streaming,
                first_byte: None,
            };
            Ok(Response::from_parts(parts, Body::new(body)))
        })
    }
}

/// The status recorded for a request whose client left before the response was ready
/// (nginx's "client closed request"), with outcome `disconnected`.
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

/// Everything needed to account for a request once its body ends.
struct Access {
    metrics: Arc<Metrics>,
    route: String,
    method: String,
    status: u16,
    path: String,
    request_id: String,
    record: RequestRecord,
    started: Instant,
    span: tracing::Span,
}

/// Holds the request's account while the handler runs; a drop with it still inside means
/// the client went away first.
struct WaitingForResponse(Option<Access>);

impl Drop for WaitingForResponse {
    fn drop(&mut self) {
        if let Some(access) = self.0.take() {
            access.finish(BodyOutcome::Disconnected, None);
        }
    }
}

/// Logs one line per request; health checks and scrapes only at debug level, so they do
/// not drown the rest.
macro_rules! access_line {
    ($level:expr, $($field:tt)*) => {
        if $level == tracing::Level::INFO {
            tracing::info!(target: "mlx_serve::access", parent: None, $($field)*);
        } else {
            tracing::debug!(target: "mlx_serve::access", parent: None, $($field)*);
        }
    };
}

impl Access {
    fn finish(self, outcome: BodyOutcome, first_byte: Option<Duration>) {
        let total = self.started.elapsed();
        let usage = self.record.usage();
        let level = if self.route.starts_with("/health") || self.route == "/metrics" {
            tracing::Level::DEBUG
        } else {
            tracing::Level::INFO
        };
        access_line!(
            level,
            request_id = %self.request_id,
            method = %self.method,
            route = %self.route,
            path = %self.path,
            status = self.status,
            latency_ms = millis(total),
            first_byte_ms = first_byte.map(millis),
            outcome = outcome.as_str(),
            prompt_tokens = usage.map(|u| u.0),
            completion_tokens = usage.map(|u| u.1),
            agent_id = self.record.0.agent_id.get().map(String::as_str),
            "request"
        );
        drop(self.span);
        let key = RouteKey {
            route: self.route,
            method: self.method,
            status_class: status_class(self.status),
        };
        self.metrics.http.record(key, total, outcome, first_byte);
    }
}

/// Milliseconds to the microsecond, for log lines.
fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e6).round() / 1e3
}

/// The response body, timed: first data frame (streams) and end (completed or abandoned).
struct TimedBody {
    inner: Body,
    /// Taken when the body ends.
    access: Option<Access>,
    streaming: bool,
    first_byte: Option<Duration>,
}

impl TimedBody {
    fn end(&mut self, outcome: BodyOutcome) {
        if let Some(access) = self.access.take() {
            access.finish(outcome, self.first_byte);
        }
    }
}

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        // The body's work (a stream's generation) is part of the request.
        let span = this.access.as_ref().map(|a| a.span.clone());
        let _entered = span.as_ref().map(tracing::Span::enter);
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if this.streaming && this.first_byte.is_none() && frame.is_data() {
                    this.first_byte = this.access.as_ref().map(|a| a.started.elapsed());
                }
                // A body that knows it is done may not be polled again.
                if this.inner.is_end_stream() {
                    this.end(BodyOutcome::Completed);
                }
            }
            Poll::Ready(None) => this.end(BodyOutcome::Completed),
            // The body failed: the connection is cut, the client never got it all.
            Poll::Ready(Some(Err(_))) => this.end(BodyOutcome::Disconnected),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TimedBody {
    fn drop(&mut self) {
        // Dropped before its end was seen: an empty body (never polled), or a client that
        // went away.
        let outcome = if http_body::Body::is_end_stream(&self.inner) {
            BodyOutcome::Completed
        } else {
            BodyOutcome::Disconnected
        };
        self.end(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invented_methods_share_one_label() {
        assert_eq!(method_label(&Method::POST), "POST");
        assert_eq!(method_label(&Method::OPTIONS), "OPTIONS");
        let invented = Method::from_bytes(b"BREW").unwrap();
        assert_eq!(method_label(&invented), "OTHER");
    }
}
