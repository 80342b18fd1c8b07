//! The collector against a scriptable fake Prometheus (fault injection only): every bad
//! answer is a typed error, never zero, and the service holds replicas and shows why.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use prescale::app::{Service, Timeline, WorkloadState};
use prescale::collector::{MetricSource, PrometheusSource, TimeWindow};
use prescale::config::{Config, PrometheusConfig};

/// What the fake answers next.
#[derive(Clone)]
enum Answer {
    Body(StatusCode, &'static str, String),
    Slow(Duration),
    /// A healthy matrix: one series, `value` every step from `start` to `end`.
    Series {
        start: i64,
        end: i64,
        step: i64,
        value: f64,
    },
    /// Like `Series`, but the sample at `nan_at` is NaN (a 0/0 in the query).
    NanAt {
        start: i64,
        end: i64,
        step: i64,
        value: f64,
        nan_at: i64,
    },
    /// Like `Series`, but the query `slow_query` never answers in time.
    Route {
        slow_query: String,
        start: i64,
        end: i64,
        step: i64,
        value: f64,
    },
}

/// Requests the fake received: (start, end, step) as sent.
type Log = Arc<Mutex<Vec<(i64, i64, i64)>>>;

async fn fake(answer: Arc<Mutex<Answer>>) -> SocketAddr {
    fake_logged(answer, Log::default()).await
}

async fn fake_logged(answer: Arc<Mutex<Answer>>, log: Log) -> SocketAddr {
    let app = axum::Router::new().route(
        "/api/v1/query_range",
        axum::routing::any(move |axum::Form(p): axum::Form<std::collections::HashMap<String, String>>| {
            let answer = answer.lock().unwrap().clone();
            let num = |k: &str| p.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) as i64;
            let (q_start, q_end, q_step) = (num("start"), num("end"), num("step"));
            let answer = match answer {
                Answer::Route { slow_query, start, end, step, value } => {
                    if p.get("query") == Some(&slow_query) {
                        Answer::Slow(Duration::from_secs(30))
                    } else {
                        Answer::Series { start, end, step, value }
                    }
                }
                other => other,
            };
            let answer = match answer {
                Answer::Series { start, end, step, value } => {
                    Answer::NanAt { start, end, step, value, nan_at: i64::MIN }
                }
                other => other,
            };
            log.lock().unwrap().push((q_start, q_end, q_step));
            async move {
                match answer {
                    Answer::Body(status, ctype, body) => {
                        (status, [(axum::http::header::CONTENT_TYPE, ctype)], body).into_response()
                    }
                    Answer::Route { .. } => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                    Answer::Slow(d) => {
                        tokio::time::sleep(d).await;
                        (StatusCode::OK, "late").into_response()
                    }
                    Answer::Series { .. } => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                    Answer::NanAt { start, end, step, value, nan_at } => {
                        // Like Prometheus: only the samples inside the requested range.
                        let values: Vec<String> = (0..)
                            .map(|k| start + k * step)
                            .take_while(|t| *t <= end)
                            .filter(|t| *t >= q_start && *t <= q_end)
                            .map(|t| if t == nan_at { format!("[{t},\"NaN\"]") } else { format!("[{t},\"{value}\"]") })
                            .collect();
                        let body = format!(
                            r#"{{"status":"success","data":{{"resultType":"matrix","result":[{{"metric":{{"job":"x"}},"values":[{}]}}]}}}}"#,
                            values.join(",")
                        );
                        (StatusCode::OK, [(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response()
                    }
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn prom_config(url: String) -> PrometheusConfig {
    PrometheusConfig {
        url,
        bearer_token_file: None,
        basic_auth: None,
        ca_file: None,
        timeout: Duration::from_millis(500),
        retries: 1,
        stale_after: Duration::from_secs(300),
    }
}

const JSON: &str = "application/json";

fn matrix(series: &str) -> String {
    format!(r#"{{"status":"success","data":{{"resultType":"matrix","result":[{series}]}}}}"#)
}

fn faults(now: i64) -> Vec<(&'static str, Answer)> {
    let old = now - 3600;
    vec![
        (
            "http_5xx",
            Answer::Body(
                StatusCode::SERVICE_UNAVAILABLE,
                JSON,
                r#"{"status":"error","errorType":"unavailable","error":"busy"}"#.into(),
            ),
        ),
        (
            "http_4xx",
            Answer::Body(
                StatusCode::BAD_REQUEST,
                JSON,
                r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#.into(),
            ),
        ),
        (
            "bad_response",
            Answer::Body(
                StatusCode::OK,
                JSON,
                r#"{"status":"success","data":{"resultType":"matrix","res"#.into(),
            ),
        ),
        (
            "bad_response",
            Answer::Body(
                StatusCode::OK,
                "text/html",
                "<html>proxy error</html>".into(),
            ),
        ),
        (
            "bad_response",
            Answer::Body(
                StatusCode::OK,
                JSON,
                r#"{"status":"error","errorType":"internal","error":"boom"}"#.into(),
            ),
        ),
        ("empty", Answer::Body(StatusCode::OK, JSON, matrix(""))),
        (
            "invalid_sample",
            Answer::Body(
                StatusCode::OK,
                JSON,
                matrix(&format!(r#"{{"metric":{{}},"values":[[{now},"NaN"]]}}"#)),
            ),
        ),
        (
            "invalid_sample",
            Answer::Body(
                StatusCode::OK,
                JSON,
                matrix(&format!(r#"{{"metric":{{}},"values":[[{now},"+Inf"]]}}"#)),
            ),
        ),
        (
            "stale",
            Answer::Body(
                StatusCode::OK,
                JSON,
                matrix(&format!(r#"{{"metric":{{}},"values":[[{old},"5"]]}}"#)),
            ),
        ),
        (
            "multi_series",
            Answer::Body(
                StatusCode::OK,
                JSON,
                matrix(&format!(
                    r#"{{"metric":{{"pod":"a"}},"values":[[{now},"5"]]}},{{"metric":{{"pod":"b"}},"values":[[{now},"6"]]}}"#
                )),
            ),
        ),
        (
            "partial",
            Answer::Body(
                StatusCode::OK,
                JSON,
                format!(
                    r#"{{"status":"success","warnings":["shard down"],"data":{{"resultType":"matrix","result":[{{"metric":{{}},"values":[[{now},"5"]]}}]}}}}"#
                ),
            ),
        ),
        ("timeout", Answer::Slow(Duration::from_secs(3))),
    ]
}

#[tokio::test]
async fn every_bad_answer_is_a_typed_error_never_zero() {
    let now = 1_800_000_000;
    let answer = Arc::new(Mutex::new(Answer::Series {
        start: now - 600,
        end: now,
        step: 60,
        value: 5.0,
    }));
    let addr = fake(answer.clone()).await;
    let source = PrometheusSource::new(&prom_config(format!("http://{addr}"))).unwrap();
    let window = TimeWindow {
        start: now - 600,
        end: now,
        step: 60,
    };
    let ok = source.fetch("q", window).await.unwrap();
    assert_eq!(ok.len(), 11);
    assert!(ok.iter().all(|s| s.value == 5.0));
    for (kind, a) in faults(now) {
        *answer.lock().unwrap() = a;
        let err = source.fetch("q", window).await.unwrap_err();
        assert_eq!(err.kind(), kind, "{err}");
    }
}

#[tokio::test]
async fn a_server_that_is_down_is_a_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let source = PrometheusSource::new(&prom_config(format!("http://{addr}"))).unwrap();
    let err = source
        .fetch(
            "q",
            TimeWindow {
                start: 0,
                end: 60,
                step: 60,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "connect", "{err}");
}

#[tokio::test]
async fn long_ranges_are_split_under_the_point_limit() {
    let now = 1_800_000_000;
    let step = 60;
    let start = now - 25_000 * step; // 25,001 points: three requests
    let answer = Arc::new(Mutex::new(Answer::Series {
        start,
        end: now,
        step,
        value: 1.0,
    }));
    let log = Log::default();
    let addr = fake_logged(answer, log.clone()).await;
    let source = PrometheusSource::new(&prom_config(format!("http://{addr}"))).unwrap();
    let got = source
        .fetch(
            "q",
            TimeWindow {
                start,
                end: now,
                step: step as u64,
            },
        )
        .await
        .unwrap();
    assert_eq!(got.len(), 25_001);
    assert!(got.windows(2).all(|w| w[1].at == w[0].at + step));
    let requests = log.lock().unwrap().clone();
    assert_eq!(requests.len(), 3, "{requests:?}");
    for (s, e, st) in &requests {
        assert_eq!(*st, step);
        assert!(
            (e - s) / st < prescale::collector::max_points_per_query(),
            "more than the limit"
        );
    }
    assert!(prescale::collector::max_points_per_query() < 11_000);
}

/// A service with one workload, `shop/web` (capacity 10), reading 2 days from `addr`.
fn one_workload(addr: SocketAddr) -> Service {
    let yaml = format!(
        "prometheus:\n  url: http://{addr}\n  timeout: 500ms\n  retries: 0\nloop:\n  interval: 60s\n  history: 2d\n\
         data_dir: {dir}\nworkloads:\n- {{namespace: shop, name: web, demand_query: 'q', capacity_per_replica: 10, max_replicas: 100}}\n",
        dir = tempfile::tempdir().unwrap().keep().display()
    );
    let cfg = Config::parse(std::path::Path::new("t.yaml"), &yaml, &|_| None).unwrap();
    let source = Arc::new(PrometheusSource::new(&cfg.prometheus).unwrap());
    Service::new(cfg, source, Timeline::Wall, 60, Duration::from_secs(60)).unwrap()
}

#[tokio::test]
async fn faults_hold_replicas_and_show_in_the_workload_state() {
    let step = 60_i64;
    let now = 1_800_000_000_i64;
    let answer = Arc::new(Mutex::new(Answer::Series {
        start: now - 2 * 86_400,
        end: now,
        step,
        value: 400.0,
    }));
    let addr = fake(answer.clone()).await;
    let service = one_workload(addr);
    service.run_once(now).await;
    let view = |s: &Service| s.shared().views.read().unwrap()["shop/web"].clone();
    let before = view(&service);
    assert_ne!(before.state, WorkloadState::Degraded);
    let held = before.desired_replicas.unwrap();
    assert!(held >= 40, "400 demand at capacity 10 needs 40: {held}");
    let mut t = now;
    for (kind, a) in faults(now) {
        t += step;
        *answer.lock().unwrap() = a;
        service.run_once(t).await;
        let v = view(&service);
        assert_eq!(v.state, WorkloadState::Degraded, "{kind}");
        assert_eq!(v.reason.as_deref(), Some(kind));
        assert!(
            v.desired_replicas.unwrap() >= held,
            "{kind}: {} < {held}",
            v.desired_replicas.unwrap()
        );
        let metrics = service.shared().metrics.encode();
        let line = format!("prescale_errors_total{{stage=\"collector\",kind=\"{kind}\"}}");
        assert!(metrics.contains(&line), "{kind} not counted");
    }
}

#[tokio::test]
async fn a_nan_sample_holds_the_workload_only_while_it_is_the_newest() {
    // A 0/0 in the demand query once: while it is the newest sample the demand is unknown
    // and replicas hold; once newer samples exist it is a one-step gap in the history, not a
    // fault that holds the workload for as long as the history reaches back.
    let now = 1_800_000_000_i64;
    let series = |end: i64| Answer::NanAt {
        start: now - 2 * 86_400,
        end,
        step: 60,
        value: 400.0,
        nan_at: now,
    };
    let answer = Arc::new(Mutex::new(series(now)));
    let addr = fake(answer.clone()).await;
    let service = one_workload(addr);
    let view = |s: &Service| s.shared().views.read().unwrap()["shop/web"].clone();
    service.run_once(now).await;
    let first = view(&service);
    assert_eq!(first.state, WorkloadState::Degraded);
    assert_eq!(first.reason.as_deref(), Some("invalid_sample"));
    for k in 1..=3 {
        *answer.lock().unwrap() = series(now + k * 60);
        service.run_once(now + k * 60).await;
        let v = view(&service);
        assert_ne!(v.state, WorkloadState::Degraded, "loop {k}: {:?}", v.reason);
        assert!(
            v.desired_replicas.unwrap() >= 40,
            "{:?}",
            v.desired_replicas
        );
    }
}

#[tokio::test]
async fn a_black_holed_workload_does_not_stall_the_others() {
    // One service, two workloads on one Prometheus: the `slow` query never answers in time.
    let now = 1_800_000_000_i64;
    let answer = Arc::new(Mutex::new(Answer::Route {
        slow_query: "slow".into(),
        start: now - 86_400,
        end: now,
        step: 60,
        value: 100.0,
    }));
    let addr = fake(answer).await;
    let yaml = format!(
        "prometheus:\n  url: http://{addr}\n  timeout: 500ms\n  retries: 1\nloop:\n  interval: 60s\n  history: 1d\n  concurrency: 2\n\
         data_dir: {dir}\nworkloads:\n\
         - {{namespace: shop, name: batch, demand_query: 'slow', capacity_per_replica: 10, max_replicas: 100}}\n\
         - {{namespace: shop, name: web, demand_query: 'q', capacity_per_replica: 10, max_replicas: 100}}\n",
        dir = tempfile::tempdir().unwrap().keep().display()
    );
    let cfg = Config::parse(std::path::Path::new("t.yaml"), &yaml, &|_| None).unwrap();
    let source = Arc::new(PrometheusSource::new(&cfg.prometheus).unwrap());
    let service = Service::new(cfg, source, Timeline::Wall, 60, Duration::from_secs(60)).unwrap();
    let clock = std::time::Instant::now();
    service.run_once(now).await;
    // Two attempts of 500 ms plus a 100 ms backoff bound the stuck workload.
    assert!(
        clock.elapsed() < Duration::from_secs(5),
        "{:?}",
        clock.elapsed()
    );
    let views = service.shared().views.read().unwrap().clone();
    assert_eq!(views["shop/batch"].state, WorkloadState::Degraded);
    assert_eq!(views["shop/batch"].reason.as_deref(), Some("timeout"));
    assert_ne!(views["shop/web"].state, WorkloadState::Degraded);
    assert!(views["shop/web"].desired_replicas.unwrap() >= 10);
}

/// A source that fails at once, or never answers while `hang` is set.
struct Wedge {
    hang: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl MetricSource for Wedge {
    async fn fetch(
        &self,
        _query: &str,
        _window: TimeWindow,
    ) -> Result<Vec<prescale::collector::Sample>, prescale::collector::CollectError> {
        if self.hang.load(std::sync::atomic::Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        Err(prescale::collector::CollectError::Empty)
    }
}

#[tokio::test]
async fn a_wedged_loop_fails_the_liveness_probe() {
    use tower::ServiceExt as _;
    let yaml = format!(
        "prometheus:\n  url: http://127.0.0.1:9\n  timeout: 500ms\n  retries: 0\nloop:\n  interval: 2s\n  history: 1h\n  stall_after: 3s\n\
         data_dir: {dir}\nworkloads:\n- {{namespace: shop, name: web, demand_query: 'q', capacity_per_replica: 10, max_replicas: 100}}\n",
        dir = tempfile::tempdir().unwrap().keep().display()
    );
    let cfg = Config::parse(std::path::Path::new("t.yaml"), &yaml, &|_| None).unwrap();
    let source = Arc::new(Wedge { hang: false.into() });
    let service = Arc::new(
        Service::new(
            cfg,
            source.clone(),
            Timeline::Wall,
            2,
            Duration::from_secs(2),
        )
        .unwrap(),
    );
    let router = prescale::api::router(service.shared());
    let probe = || async {
        let req = axum::http::Request::get("/healthz")
            .body(axum::body::Body::empty())
            .unwrap();
        router.clone().oneshot(req).await.unwrap().status()
    };
    let now = 1_800_000_000;
    // Loops that finish (even failing ones) keep it alive, longer than stall_after.
    for k in 0..5 {
        service.run_once(now + 2 * k).await;
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert_eq!(probe().await, StatusCode::OK, "loop {k}");
    }
    source.hang.store(true, std::sync::atomic::Ordering::SeqCst);
    let stuck = tokio::spawn({
        let service = service.clone();
        async move { service.run_once(now + 10).await }
    });
    // 1.5 s after the last loop ended, then 4 s.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(probe().await, StatusCode::OK, "not stalled yet");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(probe().await, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!stuck.is_finished());
    stuck.abort();
}
