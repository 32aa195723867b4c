//! The OpenAI-compatible HTTP layer on axum: routes, middleware (request ids, latency
//! metrics with tracing spans and access log lines, the allowed hosts, CORS, body limit,
//! API keys, refusal while loading or draining), errors in OpenAI's envelope, health and
//! metrics endpoints, and the server (accept loop, connection limits, graceful shutdown). No model or MLX types here: the
//! engine is reached only through [`crate::engine::EngineHandle`].

pub mod admin;
pub mod agent;
pub mod auth;
pub mod connection;
pub mod error;
pub mod health;
pub mod host;
pub mod json;
pub mod latency;
pub mod metrics;
pub mod openai;
pub mod request_id;
pub mod server;
pub mod shutdown;
pub mod state;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower::ServiceBuilder;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

use crate::config::ServeSettings;
use crate::metrics::engine::Rejection;
use error::ApiError;
use host::AllowedHosts;
use latency::LatencyLayer;
use openai::{handlers, models};
use state::AppState;

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The whole application: every route with its middleware.
pub fn router(state: AppState, settings: &ServeSettings) -> Router {
    let v1 = Router::new()
        .route("/v1/chat/completions", post(handlers::chat_completions))
        .route("/v1/completions", post(handlers::completions))
        .route("/v1/models", get(models::list))
        // Hub ids contain a slash (`org/name`).
        .route("/v1/models/{*id}", get(models::retrieve))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            refuse_unless_serving,
        ))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_api_key,
        ));
    let mut observability = Router::new()
        .route("/metrics", get(metrics::prometheus))
        .route("/v1/stats", get(metrics::stats));
    if settings.metrics_require_api_key {
        observability = observability.route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_api_key,
        ));
    }
    let mut app = v1.merge(observability);
    if settings.admin_key.is_some() {
        app = app.merge(admin::routes().route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_admin_key,
        )));
    }
    let request_id = HeaderName::from_static(REQUEST_ID_HEADER);
    let mut app = app
        .merge(health::routes())
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(settings.max_body_bytes))
        .with_state(state.clone());
    if let Some(cors) = cors_layer(&settings.cors_origin) {
        app = app.layer(cors);
    }
    let allowed_hosts = Arc::new(AllowedHosts::new(&settings.host, &settings.allowed_host));
    app.layer(middleware::from_fn_with_state(
        allowed_hosts,
        host::check_host,
    ))
    .layer(
        ServiceBuilder::new()
            .map_request(request_id::drop_unacceptable)
            .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
            .layer(PropagateRequestIdLayer::new(request_id))
            .layer(LatencyLayer::new(Arc::clone(state.metrics()))),
    )
}

/// CORS for the configured origins (`*` = any); `None` when none are configured.
fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|origin| HeaderValue::from_str(origin).ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers(Any)
            .expose_headers([
                HeaderName::from_static(REQUEST_ID_HEADER),
                header::RETRY_AFTER,
            ]),
    )
}

/// Middleware: until the model has loaded, and once shutdown began, generation and model
/// requests get 503 (counted as rejections).
async fn refuse_unless_serving(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let refusal = if state.is_draining() {
        Some((Rejection::Draining, ApiError::draining()))
    } else if state.engine().is_err() {
        Some((Rejection::Loading, ApiError::loading()))
    } else {
        None
    };
    if let Some((reason, error)) = refusal {
        state.metrics().engine.record_rejection(reason);
        return error.into_response();
    }
    next.run(request).await
}

async fn route_not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::route_not_found(method.as_str(), uri.path())
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::method_not_allowed(method.as_str(), uri.path())
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request as HttpRequest, StatusCode};
    use tower::ServiceExt;

    use super::*;

    /// The router of a server whose model has not loaded yet.
    fn app(args: &[&str]) -> Router {
        let settings = crate::config::parse_args(args).expect("valid arguments");
        router(AppState::new(&settings), &settings)
    }

    async fn get(app: &Router, path: &str, key: Option<&str>) -> (StatusCode, String) {
        let mut request = HttpRequest::get(path);
        if let Some(key) = key {
            request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
        }
        let response = app
            .clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn metrics_answer_while_loading_and_count_the_refusals() {
        let app = app(&[]);
        let (status, body) = get(&app, "/health/ready", None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("\"loading\""), "{body}");
        let refused = app
            .clone()
            .oneshot(
                HttpRequest::post("/v1/completions")
                    .body(Body::from("{}"))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        // The refusal's body is read (and the request recorded) before the scrape.
        axum::body::to_bytes(refused.into_body(), usize::MAX)
            .await
            .unwrap();
        let (status, metrics) = get(&app, "/metrics", None).await;
        assert_eq!(status, StatusCode::OK);
        for line in [
            "mlx_serve_model_loaded 0",
            "mlx_serve_ready 0",
            "mlx_serve_requests_rejected_total{reason=\"loading\"} 1",
            "mlx_serve_http_requests_total{route=\"/v1/completions\",method=\"POST\",status_class=\"5xx\"} 1",
        ] {
            assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
        }
        let (status, stats) = get(&app, "/v1/stats", None).await;
        assert_eq!(status, StatusCode::OK);
        let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
        assert_eq!(stats["model"], serde_json::Value::Null);
        assert_eq!(stats["rejected"]["loading"], 1);
    }

    #[tokio::test]
    async fn metrics_can_require_an_api_key() {
        let open = app(&["--api-key", "k1"]);
        assert_eq!(get(&open, "/metrics", None).await.0, StatusCode::OK);
        assert_eq!(
            get(&open, "/v1/models", None).await.0,
            StatusCode::UNAUTHORIZED
        );
        let closed = app(&["--api-key", "k1", "--metrics-require-api-key"]);
        for path in ["/metrics", "/v1/stats"] {
            assert_eq!(
                get(&closed, path, None).await.0,
                StatusCode::UNAUTHORIZED,
                "{path}"
            );
            assert_eq!(get(&closed, path, Some("k1")).await.0, StatusCode::OK);
        }
        // Health stays open.
        assert_eq!(get(&closed, "/health/live", None).await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn head_requests_are_recorded_as_completed() {
        let app = app(&[]);
        let response = app
            .clone()
            .oneshot(
                HttpRequest::head("/health/live")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        drop(response);
        let (_, metrics) = get(&app, "/metrics", None).await;
        let line = "mlx_serve_http_request_duration_seconds_count{route=\"/health/live\",\
                    method=\"HEAD\",status_class=\"2xx\",outcome=\"completed\"} 1";
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
}
