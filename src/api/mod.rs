//! The OpenAI-compatible HTTP layer on axum: routes, middleware (request ids, tracing
//! spans, CORS, body limit, API keys, refusal while draining), errors in OpenAI's
//! envelope, and the server with its graceful shutdown. No model or MLX types here: the
//! engine is reached only through [`crate::engine::EngineHandle`].

pub mod agent;
pub mod auth;
pub mod error;
pub mod health;
pub mod json;
pub mod openai;
pub mod server;
pub mod shutdown;
pub mod state;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower::ServiceBuilder;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnFailure, DefaultOnResponse, TraceLayer};

use crate::config::ServeSettings;
use error::ApiError;
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
            refuse_while_draining,
        ))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_api_key,
        ));
    let request_id = HeaderName::from_static(REQUEST_ID_HEADER);
    let mut app = v1
        .merge(health::routes())
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(settings.max_body_bytes))
        .with_state(state);
    if let Some(cors) = cors_layer(&settings.cors_origin) {
        app = app.layer(cors);
    }
    app.layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(|request: &Request| {
                        let id = request
                            .headers()
                            .get(REQUEST_ID_HEADER)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default();
                        tracing::info_span!(
                            "request",
                            method = %request.method(),
                            path = %request.uri().path(),
                            request_id = %id,
                            agent_id = tracing::field::Empty,
                        )
                    })
                    .on_response(DefaultOnResponse::new().level(tracing::Level::INFO))
                    // 5xx are answered on purpose (503 while loading or draining); real
                    // faults are logged where they happen.
                    .on_failure(DefaultOnFailure::new().level(tracing::Level::WARN)),
            )
            .layer(PropagateRequestIdLayer::new(request_id)),
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

/// Middleware: once shutdown began, new generation and model requests get 503.
async fn refuse_while_draining(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if state.is_draining() {
        return ApiError::draining().into_response();
    }
    next.run(request).await
}

async fn route_not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::route_not_found(method.as_str(), uri.path())
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::method_not_allowed(method.as_str(), uri.path())
}
