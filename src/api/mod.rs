//! The HTTP server (axum): `/metrics`, `/healthz`, `/readyz`, the API under `/api/v1`
//! (workloads, forecasts, recommendations and decisions, audit, controls, overrides), the
//! KEDA metrics-api JSON, the OpenAPI document, and the review page at `/`.

pub mod auth;
mod page;
pub mod review;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use utoipa::OpenApi;

use crate::actuator::{Publication, Unpublished};
use crate::app::{ForecastView, Shared, WorkloadView};
use auth::{ApiError, BodyLimit, Identity, Role, Tokens};
use review::WorkloadPath;

/// Content type of the OpenMetrics exposition.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the classic Prometheus text format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the handlers share.
pub struct ApiState {
    /// The service's shared state.
    pub shared: Arc<Shared>,
    /// Who may do what.
    pub tokens: Arc<Tokens>,
    /// Largest `limit` of a listing.
    pub max_page: u32,
}

/// Settings of the router.
pub struct ApiSettings {
    /// Tokens.
    pub tokens: Tokens,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Largest page.
    pub max_page_size: u32,
    /// Requests handled at once (beyond: 503 at once).
    pub max_in_flight: usize,
    /// Longest a request may take, its body included (beyond: 503).
    pub request_timeout: Duration,
    /// Requests per second each caller may make on average (beyond: 429).
    pub rate_per_caller: u32,
    /// Requests a caller may make at once after a quiet spell.
    pub burst_per_caller: u32,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            tokens: Tokens::none(),
            max_body_bytes: 16 * 1024,
            max_page_size: 200,
            max_in_flight: 256,
            request_timeout: Duration::from_secs(30),
            rate_per_caller: 50,
            burst_per_caller: 100,
        }
    }
}

/// The OpenAPI document of `/api/v1`, generated from the handlers.
#[derive(OpenApi)]
#[openapi(
    info(title = "prescale", description = "Predictive autoscaler: workloads, forecasts, recommendations and their review."),
    paths(
        workloads, workload, keda_metric,
        review::forecast, review::list, review::get_one, review::approve, review::reject,
        review::audit, review::pause, review::resume, review::pin, review::unpin,
        review::overrides, review::add_override, review::delete_override,
    ),
    modifiers(&BearerAuth, &Overload),
    tags((name = "workloads"), (name = "recommendations"), (name = "audit"), (name = "keda")),
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Every operation may be refused by the overload limits (see [`refused`]: a 503) or by its
/// caller's rate (see [`rate_limit`]: a 429), with the usual error body.
struct Overload;

impl utoipa::Modify for Overload {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, Response, ResponseBuilder};
        let error = |description: &str| -> Response {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ApiError")))
                        .build(),
                )
                .build()
        };
        let overloaded = "Overloaded (over `api.max_in_flight` requests at once) or slower than \
             `api.request_timeout`; `Retry-After` says when to try again.";
        let response = error(overloaded);
        let too_many = error(
            "Over this caller's request rate (`api.rate_per_caller`); `Retry-After` says when \
             to try again.",
        );
        for (path, item) in openapi.paths.paths.iter_mut() {
            let keda = path.starts_with("/api/v1/keda/");
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                let r = &mut op.responses.responses;
                match r.get_mut("503") {
                    // The KEDA endpoint is outside the in-flight limit: its 503 is its own.
                    Some(_) if keda => {}
                    // An operation's own 503 (say, warming up) says so as well.
                    Some(utoipa::openapi::RefOr::T(own)) => {
                        own.description = format!("{} Or: {}", own.description, overloaded);
                    }
                    _ => {
                        r.insert("503".to_string(), response.clone().into());
                    }
                }
                r.insert("429".to_string(), too_many.clone().into());
            }
        }
    }
}

/// The OpenAPI document as pretty JSON (what is served and committed).
pub fn openapi_json() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_default()
}

/// The router with default settings (no tokens); tests call it without a socket.
pub fn router(shared: Arc<Shared>) -> Router {
    router_with(shared, ApiSettings::default())
}

/// The router.
pub fn router_with(shared: Arc<Shared>, settings: ApiSettings) -> Router {
    let state = Arc::new(ApiState {
        shared: shared.clone(),
        tokens: Arc::new(settings.tokens),
        max_page: settings.max_page_size,
    });
    // Probes and scrapes stay outside the limits: a busy API must not fail its liveness
    // probe (the kubelet would restart it) nor lose its metrics.
    let ops = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    let limits = tower::ServiceBuilder::new()
        .layer(axum::error_handling::HandleErrorLayer::new(
            move |e: tower::BoxError| {
                let shared = shared.clone();
                async move { refused(&shared, &e) }
            },
        ))
        .load_shed()
        // One semaphore for every route (`Router::layer` layers each route on its own).
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            settings.max_in_flight.max(1),
        ))
        .timeout(settings.request_timeout);
    let rate = Arc::new(CallerRate {
        tokens: state.tokens.clone(),
        shared: state.shared.clone(),
        limiter: governor::RateLimiter::keyed(
            governor::Quota::per_second(
                NonZeroU32::new(settings.rate_per_caller).unwrap_or(NonZeroU32::MIN),
            )
            .allow_burst(NonZeroU32::new(settings.burst_per_caller).unwrap_or(NonZeroU32::MIN)),
        ),
        last_sweep: std::sync::atomic::AtomicU64::new(0),
        started: std::time::Instant::now(),
    });
    // KEDA's metrics-api trigger is one caller polling every workload each
    // `pollingInterval`, and a refusal counts towards its fallback: it is outside the
    // in-flight limit and the per-caller rate (the answer is a lookup), except for
    // requests it would refuse (see [`keda_gate`]).
    let keda = Router::new()
        .route("/api/v1/keda/{namespace}/{name}", get(keda_metric))
        .layer(axum::middleware::from_fn_with_state(
            rate.clone(),
            keda_gate,
        ));
    let wl = "/api/v1/workloads/{namespace}/{name}";
    Router::new()
        .route("/", get(page::index))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/workloads", get(workloads))
        .route(wl, get(workload))
        .route(&format!("{wl}/forecast"), get(review::forecast))
        .route(&format!("{wl}/pause"), post(review::pause))
        .route(&format!("{wl}/resume"), post(review::resume))
        .route(&format!("{wl}/pin"), put(review::pin).delete(review::unpin))
        .route(
            &format!("{wl}/overrides"),
            get(review::overrides).post(review::add_override),
        )
        .route(
            &format!("{wl}/overrides/{{id}}"),
            axum::routing::delete(review::delete_override),
        )
        .route("/api/v1/recommendations", get(review::list))
        .route("/api/v1/recommendations/{id}", get(review::get_one))
        .route(
            "/api/v1/recommendations/{id}/approve",
            post(review::approve),
        )
        .route("/api/v1/recommendations/{id}/reject", post(review::reject))
        .route("/api/v1/audit", get(review::audit))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        })
        .layer(axum::Extension(BodyLimit(settings.max_body_bytes)))
        .layer(axum::extract::DefaultBodyLimit::max(
            settings.max_body_bytes,
        ))
        .layer(limits)
        // Outermost: a caller over its rate is refused before it takes an in-flight slot.
        .layer(axum::middleware::from_fn_with_state(rate, rate_limit))
        .merge(keda)
        .merge(ops)
        .with_state(state)
}

/// Each caller's request rate (see [`Tokens::caller`]).
struct CallerRate {
    tokens: Arc<Tokens>,
    shared: Arc<Shared>,
    limiter: governor::DefaultKeyedRateLimiter<String>,
    /// When callers at full budget were last forgotten: seconds since `started`, plus one.
    last_sweep: std::sync::atomic::AtomicU64,
    started: std::time::Instant,
}

/// Callers tracked before those back at full budget are forgotten (at most once a second):
/// keys without a token come from client addresses, which are many.
const TRACKED_CALLERS: usize = 4096;

/// Past [`TRACKED_CALLERS`] keys, forgets the callers back at full budget. The request
/// that first sees a new second (`now`) claims the sweep, so the key count, which takes the
/// limiter's lock, is read at most once a second rather than on every request.
fn forget_idle<C: governor::clock::Clock>(
    limiter: &governor::RateLimiter<
        String,
        governor::state::keyed::DefaultKeyedStateStore<String>,
        C,
        governor::middleware::NoOpMiddleware<C::Instant>,
    >,
    last_sweep: &std::sync::atomic::AtomicU64,
    now: u64,
) {
    let last = last_sweep.load(Ordering::Relaxed);
    if now > last
        && last_sweep
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        && limiter.len() > TRACKED_CALLERS
    {
        limiter.retain_recent();
        limiter.shrink_to_fit();
    }
}

/// Refuses a caller over its rate with 429 and how long to wait.
async fn rate_limit(
    State(rate): State<Arc<CallerRate>>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (caller, key) = rate.identify(&request);
    request.extensions_mut().insert(caller);
    match rate.spend(&key) {
        None => next.run(request).await,
        Some(refused) => refused,
    }
}

/// The KEDA endpoint's gate: a caller allowed to read (a valid token, or none where reads
/// are open) is never limited; one that will be refused (401) spends its network's budget
/// as elsewhere, so guessing tokens here is throttled too.
async fn keda_gate(
    State(rate): State<Arc<CallerRate>>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (caller, key) = rate.identify(&request);
    let allowed = rate.tokens.permit(&caller, Role::Viewer).is_ok();
    request.extensions_mut().insert(caller);
    if !allowed && let Some(refused) = rate.spend(&key) {
        return refused;
    }
    next.run(request).await
}

impl CallerRate {
    /// What the request's token says, and the caller's key (see [`Tokens::caller`]).
    fn identify(&self, request: &axum::extract::Request) -> (Identity, String) {
        let peer = request
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip());
        let caller = self.tokens.identify(request.headers());
        let key = self.tokens.caller(&caller, peer);
        (caller, key)
    }

    /// Takes one request from `key`'s budget; over it, the 429 that says how long to wait.
    fn spend(&self, key: &String) -> Option<Response> {
        use governor::clock::Clock;
        forget_idle(
            &self.limiter,
            &self.last_sweep,
            self.started.elapsed().as_secs() + 1,
        );
        self.limiter.check_key(key).err().map(|not_until| {
            let wait = not_until.wait_time_from(self.limiter.clock().now());
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            refusal(
                &self.shared,
                "rate_limited",
                StatusCode::TOO_MANY_REQUESTS,
                "over this caller's request rate (api.rate_per_caller); retry later",
                secs.max(1),
            )
        })
    }
}

/// A refused request's answer, with when to retry, counted as
/// `prescale_errors_total{stage="api",kind}`.
fn refusal(
    shared: &Shared,
    kind: &'static str,
    status: StatusCode,
    message: &str,
    retry_after_secs: u64,
) -> Response {
    shared
        .metrics
        .errors
        .get_or_create(&crate::metrics::ErrorLabels { stage: "api", kind })
        .inc();
    let mut r = ApiError::new(status, message).into_response();
    r.headers_mut().insert(
        header::RETRY_AFTER,
        header::HeaderValue::from(retry_after_secs),
    );
    r
}

/// The answer to a request the limits refused: too many in flight (shed at once, so a
/// flood queues nowhere), or slower than the timeout (a client trickling its body holds a
/// slot no longer than that). Both are counted as `prescale_errors_total{stage="api"}`.
fn refused(shared: &Shared, e: &tower::BoxError) -> Response {
    let (kind, message) = if e.is::<tower::load_shed::error::Overloaded>() {
        ("overloaded", "too many requests in flight; retry shortly")
    } else if e.is::<tower::timeout::error::Elapsed>() {
        (
            "timeout",
            "the request took longer than api.request_timeout",
        )
    } else {
        ("internal", "internal error")
    };
    refusal(shared, kind, StatusCode::SERVICE_UNAVAILABLE, message, 1)
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json()).into_response()
}

async fn metrics(State(s): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    let wants_openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    if wants_openmetrics {
        (
            [(header::CONTENT_TYPE, OPENMETRICS)],
            s.shared.metrics.encode(),
        )
            .into_response()
    } else {
        (
            [(header::CONTENT_TYPE, TEXT_FORMAT)],
            s.shared.metrics.encode_text(),
        )
            .into_response()
    }
}

/// Liveness: fails while the loop is wedged (no loop finished for `loop.stall_after`).
async fn healthz(State(s): State<Arc<ApiState>>) -> Response {
    match s.shared.stalled() {
        None => (StatusCode::OK, "ok\n").into_response(),
        Some(d) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("stalled: no loop finished for {}s\n", d.as_secs()),
        )
            .into_response(),
    }
}

async fn readyz(State(s): State<Arc<ApiState>>) -> Response {
    if s.shared.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "first loop not finished\n").into_response()
    }
}

fn internal() -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
}

/// Every workload: mode, state, current and desired replicas, last error, latest forecast.
#[utoipa::path(get, path = "/api/v1/workloads",
    responses((status = 400, body = ApiError), (status = 200, body = [WorkloadView]), (status = 401, body = ApiError)),
    security(("bearer" = [])), tag = "workloads")]
async fn workloads(State(s): State<Arc<ApiState>>, caller: Identity) -> Result<Response, ApiError> {
    s.tokens.permit(&caller, Role::Viewer)?;
    let v = s.shared.views.read().map_err(|_| internal())?;
    Ok(axum::Json(v.values().cloned().collect::<Vec<_>>()).into_response())
}

/// One workload.
#[utoipa::path(get, path = "/api/v1/workloads/{namespace}/{name}",
    params(WorkloadPath),
    responses((status = 400, body = ApiError), (status = 200, body = WorkloadView), (status = 401, body = ApiError), (status = 404, body = ApiError)),
    security(("bearer" = [])), tag = "workloads")]
async fn workload(
    State(s): State<Arc<ApiState>>,
    caller: Identity,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    s.tokens.permit(&caller, Role::Viewer)?;
    let key = format!("{namespace}/{name}");
    let v = s.shared.views.read().map_err(|_| internal())?;
    v.get(&key)
        .map(|w| axum::Json(w.clone()).into_response())
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such workload"))
}

/// The KEDA `metrics-api` endpoint: `{"desired_replicas": N, ...}` for a trigger with
/// `valueLocation: desired_replicas` and `targetValue: "1"`. Missing or stale data is a 503
/// (KEDA counts a failure; its fallback applies), never a zero. Read access as for the rest
/// of the API: with tokens configured and `api.anonymous_read` off, the trigger sends a
/// token (`authMode: bearer`, any role). Outside the in-flight limit and the caller's rate.
#[utoipa::path(get, path = "/api/v1/keda/{namespace}/{name}",
    params(WorkloadPath),
    responses((status = 400, body = ApiError), (status = 200, body = Publication), (status = 401, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 503, description = "No fresh decision for this workload (stale or missing data, degraded, not yet decided): KEDA counts a failure and its fallback applies.", body = ApiError)),
    security(("bearer" = [])), tag = "keda")]
async fn keda_metric(
    State(s): State<Arc<ApiState>>,
    caller: Identity,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    s.tokens.permit(&caller, Role::Viewer)?;
    let key = format!("{namespace}/{name}");
    match s.shared.board.get(&key) {
        Ok(p) => Ok(axum::Json(p).into_response()),
        Err(e @ Unpublished::Unknown(_)) => {
            Err(ApiError::new(StatusCode::NOT_FOUND, e.to_string()))
        }
        Err(e @ Unpublished::NotAuto { .. }) => {
            Err(ApiError::new(StatusCode::CONFLICT, e.to_string()))
        }
        Err(e @ Unpublished::Unavailable { .. }) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
        )),
    }
}

/// Keeps `ForecastView` in the document's components (it is part of `WorkloadView`).
#[allow(dead_code)]
fn _schema_roots(_: ForecastView) {}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    type Limiter = governor::RateLimiter<
        String,
        governor::state::keyed::DefaultKeyedStateStore<String>,
        FakeRelativeClock,
        governor::middleware::NoOpMiddleware<governor::nanos::Nanos>,
    >;

    fn limiter(clock: &FakeRelativeClock) -> Limiter {
        // One request spends a key's whole budget for a second.
        governor::RateLimiter::new(
            governor::Quota::per_second(NonZeroU32::MIN),
            Default::default(),
            clock.clone(),
        )
    }

    fn spend(limiter: &Limiter, n: usize, tag: &str) {
        for i in 0..n {
            assert!(limiter.check_key(&format!("{tag}{i}")).is_ok());
        }
    }

    #[test]
    fn idle_callers_are_forgotten_past_the_tracked_count_at_most_once_a_second() {
        let clock = FakeRelativeClock::default();
        let few = limiter(&clock);
        let last = std::sync::atomic::AtomicU64::new(0);
        spend(&few, 100, "a");
        clock.advance(Duration::from_secs(2));
        forget_idle(&few, &last, 1);
        assert_eq!(few.len(), 100, "under the tracked count nothing is swept");

        let many = limiter(&clock);
        let last = std::sync::atomic::AtomicU64::new(0);
        spend(&many, TRACKED_CALLERS + 1, "b");
        forget_idle(&many, &last, 1);
        assert_eq!(many.len(), TRACKED_CALLERS + 1, "still spent: kept");
        clock.advance(Duration::from_secs(2));
        forget_idle(&many, &last, 1);
        assert_eq!(many.len(), TRACKED_CALLERS + 1, "one sweep a second");
        spend(&many, 10, "c");
        forget_idle(&many, &last, 2);
        assert_eq!(many.len(), 10, "back at full budget: forgotten");
    }
}
