//! The review page at `/` (filled in below).

use std::sync::Arc;

use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};

use super::ApiState;

pub async fn index(State(_s): State<Arc<ApiState>>) -> Response {
    Html("<!doctype html><title>prescale</title>").into_response()
}
