//! The review API, end to end: a service in `recommend` mode over the bundled trace, its
//! store, and the router with viewer, approver and admin tokens. One suite, run through the
//! router (no socket) and over a real socket, against SQLite and a real PostgreSQL.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design
#![allow(clippy::disallowed_methods)] // waiting for the PostgreSQL child

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request};
use serde_json::{Value, json};
use tower::ServiceExt;

use prescale::api::auth::{Role, Tokens};
use prescale::api::{ApiSettings, router_with};
use prescale::app::{Service, Timeline};
use prescale::collector::{CollectError, MetricSource, Sample, TimeWindow, TraceSource};
use prescale::config::Config;
use prescale::store::{RecState, Recommendation, Store};

const VIEWER: &str = "viewer-token-0123456789";
const APPROVER: &str = "approver-token-0123456789";
const ADMIN: &str = "admin-token-0123456789";

enum Client {
    Router(axum::Router),
    Socket(String, reqwest::Client),
}

struct Answer {
    status: u16,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("{e}: {}", self.text))
    }
}

impl Client {
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, Vec<u8>)>,
    ) -> Answer {
        match self {
            Client::Router(r) => {
                let mut req = Request::builder().method(method).uri(path);
                if let Some(t) = token {
                    req = req.header("authorization", format!("Bearer {t}"));
                }
                let req = match body {
                    Some((ctype, b)) => req.header("content-type", ctype).body(Body::from(b)),
                    None => req.body(Body::empty()),
                }
                .unwrap();
                let res = r.clone().oneshot(req).await.unwrap();
                let status = res.status().as_u16();
                let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
                    .await
                    .unwrap();
                Answer {
                    status,
                    text: String::from_utf8_lossy(&bytes).into_owned(),
                }
            }
            Client::Socket(base, c) => {
                let m = reqwest::Method::from_bytes(method.as_str().as_bytes()).unwrap();
                let mut req = c.request(m, format!("{base}{path}"));
                if let Some(t) = token {
                    req = req.bearer_auth(t);
                }
                if let Some((ctype, b)) = body {
                    req = req.header("content-type", ctype).body(b);
                }
                let res = req.send().await.unwrap();
                let status = res.status().as_u16();
                Answer {
                    status,
                    text: res.text().await.unwrap(),
                }
            }
        }
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Answer {
        self.call(Method::GET, path, token, None).await
    }

    async fn raw_post(&self, path: &str, ctype: &str, body: impl Into<Vec<u8>>) -> Answer {
        self.call(
            Method::POST,
            path,
            Some(APPROVER),
            Some((ctype, body.into())),
        )
        .await
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Answer {
        self.call(
            Method::POST,
            path,
            token,
            Some(("application/json", body.to_string().into_bytes())),
        )
        .await
    }
}

const STEP: i64 = 300;

struct Setup {
    service: Service,
    client: Client,
    source: Arc<Switchable>,
    t: i64,
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn tick(&mut self, n: usize) {
        for _ in 0..n {
            self.t += STEP;
            self.service.run_once(self.t).await;
        }
    }
}

async fn setup(store_url: Option<&str>, socket: bool) -> Setup {
    setup_with(
        store_url,
        socket,
        Duration::from_secs(1),
        ApiSettings::default(),
    )
    .await
}

/// The bundled trace, whose `shop/web` fetches fail while `failing` is set (fault
/// injection: the workload's own metrics are down, the others' are not).
struct Switchable {
    inner: TraceSource,
    failing: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl MetricSource for Switchable {
    async fn fetch(&self, q: &str, w: TimeWindow) -> Result<Vec<Sample>, CollectError> {
        if q == "demo:0" && self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(CollectError::Empty);
        }
        self.inner.fetch(q, w).await
    }
}

/// The service of `setup` on `dir`, its clock at `t0`, with its store attached.
async fn service_on(
    dir: &std::path::Path,
    store_url: Option<&str>,
    source: Arc<Switchable>,
    t0: i64,
    tick: Duration,
) -> Service {
    let trace = common::nasa_fixture();
    let cap = trace.value_quantile(0.99) / 20.0;
    let yaml = format!(
        "{}\
         - {{namespace: shop, name: web, demand_query: 'demo:0', capacity_per_replica: {cap}, max_replicas: 60, startup: 3m, mode: recommend, recommendation_ttl: 7d}}\n\
         - {{namespace: shop, name: api, demand_query: 'demo:500', capacity_per_replica: {cap}, max_replicas: 60, startup: 3m, mode: recommend, recommendation_ttl: 7d}}\n",
        common::test_config_head(dir)
    );
    let cfg = Config::parse(std::path::Path::new("t.yaml"), &yaml, &|_| None).unwrap();
    let service = Service::new(
        cfg,
        source,
        Timeline::Virtual {
            now: std::sync::atomic::AtomicI64::new(t0),
            per_tick: STEP,
        },
        STEP as u64,
        tick,
    )
    .unwrap();
    let url = store_url.map_or_else(|| Store::sqlite_url(dir), str::to_string);
    service
        .attach_store(Store::open(&url).await.unwrap())
        .await
        .unwrap();
    service
}

fn settings(limits: ApiSettings) -> ApiSettings {
    let tokens = Tokens::from_list(vec![
        (VIEWER.into(), "vera".into(), Role::Viewer),
        (APPROVER.into(), "alice".into(), Role::Approver),
        (ADMIN.into(), "root".into(), Role::Admin),
    ]);
    ApiSettings {
        tokens,
        max_body_bytes: 4096,
        max_page_size: 100,
        ..limits
    }
}

/// As [`setup`], with the loop's tick when it is run by `Service::run`.
async fn setup_with(
    store_url: Option<&str>,
    socket: bool,
    tick: Duration,
    limits: ApiSettings,
) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let trace = common::nasa_fixture();
    let source = Arc::new(Switchable {
        inner: TraceSource::new(&trace),
        failing: false.into(),
    });
    let t0 = trace.timestamps[0] + 7 * 86_400;
    let service = service_on(dir.path(), store_url, source.clone(), t0, tick).await;
    let router = router_with(service.shared(), settings(limits));
    let client = if socket {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // As `prescale serve` does: the client's address keys requests without a valid token.
        let app = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Client::Socket(format!("http://{addr}"), reqwest::Client::new())
    } else {
        Client::Router(router)
    };
    let mut s = Setup {
        service,
        client,
        source,
        t: t0,
        _dir: dir,
    };
    s.tick(3).await;
    s
}

/// The process of `s` stopped, and started again at `at` on the same data directory and
/// SQLite store (through the router).
async fn restarted(s: Setup, at: i64) -> Setup {
    let Setup {
        service,
        source,
        _dir,
        ..
    } = s;
    drop(service);
    let service = service_on(
        _dir.path(),
        None,
        source.clone(),
        at,
        Duration::from_secs(1),
    )
    .await;
    service.restore().unwrap();
    let client = Client::Router(router_with(
        service.shared(),
        settings(ApiSettings::default()),
    ));
    Setup {
        service,
        client,
        source,
        t: at,
        _dir,
    }
}

/// Pins `shop/web` to `replicas` until `until` as the admin; the answer must be 200.
async fn pin(c: &Client, replicas: u32, until: i64) {
    let body = json!({"replicas": replicas, "until": until});
    let a = c
        .call(
            Method::PUT,
            "/api/v1/workloads/shop/web/pin",
            Some(ADMIN),
            Some(("application/json", body.to_string().into_bytes())),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
}

/// Approves `id` as the approver; the answer must be 200.
async fn approve(c: &Client, id: &str) {
    let a = c
        .post(
            &format!("/api/v1/recommendations/{id}/approve"),
            Some(APPROVER),
            json!({}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
}

async fn pending(c: &Client, workload: &str) -> Vec<Value> {
    let a = c
        .get(
            &format!("/api/v1/recommendations?state=pending&namespace=shop&workload={workload}"),
            Some(VIEWER),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    a.json().as_array().unwrap().clone()
}

async fn suite(mut s: Setup) {
    let c = &s.client;
    // Access: no token 401, bad token 401, JSON error bodies.
    let a = c.get("/api/v1/recommendations", None).await;
    assert_eq!(a.status, 401);
    assert_eq!(a.json()["status"], 401);
    assert_eq!(
        c.get("/api/v1/recommendations", Some("nope-nope-nope-nope"))
            .await
            .status,
        401
    );
    let a = c.get("/api/v1/workloads", Some(VIEWER)).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json().as_array().unwrap().len(), 2);
    // The page follows the API's read access: without a token, a shell asking for one and
    // no data; with a viewer's, the workloads.
    let a = c.get("/", None).await;
    assert_eq!(a.status, 401);
    assert!(a.text.contains("id=\"token\""), "{}", a.text);
    assert!(!a.text.contains("shop/web") && !a.text.contains("Pending"));
    let a = c.get("/", Some(VIEWER)).await;
    assert_eq!(a.status, 200);
    assert!(a.text.contains("<h3>shop/web</h3>"), "{}", a.text);

    // Recommend mode made a pending recommendation with its reason.
    let recs = pending(c, "web").await;
    assert_eq!(
        recs.len(),
        1,
        "one pending per workload (older ones superseded)"
    );
    let rec = &recs[0];
    let id = rec["id"].as_str().unwrap().to_string();
    assert_eq!(rec["state"], "pending");
    for k in [
        "term",
        "forecast_peak",
        "forecast_peak_at",
        "quantile",
        "lead_seconds",
        "model",
    ] {
        assert!(rec["reason"].get(k).is_some(), "reason.{k}");
    }
    assert!(rec["valid_until"].as_i64().unwrap() > rec["created_at"].as_i64().unwrap());
    // Nothing was published for KEDA yet: the starting point is not known, and says so.
    assert_eq!(rec["reason"]["from_known"], false, "{rec}");

    // A viewer cannot approve; an approver can, once.
    let approve = format!("/api/v1/recommendations/{id}/approve");
    assert_eq!(c.post(&approve, Some(VIEWER), json!({})).await.status, 403);
    let a = c
        .post(
            &approve,
            Some(APPROVER),
            json!({"comment": "peak expected"}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.json()["changed"], true);
    assert_eq!(a.json()["recommendation"]["decided_by"], "alice");
    let a = c.post(&approve, Some(APPROVER), json!({})).await;
    assert_eq!(
        (a.status, a.json()["changed"].clone()),
        (200, json!(false)),
        "idempotent"
    );
    let audit = c
        .get(&format!("/api/v1/audit?target={id}"), Some(VIEWER))
        .await
        .json();
    let approvals = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "approve")
        .count();
    assert_eq!(approvals, 1, "one audit entry for two approvals");
    let a = c
        .post(
            &format!("/api/v1/recommendations/{id}/reject"),
            Some(APPROVER),
            json!({}),
        )
        .await;
    assert_eq!(a.status, 409);

    // The next loop applies it: the recommendation is applied and the workload has it.
    let to = rec["to_replicas"].as_u64().unwrap();
    s.tick(1).await;
    let c = &s.client;
    let a = c
        .get(&format!("/api/v1/recommendations/{id}"), Some(VIEWER))
        .await
        .json();
    assert_eq!(a["state"], "applied", "{a}");
    let w = c
        .get("/api/v1/workloads/shop/web", Some(VIEWER))
        .await
        .json();
    assert_eq!(w["current_replicas"].as_u64().unwrap(), to);
    let k = c.get("/api/v1/keda/shop/web", Some(VIEWER)).await;
    assert_eq!(k.status, 200, "{}", k.text);
    assert_eq!(
        k.json()["desired_replicas"].as_u64().unwrap(),
        to,
        "KEDA gets the approved value"
    );

    // Concurrent approve and reject: exactly one wins.
    let other = pending(c, "api").await;
    let oid = other[0]["id"].as_str().unwrap();
    let (pa, pr) = (
        format!("/api/v1/recommendations/{oid}/approve"),
        format!("/api/v1/recommendations/{oid}/reject"),
    );
    let (x, y) = tokio::join!(
        c.post(&pa, Some(APPROVER), json!({})),
        c.post(&pr, Some(ADMIN), json!({})),
    );
    let mut statuses = [x.status, y.status];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409], "{} / {}", x.text, y.text);

    // Hostile and malformed input.
    let big = json!({"comment": "x".repeat(5000)});
    assert_eq!(c.post(&approve, Some(APPROVER), big).await.status, 413);
    let bad = c
        .raw_post(&approve, "application/json", "{\"comment\":")
        .await;
    assert_eq!(bad.status, 400);
    let deep = format!("{}{}", "[".repeat(3000), "]".repeat(3000));
    let bomb = c.raw_post(&approve, "application/json", deep).await;
    assert!(matches!(bomb.status, 400 | 413), "{}", bomb.status);
    assert_eq!(
        c.post(&approve, Some(APPROVER), json!({"comment": 5}))
            .await
            .status,
        422
    );
    assert_eq!(
        c.post(&approve, Some(APPROVER), json!({"unknown": 1}))
            .await
            .status,
        422
    );
    let text = c.raw_post(&approve, "text/plain", "{}").await;
    assert_eq!(text.status, 415);
    assert_eq!(
        c.post(
            "/api/v1/recommendations/0123/approve",
            Some(APPROVER),
            json!({})
        )
        .await
        .status,
        404
    );
    let missing = format!("/api/v1/recommendations/{}/approve", "f".repeat(32));
    assert_eq!(
        c.post(&missing, Some(APPROVER), json!({})).await.status,
        404
    );
    assert_eq!(
        c.get("/api/v1/recommendations?limit=100000", Some(VIEWER))
            .await
            .status,
        422
    );
    assert_eq!(
        c.get("/api/v1/recommendations?state=bogus", Some(VIEWER))
            .await
            .status,
        422
    );
    assert_eq!(
        c.get("/api/v1/workloads/shop/a%22b%7D/forecast", Some(VIEWER))
            .await
            .status,
        400
    );
    assert_eq!(
        c.get("/api/v1/workloads/shop/nope/forecast", Some(VIEWER))
            .await
            .status,
        404
    );
    assert_eq!(
        c.get("/api/v1/nothing-here", Some(VIEWER)).await.status,
        404
    );

    // Forecast: 48 hours of points with quantiles, JSON and CSV.
    let f = c
        .get(
            "/api/v1/workloads/shop/web/forecast?horizon=48h",
            Some(VIEWER),
        )
        .await;
    assert_eq!(f.status, 200, "{}", f.text);
    let f = f.json();
    let points = f["points"].as_array().unwrap();
    assert_eq!(points.len(), 48 * 3600 / 300);
    let q = &points[10]["quantiles"];
    assert!(q["0.5"].as_f64().unwrap() <= q["0.995"].as_f64().unwrap());
    assert_eq!(
        c.get(
            "/api/v1/workloads/shop/web/forecast?horizon=49h",
            Some(VIEWER)
        )
        .await
        .status,
        422
    );
    let csv = c
        .get(
            "/api/v1/workloads/shop/web/forecast?horizon=1h&format=csv",
            Some(VIEWER),
        )
        .await;
    assert!(
        csv.text.starts_with("timestamp,point,upper,q0.5,"),
        "{}",
        csv.text
    );
    assert_eq!(csv.text.lines().count(), 1 + 12);

    // Pause (admin only): nothing new is proposed while paused.
    let pause = "/api/v1/workloads/shop/web/pause";
    assert_eq!(c.post(pause, Some(APPROVER), json!({})).await.status, 403);
    let a = c.post(pause, Some(ADMIN), json!({})).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let before = c
        .get(
            "/api/v1/recommendations?namespace=shop&workload=web&limit=100",
            Some(VIEWER),
        )
        .await
        .json();
    s.tick(6).await;
    let c = &s.client;
    let after = c
        .get(
            "/api/v1/recommendations?namespace=shop&workload=web&limit=100",
            Some(VIEWER),
        )
        .await
        .json();
    assert_eq!(
        before.as_array().unwrap().len(),
        after.as_array().unwrap().len(),
        "paused: no new recommendations"
    );
    assert_eq!(
        c.get("/api/v1/workloads/shop/web", Some(VIEWER))
            .await
            .json()["paused"],
        true
    );
    assert_eq!(
        c.post("/api/v1/workloads/shop/web/resume", Some(ADMIN), json!({}))
            .await
            .status,
        200
    );

    // Pin: desired replicas held at the pin.
    let until = s.t + 3600;
    pin(c, 17, until).await;
    s.tick(1).await;
    let c = &s.client;
    let w = c
        .get("/api/v1/workloads/shop/web", Some(VIEWER))
        .await
        .json();
    assert_eq!(
        (w["desired_replicas"].as_u64(), w["term"].as_str()),
        (Some(17), Some("pinned"))
    );
    assert_eq!(
        c.call(
            Method::DELETE,
            "/api/v1/workloads/shop/web/pin",
            Some(ADMIN),
            None
        )
        .await
        .status,
        200
    );

    // Overrides: validated, listed, deleted.
    let path = "/api/v1/workloads/shop/web/overrides";
    let bad = c.post(path, Some(ADMIN), json!({"min_replicas": 5, "cron": "61 * * * *", "timezone": "UTC", "duration_seconds": 600})).await;
    assert_eq!(bad.status, 422);
    let bad = c.post(path, Some(ADMIN), json!({"min_replicas": 5, "cron": "0 9 * * *", "timezone": "Nowhere/Land", "duration_seconds": 600})).await;
    assert_eq!(bad.status, 422);
    let o = c.post(path, Some(ADMIN), json!({"min_replicas": 50, "cron": "* * * * *", "timezone": "Europe/Paris", "duration_seconds": 600})).await;
    assert_eq!(o.status, 201, "{}", o.text);
    let oid = o.json()["id"].as_str().unwrap().to_string();
    s.tick(1).await;
    let c = &s.client;
    let w = c
        .get("/api/v1/workloads/shop/web", Some(VIEWER))
        .await
        .json();
    assert_eq!(
        (w["desired_replicas"].as_u64(), w["term"].as_str()),
        (Some(50), Some("scheduled_minimum")),
        "{w}"
    );
    assert_eq!(
        c.get(path, Some(VIEWER))
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        c.call(Method::DELETE, &format!("{path}/{oid}"), Some(ADMIN), None)
            .await
            .status,
        204
    );
    assert_eq!(
        c.call(Method::DELETE, &format!("{path}/{oid}"), Some(ADMIN), None)
            .await
            .status,
        404
    );

    // Every write is in the audit log with who did it.
    let log = c.get("/api/v1/audit?limit=100", Some(VIEWER)).await.json();
    let actions: Vec<(String, String)> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap().to_string(),
                e["action"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (who, what) in [
        ("alice", "approve"),
        ("root", "pause"),
        ("root", "resume"),
        ("root", "pin"),
        ("root", "unpin"),
        ("root", "add_override"),
        ("root", "delete_override"),
        ("prescale", "apply"),
    ] {
        assert!(
            actions.contains(&(who.to_string(), what.to_string())),
            "{who} {what} missing from {actions:?}"
        );
    }
    // The OpenAPI document served is the committed one.
    let served = c.get("/api/v1/openapi.json", None).await.text;
    let committed = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json"),
    )
    .unwrap();
    assert_eq!(
        served.trim(),
        committed.trim(),
        "docs/openapi.json is stale: cargo run -- openapi > docs/openapi.json"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_through_the_router() {
    suite(setup(None, false).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_over_a_socket() {
    suite(setup(None, true).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_a_socket_and_5xx_says_nothing_of_internals() {
    let pg = common::Postgres::start();
    let s = setup(Some(&pg.url), true).await;
    let base = match &s.client {
        Client::Socket(b, _) => b.clone(),
        Client::Router(_) => unreachable!(),
    };
    suite(s).await;
    // The database goes away: the API says 503 "store unavailable", and nothing more.
    drop(pg);
    let asked = std::time::Instant::now();
    let res = reqwest::Client::new()
        .get(format!("{base}/api/v1/recommendations"))
        .bearer_auth(VIEWER)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 503);
    let body = res.text().await.unwrap();
    assert_eq!(body, r#"{"status":503,"error":"store unavailable"}"#);
    // The store gives up on a connection (5 s) well before the request times out (30 s).
    assert!(
        asked.elapsed() < Duration::from_secs(20),
        "{:?}",
        asked.elapsed()
    );
}

/// Two replicas of prescale on one store: a pause and an approval made through one reach the
/// other at its next loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_a_store_see_each_others_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let url = Store::sqlite_url(dir.path());
    let mut a = setup(Some(&url), false).await;
    let mut b = setup(Some(&url), false).await;
    let rec = pending(&a.client, "web").await[0].clone();
    let id = rec["id"].as_str().unwrap();
    approve(&a.client, id).await;
    a.tick(1).await; // a applies it
    let paused = a
        .client
        .post("/api/v1/workloads/shop/api/pause", Some(ADMIN), json!({}))
        .await;
    assert_eq!(paused.status, 200);
    b.tick(1).await;
    let wb = b
        .client
        .get("/api/v1/workloads/shop/web", Some(VIEWER))
        .await
        .json();
    assert_eq!(
        wb["current_replicas"], rec["to_replicas"],
        "b publishes what a applied: {wb}"
    );
    let api = b
        .client
        .get("/api/v1/workloads/shop/api", Some(VIEWER))
        .await
        .json();
    assert_eq!(api["paused"], true, "b sees a's pause");
    let applies = b
        .client
        .get(&format!("/api/v1/audit?target={id}"), Some(VIEWER))
        .await
        .json();
    let n = applies
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "apply")
        .count();
    assert_eq!(n, 1, "applied once between the two");
}

fn current(s: &Setup, workload: &str) -> u32 {
    s.service.shared().views.read().unwrap()[&format!("shop/{workload}")]
        .current_replicas
        .unwrap()
}

/// An approved recommendation as a person would have made it at `decided_at`.
fn approved(from: u32, to: u32, created_at: i64, decided_at: i64) -> Recommendation {
    Recommendation {
        valid_until: created_at + 1800,
        state: RecState::Approved,
        decided_by: Some("alice".into()),
        decided_at: Some(decided_at),
        ..common::recommendation("shop", "web", from, to, created_at)
    }
}

/// Stores an approved recommendation, runs a loop, and returns it as the loop left it.
async fn after_a_loop(s: &mut Setup, rec: Recommendation) -> Recommendation {
    let store = s.service.shared().store.get().unwrap().clone();
    store.create(&rec, "test").await.unwrap();
    s.tick(1).await;
    store.get(&rec.id).await.unwrap()
}

/// Checks a recommendation failed for `why` and the workload stayed at `base`.
fn failed_for(s: &Setup, got: &Recommendation, why: &str, base: u32) {
    assert_eq!(got.state, RecState::Failed, "{got:?}");
    assert!(got.outcome.as_deref().unwrap().starts_with(why), "{got:?}");
    assert_eq!(
        current(s, "web"),
        base,
        "a refused approval changes nothing"
    );
}

/// What applying an approval does depends on what holds when it is applied: a pin, a
/// scheduled minimum, what is published now (staleness), and how long ago it was approved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_are_applied_only_as_the_controls_allow() {
    let mut s = setup(None, false).await;
    let store = s.service.shared().store.get().unwrap().clone();
    // First, one approved through the API, to have a known published value.
    let id = pending(&s.client, "web").await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    approve(&s.client, &id).await;
    s.tick(1).await;
    assert_eq!(store.get(&id).await.unwrap().state, RecState::Applied);
    let base = current(&s, "web");

    // Stale: made from a value that is not what KEDA is served now.
    let t = s.t;
    let got = after_a_loop(&mut s, approved(base + 5, base + 7, t, t)).await;
    failed_for(&s, &got, "stale", base);

    // Too old: approved long ago and held since (past valid_until and the grace).
    let old = approved(base, base + 3, s.t - 86_400, s.t - 86_000);
    let got = after_a_loop(&mut s, old).await;
    failed_for(&s, &got, "expired", base);

    // Pinned: an approval of anything but the pin is not applied.
    pin(&s.client, base + 2, s.t + 86_400).await;
    let t = s.t;
    let got = after_a_loop(&mut s, approved(base, base + 4, t, t)).await;
    failed_for(&s, &got, "pinned", base);
    let unpin = s
        .client
        .call(
            Method::DELETE,
            "/api/v1/workloads/shop/web/pin",
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(unpin.status, 200, "{}", unpin.text);

    // A scheduled minimum open now raises what is applied.
    let floor = base + 9;
    let o = s
        .client
        .post(
            "/api/v1/workloads/shop/web/overrides",
            Some(ADMIN),
            json!({"min_replicas": floor, "cron": "* * * * *", "timezone": "UTC", "duration_seconds": 3600}),
        )
        .await;
    assert_eq!(o.status, 201, "{}", o.text);
    let low = approved(base, base.saturating_sub(1).max(1), s.t, s.t);
    let got = after_a_loop(&mut s, low).await;
    assert_eq!(got.state, RecState::Applied, "{got:?}");
    assert!(
        got.outcome
            .as_deref()
            .unwrap()
            .contains("raised to the scheduled minimum"),
        "{got:?}"
    );
    assert_eq!(current(&s, "web"), floor);
}

/// An approval is applied as soon as it is durable, not at the loop's next tick (here an
/// hour away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_is_applied_at_once() {
    let Setup {
        service,
        client,
        _dir,
        ..
    } = setup_with(
        None,
        true,
        Duration::from_secs(3600),
        ApiSettings::default(),
    )
    .await;
    let service = Arc::new(service);
    let token = tokio_util::sync::CancellationToken::new();
    let run = {
        let (svc, token) = (service.clone(), token.clone());
        tokio::spawn(async move { svc.run(token).await })
    };
    // The first tick runs at once; wait for it to pass before approving.
    let loop_count = |svc: &Service| {
        svc.shared()
            .metrics
            .encode_text()
            .lines()
            .find(|l| l.starts_with("prescale_loop_duration_seconds_count"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let started = std::time::Instant::now();
    while loop_count(&service) < 4.0 && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        loop_count(&service),
        4.0,
        "three setup loops and the first tick"
    );
    let rec = pending(&client, "web").await[0].clone();
    let id = rec["id"].as_str().unwrap();
    approve(&client, id).await;
    let approved_at = std::time::Instant::now();
    let mut state = String::new();
    while approved_at.elapsed() < Duration::from_secs(10) {
        let r = client
            .get(&format!("/api/v1/recommendations/{id}"), Some(VIEWER))
            .await
            .json();
        state = r["state"].as_str().unwrap().to_string();
        if state != "approved" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(state, "applied");
    assert_eq!(loop_count(&service), 4.0, "applied without another loop");
    let w = client
        .get("/api/v1/workloads/shop/web", Some(VIEWER))
        .await
        .json();
    assert_eq!(w["current_replicas"], rec["to_replicas"], "{w}");
    token.cancel();
    run.await.unwrap();
}

/// An approval for a workload this replica does not have stays approved for one that has
/// it, and fails as expired once nobody applied it in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_for_an_unknown_workload_waits_then_expires() {
    let mut s = setup(None, false).await;
    let t = s.t;
    let ghost = Recommendation {
        workload: "ghost".into(),
        ..approved(2, 4, t, t)
    };
    let got = after_a_loop(&mut s, ghost.clone()).await;
    assert_eq!(
        got.state,
        RecState::Approved,
        "left for a replica that has it"
    );
    // Past valid_until (30 min) and the grace: expired.
    s.tick(7).await;
    let store = s.service.shared().store.get().unwrap().clone();
    let got = store.get(&ghost.id).await.unwrap();
    assert_eq!(got.state, RecState::Failed, "{got:?}");
    assert!(got.outcome.as_deref().unwrap().starts_with("expired"));
}

/// Approves the workload's pending recommendation through the API and runs a loop, so the
/// replicas KEDA is served are known; returns them.
async fn applied_one(s: &mut Setup, workload: &str) -> u32 {
    let id = pending(&s.client, workload).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    approve(&s.client, &id).await;
    s.tick(1).await;
    let store = s.service.shared().store.get().unwrap().clone();
    assert_eq!(store.get(&id).await.unwrap().state, RecState::Applied);
    current(s, workload)
}

/// Saves the service of `s`, stores `recs` (approved after that save, before the process
/// stopped), restarts it `down` seconds later and runs its first loop.
async fn approved_then_stopped(s: Setup, recs: &[&Recommendation], down: i64) -> Setup {
    s.service.save().await;
    let store = s.service.shared().store.get().unwrap().clone();
    for rec in recs {
        store.create(rec, "test").await.unwrap();
    }
    let at = s.t + down;
    let mut s = restarted(s, at).await;
    s.tick(1).await;
    s
}

/// An approval the process could not apply before it stopped is applied after the restart:
/// time the service was not running does not count against it, up to the workload's
/// recommendation_ttl. Held after the restart for longer than its grace (paused here), it
/// expires as before; after a stop longer than the TTL, at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_outlives_a_stop_longer_than_its_grace() {
    let mut s = setup(None, false).await;
    let (base, api) = (
        applied_one(&mut s, "web").await,
        applied_one(&mut s, "api").await,
    );
    let pause = s
        .client
        .post("/api/v1/workloads/shop/api/pause", Some(ADMIN), json!({}))
        .await;
    assert_eq!(pause.status, 200, "{}", pause.text);
    // Approved just before the stop (valid 30 min, grace 15 min); back two days later.
    let t = s.t;
    let rec = approved(base, base + 3, t, t);
    let paused = Recommendation {
        workload: "api".into(),
        ..approved(api, api + 2, t, t)
    };
    let mut s = approved_then_stopped(s, &[&rec, &paused], 2 * 86_400).await;
    let store = s.service.shared().store.get().unwrap().clone();
    let got = store.get(&rec.id).await.unwrap();
    assert_eq!(got.state, RecState::Applied, "{got:?}");
    assert_eq!(current(&s, "web"), base + 3);
    // Paused: held within the grace counted from the restart, then expired.
    s.tick(3).await;
    let got = store.get(&paused.id).await.unwrap();
    assert_eq!(got.state, RecState::Approved, "{got:?}");
    s.tick(1).await;
    let got = store.get(&paused.id).await.unwrap();
    assert_eq!(got.state, RecState::Failed, "{got:?}");
    assert!(got.outcome.as_deref().unwrap().starts_with("expired"));

    // A stop longer than the workload's recommendation_ttl (7 days here): the forecast it
    // was approved on is too old, and it expires at the first loop after the restart.
    let base = current(&s, "web");
    let stale = approved(base, base + 2, s.t, s.t);
    let s = approved_then_stopped(s, &[&stale], 8 * 86_400).await;
    let store = s.service.shared().store.get().unwrap().clone();
    let got = store.get(&stale.id).await.unwrap();
    assert_eq!(got.state, RecState::Failed, "{got:?}");
    assert!(got.outcome.as_deref().unwrap().starts_with("expired"));
    assert_eq!(current(&s, "web"), base);
}

/// While a workload's own metrics fail, an approved scale-down of it waits, still approved,
/// and a scale-up is applied; the metrics back, the scale-down is applied. Held past its
/// validity, it expires as any approval held too long does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_scale_down_waits_while_the_workload_metrics_fail() {
    let mut s = setup(None, false).await;
    let store = s.service.shared().store.get().unwrap().clone();
    let base = applied_one(&mut s, "web").await;
    assert!(base >= 2, "{base}");
    let failing = |s: &Setup, on: bool| {
        s.source
            .failing
            .store(on, std::sync::atomic::Ordering::SeqCst)
    };
    failing(&s, true);
    let t = s.t;
    let down = approved(base, base - 1, t, t);
    let got = after_a_loop(&mut s, down.clone()).await;
    assert_eq!(got.state, RecState::Approved, "{got:?}");
    let view = s.service.shared().views.read().unwrap()["shop/web"].clone();
    assert_eq!(view.state, prescale::app::WorkloadState::Degraded);
    assert_eq!(current(&s, "web"), base);
    // Ten more minutes failing: still held, still approved (valid for 30).
    s.tick(2).await;
    assert_eq!(store.get(&down.id).await.unwrap().state, RecState::Approved);
    assert_eq!(current(&s, "web"), base);
    // Metrics back: applied at the next loop.
    failing(&s, false);
    s.tick(1).await;
    let got = store.get(&down.id).await.unwrap();
    assert_eq!(got.state, RecState::Applied, "{got:?}");
    assert_eq!(current(&s, "web"), base - 1);
    // A scale-up is not held by failing metrics.
    failing(&s, true);
    let t = s.t;
    let up = approved(base - 1, base + 4, t, t);
    let got = after_a_loop(&mut s, up).await;
    assert_eq!(got.state, RecState::Applied, "{got:?}");
    assert_eq!(current(&s, "web"), base + 4);
    // Failing for 50 minutes, past the validity (30 min) and the grace (3 loops): expired.
    let t = s.t;
    let late = approved(base + 4, base + 2, t, t);
    let got = after_a_loop(&mut s, late.clone()).await;
    assert_eq!(got.state, RecState::Approved, "{got:?}");
    s.tick(9).await;
    let got = store.get(&late.id).await.unwrap();
    assert_eq!(got.state, RecState::Failed, "{got:?}");
    assert!(got.outcome.as_deref().unwrap().starts_with("expired"));
    assert_eq!(current(&s, "web"), base + 4);
}

/// A proposal that expired does not silence the wish: the next loop proposes it again. A
/// pin keeps the wish the same from loop to loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_proposal_is_proposed_again() {
    let mut s = setup(None, false).await;
    let until = s.t + 30 * 86_400;
    pin(&s.client, 17, until).await;
    s.tick(1).await;
    let first = pending(&s.client, "web").await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0]["to_replicas"], 17);
    let store = s.service.shared().store.get().unwrap().clone();
    assert!(store.expire(s.t + 8 * 86_400).await.unwrap() >= 1);
    assert!(pending(&s.client, "web").await.is_empty());
    s.tick(1).await;
    let again = pending(&s.client, "web").await;
    assert_eq!(again.len(), 1, "proposed again after it expired");
    assert_eq!(again[0]["to_replicas"], 17);
    assert_ne!(again[0]["id"], first[0]["id"]);
}

/// A SQLite setup over a socket with these limits.
async fn limited(limits: ApiSettings) -> Setup {
    setup_with(None, true, Duration::from_secs(1), limits).await
}

/// A client that sends a write's headers and the first byte of its body, then nothing: it
/// holds an in-flight slot until `api.request_timeout`.
async fn trickle(addr: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PUT /api/v1/workloads/shop/web/pin HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {ADMIN}\r\ncontent-type: application/json\r\ncontent-length: 64\r\n\r\n{{"
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_or_a_trickled_body_is_refused_and_probes_still_answer() {
    use tokio::io::AsyncReadExt;
    let s = limited(ApiSettings {
        max_in_flight: 1,
        request_timeout: Duration::from_secs(2),
        ..ApiSettings::default()
    })
    .await;
    let Client::Socket(base, http) = &s.client else {
        unreachable!()
    };
    let addr = base.trim_start_matches("http://").to_string();
    // A client that sends its headers and then trickles its body holds the one slot.
    let mut slow = trickle(&addr).await;
    let started = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let get = |path: &str| http.get(format!("{base}{path}")).bearer_auth(VIEWER).send();
    let shed = get("/api/v1/workloads").await.unwrap();
    assert_eq!(
        shed.status(),
        503,
        "a second request while the slot is held"
    );
    assert_eq!(shed.headers()["retry-after"], "1");
    assert!(shed.text().await.unwrap().contains("too many requests"));
    // And the document says so, for every operation.
    let doc: Value = serde_json::from_str(&prescale::api::openapi_json()).unwrap();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for status in ["503", "429"] {
                assert!(
                    op["responses"].get(status).is_some(),
                    "{method} {path}: {status} not documented"
                );
            }
        }
    }
    // Probes and scrapes are outside the limit.
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("prescale_errors_total{stage=\"api\",kind=\"overloaded\"} 1"),
        "{metrics}"
    );
    // The trickling client is answered 503 at the timeout, and its slot is free again.
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), slow.read_to_end(&mut answer))
        .await
        .expect("the trickling client was never answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("api.request_timeout"), "{answer}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1800) && waited < Duration::from_secs(20),
        "{waited:?}"
    );
    assert_eq!(get("/api/v1/workloads").await.unwrap().status(), 200);
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    assert!(metrics.contains("prescale_errors_total{stage=\"api\",kind=\"timeout\"} 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_caller_has_its_own_request_rate() {
    let s = limited(ApiSettings {
        rate_per_caller: 1,
        burst_per_caller: 3,
        ..ApiSettings::default()
    })
    .await;
    let Client::Socket(base, http) = &s.client else {
        unreachable!()
    };
    let get = |token: &str| {
        http.get(format!("{base}/api/v1/workloads"))
            .bearer_auth(token)
            .send()
    };
    for k in 0..3 {
        assert_eq!(
            get(VIEWER).await.unwrap().status(),
            200,
            "request {k} of the burst"
        );
    }
    let limited = get(VIEWER).await.unwrap();
    assert_eq!(limited.status(), 429);
    let wait: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    assert!(
        limited
            .text()
            .await
            .unwrap()
            .contains("api.rate_per_caller")
    );
    // Another token has its own budget; probes are outside.
    assert_eq!(get(APPROVER).await.unwrap().status(), 200);
    let health = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    // Invalid tokens from one client address share one budget, whatever they are: guessing
    // is throttled too...
    for k in 0..3 {
        let bad = get(&format!("guess-{k}")).await.unwrap();
        assert_eq!(bad.status(), 401, "guess {k}");
    }
    assert_eq!(get("guess-3").await.unwrap().status(), 429);
    // ...and does not spend the budget of another client without a token.
    let other = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let from_other = |token: Option<&str>| {
        let r = other.get(format!("{base}/api/v1/workloads"));
        match token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
        .send()
    };
    assert_eq!(from_other(None).await.unwrap().status(), 401);
    for k in 0..2 {
        let bad = from_other(Some("guess-x")).await.unwrap();
        assert_eq!(bad.status(), 401, "another address, guess {k}");
    }
    // That address's budget is spent in turn.
    assert_eq!(from_other(None).await.unwrap().status(), 429);
    // The budget refills at the rate.
    tokio::time::sleep(Duration::from_millis(1100 * wait)).await;
    assert_eq!(get(VIEWER).await.unwrap().status(), 200);
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("prescale_errors_total{stage=\"api\",kind=\"rate_limited\"} 3"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keda_endpoint_is_outside_the_limits_but_needs_read_access() {
    let s = limited(ApiSettings {
        rate_per_caller: 1,
        burst_per_caller: 2,
        max_in_flight: 1,
        request_timeout: Duration::from_secs(30),
        ..ApiSettings::default()
    })
    .await;
    let Client::Socket(base, http) = &s.client else {
        unreachable!()
    };
    let keda = |token: Option<&str>| {
        let r = http.get(format!("{base}/api/v1/keda/shop/web"));
        match token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
        .send()
    };
    // Reads need a token here (api.anonymous_read is off), as KEDA's `authMode: bearer`
    // sends one.
    let open = keda(None).await.unwrap();
    assert_eq!(open.status(), 401, "{}", open.text().await.unwrap());
    // The handler's own answer (web is in recommend mode with nothing approved yet: a 503
    // that KEDA's fallback covers), not a refusal by the limits.
    let answered = |r: reqwest::Response| async move {
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        assert!(
            status == 503 && body.contains("shop/web has no current recommendation"),
            "{status} {body}"
        );
    };
    // One caller polling many workloads is never limited: ten times the burst...
    for _ in 0..20 {
        answered(keda(Some(VIEWER)).await.unwrap()).await;
    }
    // ...and those requests did not spend its budget for the rest of the API.
    let workloads = || {
        http.get(format!("{base}/api/v1/workloads"))
            .bearer_auth(VIEWER)
            .send()
    };
    for k in 0..2 {
        assert_eq!(workloads().await.unwrap().status(), 200, "burst {k}");
    }
    assert_eq!(workloads().await.unwrap().status(), 429);
    // Guessing tokens here is throttled like anywhere: the client's address has one budget
    // for refused requests (one spent by the first request without a token).
    assert_eq!(keda(Some("guess-0")).await.unwrap().status(), 401);
    assert_eq!(keda(Some("guess-1")).await.unwrap().status(), 429);
    // While a trickled body holds the API's one slot, KEDA is still answered.
    let addr = base.trim_start_matches("http://").to_string();
    let _slow = trickle(&addr).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let shed = http
        .get(format!("{base}/api/v1/workloads"))
        .bearer_auth(APPROVER)
        .send()
        .await
        .unwrap();
    assert_eq!(shed.status(), 503, "the slot is held");
    assert!(shed.text().await.unwrap().contains("too many requests"));
    answered(keda(Some(VIEWER)).await.unwrap()).await;
}
