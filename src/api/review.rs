//! The review API under `/api/v1`: recommendations and decisions, the audit log, forecasts
//! with quantiles (JSON and CSV), pause, pin and scheduled overrides. Every write is durable
//! and audited before it answers 2xx.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ApiState;
use super::auth::{ApiError, Identity, JsonBody, Principal, Role};
use crate::config::{is_dns_label, is_dns_subdomain};
use crate::domain::Timestamp;
use crate::store::{
    AuditEntry, ControlChange, Controls, Override, RecFilter, RecState, Recommendation, Store,
    StoreError, new_id,
};

type ApiResult<T> = Result<T, ApiError>;

fn store(s: &ApiState) -> ApiResult<&Store> {
    s.shared
        .store
        .get()
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the store is not open yet"))
}

/// Maps store errors; a 5xx says nothing of internals (the details go to the log).
fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound => ApiError::new(StatusCode::NOT_FOUND, "no such recommendation"),
        StoreError::Conflict(state) => ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "the recommendation is {} and cannot be changed",
                state.as_str()
            ),
        ),
        other => {
            tracing::error!(error = %other, "Store error");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store unavailable")
        }
    }
}

/// A workload key from path parts, checked before anything else uses them.
fn workload_key(s: &ApiState, namespace: &str, name: &str) -> ApiResult<String> {
    if !is_dns_label(namespace) || !is_dns_subdomain(name) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "namespace or name is not a valid Kubernetes name",
        ));
    }
    let key = format!("{namespace}/{name}");
    let known = s
        .shared
        .views
        .read()
        .map(|v| v.contains_key(&key))
        .unwrap_or(false);
    if known {
        Ok(key)
    } else {
        Err(ApiError::new(StatusCode::NOT_FOUND, "no such workload"))
    }
}

fn check_id(id: &str) -> ApiResult<()> {
    if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no such recommendation",
        ))
    }
}

fn page(s: &ApiState, limit: Option<u32>, offset: Option<u32>) -> ApiResult<(u32, u32)> {
    let limit = limit.unwrap_or(50.min(s.max_page));
    if limit == 0 || limit > s.max_page {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("limit must be in 1..={}", s.max_page),
        ));
    }
    let offset = offset.unwrap_or(0);
    if offset > 1_000_000 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "offset must be at most 1000000",
        ));
    }
    Ok((limit, offset))
}

/// A workload in a path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct WorkloadPath {
    /// Namespace (a DNS-1123 label).
    #[param(pattern = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", max_length = 63)]
    pub namespace: String,
    /// Workload name (a DNS-1123 subdomain).
    #[param(
        pattern = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$",
        max_length = 253
    )]
    pub name: String,
}

/// A recommendation id in a path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct IdPath {
    /// Recommendation id: 32 hexadecimal digits.
    #[param(pattern = "^[0-9a-f]{32}$")]
    pub id: String,
}

/// Query strings that do not parse are a 400 with a JSON body, like every other error.
pub fn bad_query(e: axum::extract::rejection::QueryRejection) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, e.body_text())
}

/// Paths that do not parse (invalid UTF-8) are a 400 with a JSON body.
pub fn bad_path(e: axum::extract::rejection::PathRejection) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, e.body_text())
}

type Q<T> = Result<Query<T>, axum::extract::rejection::QueryRejection>;
type P<T> = Result<Path<T>, axum::extract::rejection::PathRejection>;

/// Filters of `GET /api/v1/recommendations`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RecQuery {
    /// Only this state.
    #[param(value_type = Option<RecState>)]
    pub state: Option<String>,
    /// Only this namespace.
    #[param(pattern = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", max_length = 63)]
    pub namespace: Option<String>,
    /// Only this workload.
    #[param(
        pattern = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$",
        max_length = 253
    )]
    pub workload: Option<String>,
    /// Page size (default 50; at most `api.max_page_size`, 200 by default).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// Entries skipped.
    #[param(minimum = 0, maximum = 1000000)]
    pub offset: Option<u32>,
}

/// Lists recommendations, newest first.
#[utoipa::path(get, path = "/api/v1/recommendations", params(RecQuery),
    responses((status = 400, body = ApiError), (status = 200, body = [Recommendation]), (status = 401, body = ApiError), (status = 422, body = ApiError)),
    security(("bearer" = [])), tag = "recommendations")]
pub async fn list(
    State(s): State<Arc<ApiState>>,
    caller: Identity,
    q: Q<RecQuery>,
) -> ApiResult<Response> {
    let Query(q) = q.map_err(bad_query)?;
    s.tokens.permit(&caller, Role::Viewer)?;
    let (limit, offset) = page(&s, q.limit, q.offset)?;
    let state = match q.state.as_deref() {
        None => None,
        Some(v) => Some(
            RecState::parse(v)
                .ok_or_else(|| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "unknown state"))?,
        ),
    };
    if q.namespace.as_deref().is_some_and(|n| !is_dns_label(n))
        || q.workload.as_deref().is_some_and(|w| !is_dns_subdomain(w))
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "namespace or workload is not a valid Kubernetes name",
        ));
    }
    let f = RecFilter {
        state,
        namespace: q.namespace,
        workload: q.workload,
        limit,
        offset,
    };
    let recs = store(&s)?.list(&f).await.map_err(store_error)?;
    Ok(axum::Json(recs).into_response())
}

/// One recommendation.
#[utoipa::path(get, path = "/api/v1/recommendations/{id}", params(IdPath),
    responses((status = 400, body = ApiError), (status = 200, body = Recommendation), (status = 401, body = ApiError), (status = 404, body = ApiError)),
    security(("bearer" = [])), tag = "recommendations")]
pub async fn get_one(
    State(s): State<Arc<ApiState>>,
    caller: Identity,
    path: P<String>,
) -> ApiResult<Response> {
    let Path(id) = path.map_err(bad_path)?;
    s.tokens.permit(&caller, Role::Viewer)?;
    check_id(&id)?;
    let rec = store(&s)?.get(&id).await.map_err(store_error)?;
    Ok(axum::Json(rec).into_response())
}

/// Body of approve and reject.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionBody {
    /// Why (kept in the audit log), at most 2000 characters.
    #[schema(max_length = 2000)]
    pub comment: Option<String>,
}

/// The answer to a decision.
#[derive(Debug, Serialize, ToSchema)]
pub struct DecisionResult {
    /// The recommendation after the decision.
    pub recommendation: Recommendation,
    /// False when the same decision had already been made (nothing changed, nothing audited).
    pub changed: bool,
}

async fn decide(
    s: &ApiState,
    caller: &Identity,
    id: &str,
    body: JsonBody<DecisionBody>,
    to: RecState,
) -> ApiResult<Response> {
    let who: Principal = s.tokens.permit(caller, Role::Approver)?;
    let body = body.0?;
    check_id(id)?;
    if body
        .comment
        .as_ref()
        .is_some_and(|c| c.chars().count() > 2000)
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "comment longer than 2000 characters",
        ));
    }
    let (rec, changed) = store(s)?
        .decide(id, to, &who.name, body.comment.as_deref(), s.shared.now())
        .await
        .map_err(store_error)?;
    if changed && to == RecState::Approved {
        // Durable now; the loop applies it at once rather than at its next tick.
        s.shared.approvals.notify_one();
    }
    Ok(axum::Json(DecisionResult {
        recommendation: rec,
        changed,
    })
    .into_response())
}

/// Approves a pending recommendation. The replica that took the approval applies it at
/// once (after a loop in progress); with `actuator: scale` and a Lease, the holder applies
/// it, at its next loop if the approval reached another replica. Approving it again is a
/// no-op; approving a rejected, expired or superseded one is a 409.
#[utoipa::path(post, path = "/api/v1/recommendations/{id}/approve", params(IdPath),
    request_body(content = DecisionBody, content_type = "application/json"),
    responses((status = 415, body = ApiError), (status = 400, body = ApiError), (status = 200, body = DecisionResult), (status = 401, body = ApiError), (status = 403, body = ApiError),
        (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 413, body = ApiError), (status = 422, body = ApiError)),
    security(("bearer" = [])), tag = "recommendations")]
pub async fn approve(
    State(s): State<Arc<ApiState>>,
    caller: Identity,
    path: P<String>,
    body: JsonBody<DecisionBody>,
) -> ApiResult<Response> {
    let Path(id) = path.map_err(bad_path)?;
    decide(&s, &caller, &id, body, RecState::Approved).await
}

/// Rejects a pending recommendation.
#[utoipa::path(post, path = "/api/v1/recommendations/{id}/reject", params(IdPath),
    request_body(content = DecisionBody, content_type = "application/json"),
    responses((status = 415, body = ApiError), (status = 400, body = ApiError), (status = 200, body = DecisionResult), (status = 401, body = ApiError), (status = 403, body = ApiError),
        (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 413, body = ApiError), (status = 422, body = ApiError)),
    security(("bearer" = [])), tag = "recommendations")]
pub async fn reject(
    State(s): State<Arc<ApiState>>,
    caller: Identity,
    path: P<String>,
    body: JsonBody<DecisionBody>,
) -> ApiResult<Response> {
    let Path(id) = path.map_err(bad_path)?;
    decide(&s, &caller, &id, body, RecState::Rejected).await
}

/// Paging of the audit log.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only entries about this recommendation id or `namespace/workload`.
    #[param(max_length = 512)]
    pub target: Option<String>,
    /// Page size (default 50; at most `api.max_page_size`, 200 by default).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// Entries skipped.
    #[param(minimum = 0, maximum = 1000000)]
    pub offset: Option<u32>,
}

/// The audit log, newest first.
#[utoipa::path(get, path = "/api/v1/audit", params(AuditQuery),
    responses((status = 400, body = ApiError), (status = 200, body = [AuditEntry]), (status = 401, body = ApiError), (status = 422, body = ApiError)),
    security(("bearer" = [])), tag = "audit")]
pub async fn audit(
    State(s): State<Arc<ApiState>>,
    caller: Identity,
    q: Q<AuditQuery>,
) -> ApiResult<Response> {
    let Query(q) = q.map_err(bad_query)?;
    s.tokens.permit(&caller, Role::Viewer)?;
    let (limit, offset) = page(&s, q.limit, q.offset)?;
    if q.target.as_ref().is_some_and(|t| t.len() > 512) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "target too long",
        ));
    }
    let entries = store(&s)?
        .audit_log(q.target.as_deref(), limit, offset)
        .await
        .map_err(store_error)?;
    Ok(axum::Json(entries).into_response())
}

/// Forecast query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ForecastQuery {
    /// How far ahead, e.g. `6h` (default `24h`, at most `48h`).
    #[param(pattern = "^[1-9][0-9]{0,5}(s|m|h)$")]
    pub horizon: Option<String>,
    /// `json` (default) or `csv`.
    #[param(pattern = "^(json|csv)$")]
    pub format: Option<String>,
}

/// One future step.
#[derive(Debug, Serialize, ToSchema)]
pub struct ForecastPoint {
    /// Time (Unix seconds).
    pub at: Timestamp,
    /// Point forecast.
    pub point: f64,
    /// Calibrated upper quantile (the workload's `quantile`).
    pub upper: f64,
    /// Calibrated quantiles by level (`"0.5"` to `"0.995"`).
    pub quantiles: BTreeMap<String, f64>,
}

/// A workload's forecast.
#[derive(Debug, Serialize, ToSchema)]
pub struct ForecastPoints {
    /// Namespace.
    pub namespace: String,
    /// Workload.
    pub workload: String,
    /// Time of the last sample used.
    pub origin: Timestamp,
    /// Seconds between points.
    pub step: u64,
    /// Model.
    pub model: String,
    /// Level of `upper`.
    pub quantile: f64,
    /// The points.
    pub points: Vec<ForecastPoint>,
}

/// A workload's forecast with quantiles, up to 48 hours ahead, as JSON or CSV.
#[utoipa::path(get, path = "/api/v1/workloads/{namespace}/{name}/forecast",
    params(WorkloadPath, ForecastQuery),
    responses((status = 401, body = ApiError), (status = 200, description = "The forecast (JSON, or CSV with `format=csv`)", content((ForecastPoints = "application/json"), (String = "text/csv"))),
        (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 422, body = ApiError), (status = 503, description = "Warming up: the loop has not yet forecast from the workload's latest sample.", body = ApiError)),
    security(("bearer" = [])), tag = "workloads")]
pub async fn forecast(
    State(s): State<Arc<ApiState>>,
    caller: Identity,
    path: P<(String, String)>,
    q: Q<ForecastQuery>,
) -> ApiResult<Response> {
    let Path((namespace, name)) = path.map_err(bad_path)?;
    let Query(q) = q.map_err(bad_query)?;
    s.tokens.permit(&caller, Role::Viewer)?;
    let key = workload_key(&s, &namespace, &name)?;
    let horizon = match q.horizon.as_deref() {
        None => 86_400,
        Some(h) => humantime::parse_duration(h)
            .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("horizon: {e}")))?
            .as_secs(),
    };
    if horizon == 0 || horizon > 48 * 3600 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "horizon must be in (0, 48h]",
        ));
    }
    let csv = match q.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "format must be json or csv",
            ));
        }
    };
    let step = s
        .shared
        .views
        .read()
        .ok()
        .and_then(|v| {
            v.get(&key)
                .and_then(|w| w.forecast.as_ref().map(|f| f.step))
        })
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no forecast yet (warming up)",
            )
        })?;
    let steps = horizon.div_ceil(step.max(1)) as usize;
    let shared = s.shared.clone();
    let k = key.clone();
    let f = tokio::task::spawn_blocking(move || shared.forecaster.get().and_then(|f| f(&k, steps)))
        .await
        .ok()
        .flatten()
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no forecast yet (warming up)",
            )
        })?;
    let points: Vec<ForecastPoint> = (0..f.point.len())
        .map(|k| ForecastPoint {
            at: f.at(k),
            point: f.point[k],
            upper: f.upper[k],
            quantiles: f
                .bands
                .iter()
                .filter_map(|b| Some((format!("{}", b.level), *b.values.get(k)?)))
                .collect(),
        })
        .collect();
    if csv {
        let levels: Vec<String> = f.bands.iter().map(|b| format!("q{}", b.level)).collect();
        let mut out = format!("timestamp,point,upper,{}\n", levels.join(","));
        for p in &points {
            let qs: Vec<String> = p.quantiles.values().map(|v| format!("{v:.4}")).collect();
            out += &format!("{},{:.4},{:.4},{}\n", p.at, p.point, p.upper, qs.join(","));
        }
        return Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], out).into_response());
    }
    Ok(axum::Json(ForecastPoints {
        namespace,
        workload: name,
        origin: f.origin,
        step: f.step,
        model: f.model.to_string(),
        quantile: f.quantile,
        points,
    })
    .into_response())
}

async fn set_controls(
    s: &ApiState,
    caller: &Identity,
    namespace: &str,
    name: &str,
    action: &str,
    change: ControlChange,
) -> ApiResult<Response> {
    let who = s.tokens.permit(caller, Role::Admin)?;
    let key = workload_key(s, namespace, name)?;
    let c = store(s)?
        .change_controls(namespace, name, change, &who.name, action, s.shared.now())
        .await
        .map_err(store_error)?;
    s.shared.set_controls(key, c.clone());
    Ok(axum::Json(c).into_response())
}

/// Pauses a workload: nothing is recommended or applied until it is resumed.
#[utoipa::path(post, path = "/api/v1/workloads/{namespace}/{name}/pause",
    params(WorkloadPath),
    responses((status = 400, body = ApiError), (status = 200, body = Controls), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)),
    security(("bearer" = [])), tag = "workloads")]
pub async fn pause(
    State(s): State<Arc<ApiState>>,
    caller: Identity,
    path: P<(String, String)>,
) -> ApiResult<Response> {
    let Path((namespace, name)) = path.map_err(bad_path)?;
    set_controls(
        &s,
        &caller,
        &namespace,
        &name,
        "pause",
        ControlChange::Paused(true),
    )
    .await
}

/// Resumes a paused workload.
#[utoipa::path(post, path = "/api/v1/workloads/{namespace}/{name}/resume",
    params(WorkloadPath),
    responses((status = 400, body = ApiError), (status = 200, body = Controls), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)),
    security(("bearer" = [])), tag = "workloads")]
pub async fn resume(
    State(s): State<Arc<ApiState>>,
    caller: Identity,
    path: P<(String, String)>,
) -> ApiResult<Response> {
    let Path((namespace, name)) = path.map_err(bad_path)?;
    set_controls(
        &s,
        &caller,
        &namespace,
        &name,
        "resume",
        ControlChange::Paused(false),
    )
    .await
}

/// Body of a pin.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PinBody {
    /// Replicas to hold (min/max still apply).
    #[schema(maximum = 100000)]
    pub replicas: u32,
    /// Until when (Unix seconds, on the loop's clock).
    pub until: Timestamp,
}

/// Pins a workload's replicas until a time.
#[utoipa::path(put, path = "/api/v1/workloads/{namespace}/{name}/pin",
    params(WorkloadPath),
    request_body(content = PinBody, content_type = "application/json"),
    responses((status = 415, body = ApiError), (status = 400, body = ApiError), (status = 200, body = Controls), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 422, body = ApiError)),
    security(("bearer" = [])), tag = "workloads")]
pub async fn pin(
    State(s): State<Arc<ApiState>>,
    caller: Identity,
    path: P<(String, String)>,
    body: JsonBody<PinBody>,
) -> ApiResult<Response> {
    let Path((namespace, name)) = path.map_err(bad_path)?;
    s.tokens.permit(&caller, Role::Admin)?;
    let b = body.0?;
    if b.replicas > 100_000 || b.until <= s.shared.now() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "replicas must be at most 100000 and until in the future",
        ));
    }
    set_controls(
        &s,
        &caller,
        &namespace,
        &name,
        "pin",
        ControlChange::Pin(Some((b.replicas, b.until))),
    )
    .await
}

/// Removes a pin.
#[utoipa::path(delete, path = "/api/v1/workloads/{namespace}/{name}/pin",
    params(WorkloadPath),
    responses((status = 400, body = ApiError), (status = 200, body = Controls), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)),
    security(("bearer" = [])), tag = "workloads")]
pub async fn unpin(
    State(s): State<Arc<ApiState>>,
    caller: Identity,
    path: P<(String, String)>,
) -> ApiResult<Response> {
    let Path((namespace, name)) = path.map_err(bad_path)?;
    set_controls(
        &s,
        &caller,
        &namespace,
        &name,
        "unpin",
        ControlChange::Pin(None),
    )
    .await
}

/// Body of a new scheduled override.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OverrideBody {
    /// Replicas at least while a window is open.
    #[schema(maximum = 100000)]
    pub min_replicas: u32,
    /// Five-field cron expression of window starts, e.g. `0 9 * * 1-5`.
    #[schema(pattern = "^\\S+( \\S+){4}$", max_length = 200)]
    pub cron: String,
    /// IANA time zone, e.g. `Europe/Paris`.
    #[schema(pattern = "^[A-Za-z]+(/[A-Za-z0-9_+-]+)*$", max_length = 64)]
    pub timezone: String,
    /// Window length, seconds (60 to 604800).
    #[schema(minimum = 60, maximum = 604800)]
    pub duration_seconds: u64,
}

/// A workload's scheduled overrides.
#[utoipa::path(get, path = "/api/v1/workloads/{namespace}/{name}/overrides",
    params(WorkloadPath),
    responses((status = 400, body = ApiError), (status = 200, body = [Override]), (status = 401, body = ApiError), (status = 404, body = ApiError)),
    security(("bearer" = [])), tag = "workloads")]
pub async fn overrides(
    State(s): State<Arc<ApiState>>,
    caller: Identity,
    path: P<(String, String)>,
) -> ApiResult<Response> {
    let Path((namespace, name)) = path.map_err(bad_path)?;
    s.tokens.permit(&caller, Role::Viewer)?;
    workload_key(&s, &namespace, &name)?;
    let list = store(&s)?
        .overrides(&namespace, &name)
        .await
        .map_err(store_error)?;
    Ok(axum::Json(list).into_response())
}

async fn refresh_overrides(s: &ApiState, namespace: &str, name: &str) -> ApiResult<()> {
    let list = store(s)?
        .overrides(namespace, name)
        .await
        .map_err(store_error)?;
    if let Ok(mut m) = s.shared.overrides.write() {
        m.insert(format!("{namespace}/{name}"), list);
    }
    Ok(())
}

/// Adds a scheduled override: a minimum of replicas during a recurring window.
#[utoipa::path(post, path = "/api/v1/workloads/{namespace}/{name}/overrides",
    params(WorkloadPath),
    request_body(content = OverrideBody, content_type = "application/json"),
    responses((status = 415, body = ApiError), (status = 400, body = ApiError), (status = 201, body = Override), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 422, body = ApiError)),
    security(("bearer" = [])), tag = "workloads")]
pub async fn add_override(
    State(s): State<Arc<ApiState>>,
    caller: Identity,
    path: P<(String, String)>,
    body: JsonBody<OverrideBody>,
) -> ApiResult<Response> {
    let Path((namespace, name)) = path.map_err(bad_path)?;
    let who = s.tokens.permit(&caller, Role::Admin)?;
    let b = body.0?;
    workload_key(&s, &namespace, &name)?;
    if b.cron.len() > 200 || b.timezone.len() > 64 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "cron or timezone too long",
        ));
    }
    Override::validate(&b.cron, &b.timezone)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    if !(60..=604_800).contains(&b.duration_seconds) || b.min_replicas > 100_000 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "duration_seconds must be in 60..=604800 and min_replicas at most 100000",
        ));
    }
    let o = Override {
        id: new_id(),
        namespace: namespace.clone(),
        workload: name.clone(),
        min_replicas: b.min_replicas,
        cron: b.cron,
        timezone: b.timezone,
        duration_seconds: b.duration_seconds,
        created_at: s.shared.now(),
    };
    store(&s)?
        .add_override(&o, &who.name)
        .await
        .map_err(store_error)?;
    refresh_overrides(&s, &namespace, &name).await?;
    Ok((StatusCode::CREATED, axum::Json(o)).into_response())
}

/// Deletes a scheduled override.
#[utoipa::path(delete, path = "/api/v1/workloads/{namespace}/{name}/overrides/{id}",
    params(WorkloadPath, IdPath),
    responses((status = 400, body = ApiError), (status = 204, description = "Deleted"), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)),
    security(("bearer" = [])), tag = "workloads")]
pub async fn delete_override(
    State(s): State<Arc<ApiState>>,
    caller: Identity,
    path: P<(String, String, String)>,
) -> ApiResult<Response> {
    let Path((namespace, name, id)) = path.map_err(bad_path)?;
    let who = s.tokens.permit(&caller, Role::Admin)?;
    workload_key(&s, &namespace, &name)?;
    check_id(&id).map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "no such override"))?;
    let gone = store(&s)?
        .delete_override(&namespace, &name, &id, &who.name, s.shared.now())
        .await
        .map_err(store_error)?;
    if !gone {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no such override"));
    }
    refresh_overrides(&s, &namespace, &name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
