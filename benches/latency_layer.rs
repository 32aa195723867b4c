//! What the latency layer costs per request: the same trivial route served with and
//! without it (span, per-route histograms, the timed body, the access log line written by
//! a real formatter into a sink). The difference is the layer's overhead; the goal is
//! well under 50 µs. No model.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use mlx_serve::api::latency::LatencyLayer;
use mlx_serve::metrics::Metrics;
use tower::ServiceExt;

async fn hello() -> &'static str {
    "{\"status\":\"ok\"}"
}

fn app(with_layer: bool) -> Router {
    let app = Router::new().route("/v1/things/{id}", get(hello));
    if with_layer {
        app.layer(LatencyLayer::new(Arc::new(Metrics::default())))
    } else {
        app
    }
}

async fn one_request(app: &Router) {
    let response = app
        .clone()
        .oneshot(Request::get("/v1/things/7").body(Body::empty()).unwrap())
        .await
        .unwrap();
    axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
}

fn latency_layer(c: &mut Criterion) {
    // Access lines are formatted as in production (info level), then thrown away.
    tracing_subscriber::fmt()
        .with_writer(std::io::sink)
        .with_max_level(tracing::Level::INFO)
        .init();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("latency_layer");
    for (name, with_layer) in [("without", false), ("with", true)] {
        let app = app(with_layer);
        group.bench_function(name, |b| b.iter(|| runtime.block_on(one_request(&app))));
    }
    group.finish();
}

criterion_group!(benches, latency_layer);
criterion_main!(benches);
