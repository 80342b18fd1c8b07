//! The HTTP server (axum): `/metrics`, `/healthz`, `/readyz`, the read API under
//! `/api/v1`, and the KEDA metrics-api JSON at `/api/v1/keda/{namespace}/{name}`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::actuator::Unpublished;
use crate::app::Shared;

/// Content type of the OpenMetrics exposition.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The router; tests call it without a socket.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/v1/workloads", get(workloads))
        .route("/api/v1/workloads/{namespace}/{name}", get(workload))
        .route("/api/v1/keda/{namespace}/{name}", get(keda_metric))
        .with_state(shared)
}

/// Content type of the classic Prometheus text format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

async fn metrics(State(s): State<Arc<Shared>>, headers: axum::http::HeaderMap) -> Response {
    let wants_openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    if wants_openmetrics {
        ([(header::CONTENT_TYPE, OPENMETRICS)], s.metrics.encode()).into_response()
    } else {
        (
            [(header::CONTENT_TYPE, TEXT_FORMAT)],
            s.metrics.encode_text(),
        )
            .into_response()
    }
}

async fn readyz(State(s): State<Arc<Shared>>) -> Response {
    if s.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "first loop not finished\n").into_response()
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

async fn workloads(State(s): State<Arc<Shared>>) -> Response {
    match s.views.read() {
        Ok(v) => axum::Json(v.values().cloned().collect::<Vec<_>>()).into_response(),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
    }
}

async fn workload(
    State(s): State<Arc<Shared>>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    let key = format!("{namespace}/{name}");
    match s.views.read() {
        Ok(v) => match v.get(&key) {
            Some(w) => axum::Json(w.clone()).into_response(),
            None => error(StatusCode::NOT_FOUND, "no such workload"),
        },
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
    }
}

/// The KEDA `metrics-api` endpoint: `{"desired_replicas": N, ...}` for a trigger with
/// `valueLocation: desired_replicas` and `targetValue: "1"`. Missing or stale data is a 503
/// (KEDA counts a failure; its fallback applies), never a zero.
async fn keda_metric(
    State(s): State<Arc<Shared>>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    let key = format!("{namespace}/{name}");
    match s.board.get(&key) {
        Ok(p) => axum::Json(p).into_response(),
        Err(e @ Unpublished::Unknown(_)) => error(StatusCode::NOT_FOUND, &e.to_string()),
        Err(e @ Unpublished::NotAuto { .. }) => error(StatusCode::CONFLICT, &e.to_string()),
        Err(e @ Unpublished::Unavailable { .. }) => {
            error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
        }
    }
}
