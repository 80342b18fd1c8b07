//! The `/scale` actuator and the leader Lease against an in-test Kubernetes API server that
//! enforces the real paths, verbs, content type, object kinds and resourceVersion (409 when
//! stale), with scripted faults: 403, 404, 429 with Retry-After, 5xx, hangs, a competing HPA or
//! ScaledObject, and two prescale replicas racing for the Lease.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use prescale::actuator::{
    ActuateError, Actuator, LeaseConfig, LeaseElector, Limits, ScaleActuator, Target,
};
use prescale::config::{KubernetesConfig, WorkloadKind};

/// What a scripted fault does to a matching request.
#[derive(Clone)]
enum Action {
    /// Answer with this status (reason, Retry-After seconds).
    Status(u16, &'static str, Option<u32>),
    /// Never answer in time.
    Hang(Duration),
    /// Another writer changes the object to this many replicas just before the request.
    Race(i32),
    /// The request is carried out, but its answer is lost: a 504 from a proxy instead.
    Lost,
}

struct Fault {
    method: Method,
    path_suffix: &'static str,
    times: usize,
    action: Action,
}

#[derive(Default)]
struct World {
    /// (plural, namespace, name) -> (replicas, resourceVersion)
    scales: HashMap<(String, String, String), (i32, u64)>,
    /// HPAs: (namespace, name, target kind, target name)
    hpas: Vec<(String, String, String, String)>,
    /// ScaledObjects (namespace, name, target name); `None`: the KEDA CRD is not installed.
    scaled_objects: Option<Vec<(String, String, String)>>,
    /// (namespace, name) -> lease object
    leases: HashMap<(String, String), Value>,
    faults: VecDeque<Fault>,
    log: Vec<(Method, String)>,
    scale_writes: usize,
    rv: u64,
}

type Shared = Arc<Mutex<World>>;

fn status(code: u16, reason: &str, message: &str, retry_after: Option<u32>) -> Response {
    let mut body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    });
    if let Some(s) = retry_after {
        body["details"] = json!({ "retryAfterSeconds": s });
    }
    let mut res = (
        StatusCode::from_u16(code).unwrap(),
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    if let Some(s) = retry_after {
        res.headers_mut()
            .insert(header::RETRY_AFTER, s.to_string().parse().unwrap());
    }
    res
}

fn ok_json(v: &Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn scale_object(plural: &str, ns: &str, name: &str, replicas: i32, rv: u64) -> Value {
    let _ = plural;
    json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {"name": name, "namespace": ns, "resourceVersion": rv.to_string(), "uid": format!("uid-{name}")},
        "spec": {"replicas": replicas},
        "status": {"replicas": replicas, "selector": format!("app={name}")},
    })
}

async fn handle(
    axum::extract::State(world): axum::extract::State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let action = {
        let mut w = world.lock().unwrap();
        w.log.push((method.clone(), path.clone()));
        let hit = w
            .faults
            .iter()
            .position(|f| f.method == method && path.ends_with(f.path_suffix));
        hit.map(|i| {
            let f = &mut w.faults[i];
            f.times -= 1;
            let a = f.action.clone();
            if f.times == 0 {
                w.faults.remove(i);
            }
            a
        })
    };
    match action {
        Some(Action::Status(code, reason, retry)) => {
            return status(code, reason, "scripted", retry);
        }
        Some(Action::Hang(d)) => {
            tokio::time::sleep(d).await;
            return status(504, "Timeout", "too late", None);
        }
        Some(Action::Lost) => {
            // The fault is spent: this runs the request as the server would.
            let _done = Box::pin(handle(
                axum::extract::State(world.clone()),
                method,
                uri,
                headers,
                body,
            ))
            .await;
            // One request, logged once.
            world.lock().unwrap().log.pop();
            return status(504, "Timeout", "the answer was lost", None);
        }
        Some(Action::Race(replicas)) => {
            let mut w = world.lock().unwrap();
            w.rv += 1;
            let rv = w.rv;
            for (_, v) in w.scales.iter_mut() {
                *v = (replicas, rv);
            }
        }
        None => {}
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let mut w = world.lock().unwrap();
    match (method.clone(), parts.as_slice()) {
        (
            m,
            [
                "apis",
                "apps",
                "v1",
                "namespaces",
                ns,
                plural @ ("deployments" | "statefulsets"),
                name,
                "scale",
            ],
        ) => {
            let key = (plural.to_string(), ns.to_string(), name.to_string());
            let Some(&(replicas, rv)) = w.scales.get(&key) else {
                return status(
                    404,
                    "NotFound",
                    &format!("{plural}.apps \"{name}\" not found"),
                    None,
                );
            };
            if m == Method::GET {
                return ok_json(&scale_object(plural, ns, name, replicas, rv));
            }
            if m != Method::PUT {
                return status(405, "MethodNotAllowed", "method not allowed", None);
            }
            let ctype = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !ctype.starts_with("application/json") {
                return status(
                    415,
                    "UnsupportedMediaType",
                    &format!("unsupported content type {ctype}"),
                    None,
                );
            }
            let Ok(v) = serde_json::from_slice::<Value>(&body) else {
                return status(400, "BadRequest", "body is not JSON", None);
            };
            if v["kind"] != "Scale" || v["apiVersion"] != "autoscaling/v1" {
                return status(400, "BadRequest", "expected autoscaling/v1 Scale", None);
            }
            if v["metadata"]["name"] != *name {
                return status(
                    400,
                    "BadRequest",
                    "name in body does not match the URL",
                    None,
                );
            }
            // Stricter than the real server (which allows an unconditional update): prescale
            // must always send the resourceVersion it read.
            let Some(sent_rv) = v["metadata"]["resourceVersion"].as_str() else {
                return status(
                    422,
                    "Invalid",
                    "metadata.resourceVersion is required here",
                    None,
                );
            };
            let Some(new) = v["spec"]["replicas"].as_i64().filter(|r| *r >= 0) else {
                return status(
                    422,
                    "Invalid",
                    "spec.replicas must be a non-negative integer",
                    None,
                );
            };
            if sent_rv != rv.to_string() {
                return status(
                    409,
                    "Conflict",
                    &format!(
                        "Operation cannot be fulfilled on {plural}.apps \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
                    ),
                    None,
                );
            }
            w.rv += 1;
            let rv = w.rv;
            w.scales.insert(key, (new as i32, rv));
            w.scale_writes += 1;
            ok_json(&scale_object(plural, ns, name, new as i32, rv))
        }
        (
            Method::GET,
            [
                "apis",
                "autoscaling",
                "v2",
                "namespaces",
                ns,
                "horizontalpodautoscalers",
            ],
        ) => {
            let items: Vec<Value> = w
                .hpas
                .iter()
                .filter(|h| h.0 == *ns)
                .map(|(ns, name, kind, target)| json!({
                    "metadata": {"name": name, "namespace": ns},
                    "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": kind, "name": target}, "maxReplicas": 10},
                }))
                .collect();
            ok_json(
                &json!({"kind": "HorizontalPodAutoscalerList", "apiVersion": "autoscaling/v2", "metadata": {"resourceVersion": "1"}, "items": items}),
            )
        }
        (
            Method::GET,
            [
                "apis",
                "keda.sh",
                "v1alpha1",
                "namespaces",
                ns,
                "scaledobjects",
            ],
        ) => match &w.scaled_objects {
            None => status(
                404,
                "NotFound",
                "the server could not find the requested resource",
                None,
            ),
            Some(list) => {
                let items: Vec<Value> = list
                    .iter()
                    .filter(|s| s.0 == *ns)
                    .map(|(ns, name, target)| {
                        json!({
                            "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
                            "metadata": {"name": name, "namespace": ns},
                            "spec": {"scaleTargetRef": {"name": target}},
                        })
                    })
                    .collect();
                ok_json(
                    &json!({"kind": "ScaledObjectList", "apiVersion": "keda.sh/v1alpha1", "metadata": {"resourceVersion": "1"}, "items": items}),
                )
            }
        },
        (
            m,
            [
                "apis",
                "coordination.k8s.io",
                "v1",
                "namespaces",
                ns,
                "leases",
                rest @ ..,
            ],
        ) => match (m, rest) {
            (Method::GET, [name]) => match w.leases.get(&(ns.to_string(), name.to_string())) {
                Some(l) => ok_json(l),
                None => status(
                    404,
                    "NotFound",
                    &format!("leases.coordination.k8s.io \"{name}\" not found"),
                    None,
                ),
            },
            (Method::POST, []) => {
                let Ok(mut v) = serde_json::from_slice::<Value>(&body) else {
                    return status(400, "BadRequest", "body is not JSON", None);
                };
                let name = v["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let key = (ns.to_string(), name.clone());
                if w.leases.contains_key(&key) {
                    return status(
                        409,
                        "AlreadyExists",
                        &format!("leases.coordination.k8s.io \"{name}\" already exists"),
                        None,
                    );
                }
                w.rv += 1;
                v["metadata"]["resourceVersion"] = json!(w.rv.to_string());
                w.leases.insert(key, v.clone());
                (
                    StatusCode::CREATED,
                    [(header::CONTENT_TYPE, "application/json")],
                    v.to_string(),
                )
                    .into_response()
            }
            (Method::PUT, [name]) => {
                let Ok(mut v) = serde_json::from_slice::<Value>(&body) else {
                    return status(400, "BadRequest", "body is not JSON", None);
                };
                let key = (ns.to_string(), name.to_string());
                let Some(current) = w.leases.get(&key) else {
                    return status(404, "NotFound", "lease not found", None);
                };
                if v["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
                    return status(409, "Conflict", "the object has been modified", None);
                }
                w.rv += 1;
                v["metadata"]["resourceVersion"] = json!(w.rv.to_string());
                w.leases.insert(key, v.clone());
                ok_json(&v)
            }
            _ => status(405, "MethodNotAllowed", "method not allowed", None),
        },
        _ => status(
            404,
            "NotFound",
            "the server could not find the requested resource",
            None,
        ),
    }
}

async fn fake_api(world: Shared) -> SocketAddr {
    let app = axum::Router::new().fallback(handle).with_state(world);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// prescale's own client (src/app.rs), pointed at the fake.
async fn client(addr: SocketAddr, timeout: Duration) -> kube::Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cfg = KubernetesConfig {
        api_url: Some(format!("http://{addr}")),
        timeout,
        ..KubernetesConfig::default()
    };
    prescale::app::kube_client(&cfg).await.unwrap()
}

fn world_with(replicas: i32) -> Shared {
    let mut w = World {
        rv: 100,
        scaled_objects: Some(Vec::new()),
        ..World::default()
    };
    w.scales.insert(
        ("deployments".into(), "shop".into(), "web".into()),
        (replicas, 100),
    );
    w.scales.insert(
        ("statefulsets".into(), "shop".into(), "db".into()),
        (replicas, 100),
    );
    Arc::new(Mutex::new(w))
}

fn web() -> Target {
    Target {
        namespace: "shop".into(),
        name: "web".into(),
        kind: WorkloadKind::Deployment,
    }
}

const LIMITS: Limits = Limits {
    min_replicas: 1,
    max_replicas: 50,
    max_step_up: None,
    max_step_down: None,
    no_decrease: false,
    no_increase: false,
    decided_from: None,
};

async fn setup(replicas: i32) -> (Shared, ScaleActuator) {
    let world = world_with(replicas);
    let addr = fake_api(world.clone()).await;
    let act = ScaleActuator::new(
        client(addr, Duration::from_secs(2)).await,
        None,
        Duration::from_millis(700),
        2,
    );
    (world, act)
}

fn replicas(world: &Shared, plural: &str, name: &str) -> i32 {
    world.lock().unwrap().scales[&(plural.to_string(), "shop".to_string(), name.to_string())].0
}

fn scale_requests(world: &Shared, method: Method) -> usize {
    world
        .lock()
        .unwrap()
        .log
        .iter()
        .filter(|(m, p)| *m == method && p.ends_with("/scale"))
        .count()
}

#[tokio::test]
async fn writes_with_the_read_resource_version_and_only_when_needed() {
    let (world, act) = setup(3).await;
    let a = act.apply(&web(), 5, LIMITS, None).await.unwrap();
    assert_eq!((a.previous, a.replicas, a.written), (3, 5, true));
    assert_eq!(replicas(&world, "deployments", "web"), 5);
    // Same desired again: a read, no write.
    let a = act.apply(&web(), 5, LIMITS, None).await.unwrap();
    assert!(!a.written);
    assert_eq!(world.lock().unwrap().scale_writes, 1);
    // StatefulSets use their own path.
    let db = Target {
        name: "db".into(),
        kind: WorkloadKind::StatefulSet,
        ..web()
    };
    act.apply(&db, 7, LIMITS, None).await.unwrap();
    assert_eq!(replicas(&world, "statefulsets", "db"), 7);
}

#[tokio::test]
async fn min_max_and_step_are_honoured_against_observed_replicas() {
    let (world, act) = setup(10).await;
    let limits = Limits {
        min_replicas: 2,
        max_replicas: 30,
        max_step_up: Some(4),
        max_step_down: Some(2),
        no_decrease: false,
        no_increase: false,
        decided_from: None,
    };
    assert_eq!(
        act.apply(&web(), 100, limits, None).await.unwrap().replicas,
        14
    );
    assert_eq!(
        act.apply(&web(), 0, limits, None).await.unwrap().replicas,
        12
    );
    assert_eq!(replicas(&world, "deployments", "web"), 12);
}

#[tokio::test]
async fn a_guess_never_lowers_and_a_read_never_writes() {
    let (world, act) = setup(10).await;
    let up_only = Limits {
        no_decrease: true,
        ..LIMITS
    };
    // Decided without knowing the real replicas: 3 is a guess, the workload keeps its 10.
    let a = act.apply(&web(), 3, up_only, None).await.unwrap();
    assert_eq!((a.previous, a.replicas, a.written), (10, 10, false));
    // Raising is still allowed.
    let a = act.apply(&web(), 12, up_only, None).await.unwrap();
    assert_eq!((a.previous, a.replicas, a.written), (10, 12, true));
    // A read-only apply reports the replicas and writes nothing, whatever is asked.
    for wish in [1, 40] {
        let a = act
            .apply(&web(), wish, LIMITS.read_only(), None)
            .await
            .unwrap();
        assert_eq!((a.previous, a.replicas, a.written), (12, 12, false));
    }
    assert_eq!(world.lock().unwrap().scale_writes, 1);
    assert_eq!(replicas(&world, "deployments", "web"), 12);
}

#[tokio::test]
async fn a_conflict_rereads_and_redecides() {
    let (world, act) = setup(3).await;
    // Someone else scales to 9 between our read and our write: our write gets 409, we re-read
    // (9) and re-decide against it with the step limit.
    world.lock().unwrap().faults.push_back(Fault {
        method: Method::PUT,
        path_suffix: "/scale",
        times: 1,
        action: Action::Race(9),
    });
    let limits = Limits {
        max_step_down: Some(1),
        ..LIMITS
    };
    let a = act.apply(&web(), 5, limits, None).await.unwrap();
    assert_eq!(
        (a.previous, a.replicas),
        (9, 8),
        "re-decided from the new observation"
    );
    assert_eq!(replicas(&world, "deployments", "web"), 8);
    assert_eq!(scale_requests(&world, Method::PUT), 2);
    assert_eq!(world.lock().unwrap().scale_writes, 1);
}

#[tokio::test]
async fn endless_conflicts_give_up_without_writing() {
    let (world, act) = setup(3).await;
    world.lock().unwrap().faults.push_back(Fault {
        method: Method::PUT,
        path_suffix: "/scale",
        times: usize::MAX,
        action: Action::Status(409, "Conflict", None),
    });
    let e = act.apply(&web(), 5, LIMITS, None).await.unwrap_err();
    assert_eq!(e.kind(), "conflict");
    assert_eq!(scale_requests(&world, Method::PUT), 4, "bounded retries");
    assert_eq!(replicas(&world, "deployments", "web"), 3);
}

#[tokio::test]
async fn forbidden_and_gone_are_not_retried() {
    let (world, act) = setup(3).await;
    world.lock().unwrap().faults.push_back(Fault {
        method: Method::GET,
        path_suffix: "/scale",
        times: 1,
        action: Action::Status(403, "Forbidden", None),
    });
    assert_eq!(
        act.apply(&web(), 5, LIMITS, None).await.unwrap_err().kind(),
        "forbidden"
    );
    assert_eq!(
        scale_requests(&world, Method::GET),
        1,
        "no retry storm on 403"
    );
    let gone = Target {
        name: "deleted".into(),
        ..web()
    };
    assert_eq!(
        act.apply(&gone, 5, LIMITS, None).await.unwrap_err().kind(),
        "target_gone"
    );
    assert_eq!(scale_requests(&world, Method::PUT), 0);
}

#[tokio::test]
async fn throttling_honours_retry_after() {
    let (world, act) = setup(3).await;
    world.lock().unwrap().faults.push_back(Fault {
        method: Method::GET,
        path_suffix: "/scale",
        times: 1,
        action: Action::Status(429, "TooManyRequests", Some(2)),
    });
    match act.apply(&web(), 5, LIMITS, None).await {
        Err(ActuateError::Throttled { retry_after }) => {
            assert!(retry_after >= Duration::from_secs(2))
        }
        other => panic!("{other:?}"),
    }
    let before = world.lock().unwrap().log.len();
    // Within Retry-After nothing is sent at all.
    assert_eq!(
        act.apply(&web(), 5, LIMITS, None).await.unwrap_err().kind(),
        "throttled"
    );
    assert_eq!(world.lock().unwrap().log.len(), before);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(act.apply(&web(), 5, LIMITS, None).await.unwrap().written);
}

#[tokio::test]
async fn server_errors_and_hangs_are_retried_within_a_budget() {
    let (world, act) = setup(3).await;
    world.lock().unwrap().faults.push_back(Fault {
        method: Method::GET,
        path_suffix: "/scale",
        times: 1,
        action: Action::Status(503, "ServiceUnavailable", None),
    });
    assert!(
        act.apply(&web(), 5, LIMITS, None).await.unwrap().written,
        "one 503 is retried"
    );

    world.lock().unwrap().faults.push_back(Fault {
        method: Method::GET,
        path_suffix: "/scale",
        times: usize::MAX,
        action: Action::Hang(Duration::from_secs(5)),
    });
    let t = Instant::now();
    let e = act.apply(&web(), 6, LIMITS, None).await.unwrap_err();
    assert_eq!(e.kind(), "unavailable");
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "bounded by timeout x attempts: {:?}",
        t.elapsed()
    );
    assert_eq!(replicas(&world, "deployments", "web"), 5, "held");
}

#[tokio::test]
async fn a_write_whose_answer_was_lost_is_still_reported_as_written() {
    let (world, act) = setup(3).await;
    world.lock().unwrap().faults.push_back(Fault {
        method: Method::PUT,
        path_suffix: "/scale",
        times: 1,
        action: Action::Lost,
    });
    // The write lands and is answered 504; its retry meets the resourceVersion that write
    // made (409); the read after finds 5 in place: that change was ours.
    let a = act.apply(&web(), 5, LIMITS, None).await.unwrap();
    assert_eq!((a.previous, a.replicas, a.written), (3, 5, true));
    assert_eq!(replicas(&world, "deployments", "web"), 5);
    assert_eq!(world.lock().unwrap().scale_writes, 1);
    assert_eq!(
        scale_requests(&world, Method::PUT),
        2,
        "the write and its retry"
    );
    // Already there, with no write in doubt: nothing written.
    let a = act.apply(&web(), 5, LIMITS, None).await.unwrap();
    assert_eq!((a.previous, a.replicas, a.written), (5, 5, false));
}

#[tokio::test]
async fn another_autoscaler_means_hands_off() {
    let (world, act) = setup(3).await;
    world.lock().unwrap().hpas.push((
        "shop".into(),
        "web-hpa".into(),
        "Deployment".into(),
        "web".into(),
    ));
    let e = act.apply(&web(), 5, LIMITS, None).await.unwrap_err();
    assert_eq!(e.kind(), "managed_by_hpa");
    assert!(e.to_string().contains("web-hpa"), "{e}");

    let (world2, act2) = setup(3).await;
    world2.lock().unwrap().scaled_objects =
        Some(vec![("shop".into(), "web-so".into(), "web".into())]);
    let e = act2.apply(&web(), 5, LIMITS, None).await.unwrap_err();
    assert!(e.to_string().contains("ScaledObject shop/web-so"), "{e}");
    for w in [&world, &world2] {
        assert_eq!(scale_requests(w, Method::PUT), 0);
        assert_eq!(replicas(w, "deployments", "web"), 3);
    }
    // An HPA on another target, and no KEDA installed, do not block.
    let (world3, act3) = setup(3).await;
    world3.lock().unwrap().hpas.push((
        "shop".into(),
        "x".into(),
        "Deployment".into(),
        "other".into(),
    ));
    world3.lock().unwrap().scaled_objects = None;
    assert!(act3.apply(&web(), 5, LIMITS, None).await.unwrap().written);
}

#[tokio::test]
async fn a_target_at_zero_is_left_alone() {
    let (world, act) = setup(0).await;
    assert_eq!(
        act.apply(&web(), 5, LIMITS, None).await.unwrap_err().kind(),
        "paused"
    );
    assert_eq!(replicas(&world, "deployments", "web"), 0);
}

fn lease_cfg(identity: &str, duration: Duration) -> LeaseConfig {
    LeaseConfig {
        namespace: "prescale".into(),
        name: "prescale-leader".into(),
        identity: identity.into(),
        duration,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_race_and_at_most_one_writes_per_decision() {
    let world = world_with(3);
    let addr = fake_api(world.clone()).await;
    let duration = Duration::from_secs(3);
    let a = Arc::new(LeaseElector::new(
        client(addr, Duration::from_secs(2)).await,
        lease_cfg("a", duration),
    ));
    let b = Arc::new(LeaseElector::new(
        client(addr, Duration::from_secs(2)).await,
        lease_cfg("b", duration),
    ));
    let (ra, rb) = tokio::join!(a.try_acquire_or_renew(), b.try_acquire_or_renew());
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert!(ra ^ rb, "exactly one leader: a={ra} b={rb}");
    assert_eq!(a.is_leader(), ra);
    assert_eq!(b.is_leader(), rb);

    let act_a = ScaleActuator::new(
        client(addr, Duration::from_secs(2)).await,
        Some(a.clone()),
        Duration::from_secs(1),
        1,
    );
    let act_b = ScaleActuator::new(
        client(addr, Duration::from_secs(2)).await,
        Some(b.clone()),
        Duration::from_secs(1),
        1,
    );
    // Several decisions, both replicas applying each at the same time.
    for desired in [6u32, 9, 4] {
        let before = world.lock().unwrap().scale_writes;
        let t = web();
        let (x, y) = tokio::join!(
            act_a.apply(&t, desired, LIMITS, None),
            act_b.apply(&t, desired, LIMITS, None)
        );
        let errs: Vec<&str> = [&x, &y]
            .iter()
            .filter_map(|r| r.as_ref().err().map(|e| e.kind()))
            .collect();
        assert_eq!(errs, vec!["not_leader"], "the follower refuses");
        assert_eq!(
            world.lock().unwrap().scale_writes - before,
            1,
            "one write per decision"
        );
        assert_eq!(replicas(&world, "deployments", "web"), desired as i32);
    }

    // The holder keeps renewing; the other cannot take it while it does.
    let (leader, follower) = if ra { (&a, &b) } else { (&b, &a) };
    assert!(leader.try_acquire_or_renew().await.unwrap());
    assert!(!follower.try_acquire_or_renew().await.unwrap());
    // Released at shutdown: the other takes over at its next round.
    leader.release().await;
    assert!(!leader.is_leader());
    assert!(follower.try_acquire_or_renew().await.unwrap());
    assert!(follower.is_leader());
    let lease = world.lock().unwrap().leases
        [&("prescale".to_string(), "prescale-leader".to_string())]
        .clone();
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_the_lease_lapsed_writes_nothing() {
    let world = world_with(3);
    let addr = fake_api(world.clone()).await;
    // Leader for 2/3 of 3 s after the renewal, never renewed again.
    let lease = Arc::new(LeaseElector::new(
        client(addr, Duration::from_secs(2)).await,
        lease_cfg("a", Duration::from_secs(3)),
    ));
    assert!(lease.try_acquire_or_renew().await.unwrap());
    let act = ScaleActuator::new(
        client(addr, Duration::from_secs(2)).await,
        Some(lease.clone()),
        Duration::from_millis(2500),
        3,
    );
    // The first write hangs past the request timeout; the retry comes after the lease ran out.
    world.lock().unwrap().faults.push_back(Fault {
        method: Method::PUT,
        path_suffix: "/scale",
        times: 1,
        action: Action::Hang(Duration::from_secs(5)),
    });
    let e = act.apply(&web(), 8, LIMITS, None).await.unwrap_err();
    assert_eq!(e.kind(), "not_leader", "{e}");
    assert!(!lease.is_leader());
    assert_eq!(scale_requests(&world, Method::PUT), 1, "no second attempt");
    assert_eq!(world.lock().unwrap().scale_writes, 0);
    assert_eq!(replicas(&world, "deployments", "web"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_holder_loses_the_lease_after_its_duration() {
    let world = world_with(3);
    let addr = fake_api(world.clone()).await;
    let duration = Duration::from_secs(3);
    let a = LeaseElector::new(
        client(addr, Duration::from_secs(2)).await,
        lease_cfg("a", duration),
    );
    let b = LeaseElector::new(
        client(addr, Duration::from_secs(2)).await,
        lease_cfg("b", duration),
    );
    assert!(a.try_acquire_or_renew().await.unwrap());
    assert!(!b.try_acquire_or_renew().await.unwrap());
    // `a` stops acting before anyone may consider the Lease expired...
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(
        !a.is_leader(),
        "a stops acting after 2/3 of the duration without renewal"
    );
    assert!(
        !b.try_acquire_or_renew().await.unwrap(),
        "not expired yet from b's view"
    );
    // ...and `b` takes it once it has seen no renewal for the whole duration.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    assert!(b.try_acquire_or_renew().await.unwrap());
    assert!(
        !a.try_acquire_or_renew().await.unwrap(),
        "a sees b holding it"
    );
}

/// The live loop with the `/scale` actuator: a demand trace stepping up, the fake API server
/// as the cluster.
mod service {
    use super::*;
    use prescale::app::{Service, Timeline};
    use prescale::collector::{CollectError, MetricSource, Sample, TimeWindow, TraceSource};
    use prescale::config::Config;
    use prescale::sim::Trace;
    use prescale::store::{RecState, Store};

    /// A source that fails every fetch (Prometheus down).
    struct Down;

    #[async_trait::async_trait]
    impl MetricSource for Down {
        async fn fetch(&self, _: &str, _: TimeWindow) -> Result<Vec<Sample>, CollectError> {
            Err(CollectError::Empty)
        }
    }

    const STEP: i64 = 60;

    /// `before` for 500 rows of a minute, then `after` until `rows`.
    fn step_trace(rows: i64, before: f64, after: f64) -> Trace {
        let mut csv = String::from("timestamp,value\n");
        for i in 0..rows {
            let v = if i < 500 { before } else { after };
            csv.push_str(&format!("{},{v}\n", i * STEP));
        }
        Trace::parse(std::path::Path::new("step.csv"), csv.as_bytes()).unwrap()
    }

    fn trace() -> Trace {
        // About eight hours at 100, then 900: at capacity 100 per replica the loop must ask
        // for more.
        step_trace(600, 100.0, 900.0)
    }

    /// A config on the fake API with these `workloads:` entries.
    fn config_with(api: SocketAddr, data: &std::path::Path, workloads: &str) -> Config {
        let yaml = format!(
            "prometheus: {{url: 'http://127.0.0.1:9', timeout: 1s}}\n\
             loop: {{interval: 60s, history: 6h}}\n\
             data_dir: '{}'\n\
             kubernetes: {{api_url: 'http://{api}', timeout: 2s}}\n\
             workloads:\n{workloads}",
            data.display()
        );
        Config::parse(std::path::Path::new("test.yaml"), &yaml, &|_| None).unwrap()
    }

    /// One workload, `shop/web` on `demo:0`, with `extra` settings (mode, actuator, ...).
    fn one_workload(api: SocketAddr, data: &std::path::Path, extra: &str) -> Config {
        let web = format!(
            "- {{namespace: shop, name: web, demand_query: 'demo:0', capacity_per_replica: 100, min_replicas: 1, max_replicas: 20, {extra}}}\n"
        );
        config_with(api, data, &web)
    }

    fn config(api: SocketAddr, data: &std::path::Path) -> Config {
        one_workload(api, data, "mode: auto, actuator: scale")
    }

    async fn service(
        world: &Shared,
        source: Arc<dyn MetricSource>,
        start: i64,
    ) -> (Service, tempfile::TempDir) {
        let addr = fake_api(world.clone()).await;
        let data = tempfile::tempdir().unwrap();
        let cfg = config(addr, data.path());
        (build(cfg, source, start).await, data)
    }

    /// The service on `cfg` with prescale's own /scale actuator, on a virtual clock.
    async fn build(cfg: Config, source: Arc<dyn MetricSource>, start: i64) -> Service {
        let (actuator, _) = prescale::app::scale_actuator(&cfg.kubernetes)
            .await
            .unwrap();
        let timeline = Timeline::Virtual {
            now: std::sync::atomic::AtomicI64::new(start),
            per_tick: STEP,
        };
        Service::with_actuator(
            cfg,
            source,
            timeline,
            STEP as u64,
            Duration::from_secs(1),
            Some(actuator),
        )
        .unwrap()
    }

    fn view(svc: &Service) -> prescale::app::WorkloadView {
        svc.shared().views.read().unwrap()["shop/web"].clone()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_loop_scales_the_deployment_and_reads_it_back() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let world = world_with(1);
        let (svc, _data) = service(&world, Arc::new(TraceSource::new(&trace())), 0).await;
        for t in (400..=520).map(|i| i * STEP) {
            svc.run_once(t).await;
        }
        let v = view(&svc);
        let on_server = replicas(&world, "deployments", "web");
        assert!(
            on_server >= 9,
            "the step to 900 was applied: {on_server} replicas"
        );
        assert_eq!(
            v.current_replicas,
            Some(on_server as u32),
            "current is what the API says"
        );
        assert_eq!(v.desired_replicas, Some(on_server as u32));
        assert!(v.actuator_error.is_none(), "{:?}", v.actuator_error);
        // Reads only when the wish changes (or every 5 minutes), not once per loop.
        let reads = scale_requests(&world, Method::GET);
        let writes = world.lock().unwrap().scale_writes;
        assert!(
            reads <= writes + 2,
            "{reads} reads for {writes} writes over 121 loops"
        );
        let metrics = svc.shared().metrics.encode();
        assert!(metrics.contains(
            "prescale_actuations_total{namespace=\"shop\",workload=\"web\",result=\"written\"}"
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_competing_hpa_is_reported_and_left_alone() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let world = world_with(1);
        world.lock().unwrap().hpas.push((
            "shop".into(),
            "web".into(),
            "Deployment".into(),
            "web".into(),
        ));
        let (svc, _data) = service(&world, Arc::new(TraceSource::new(&trace())), 0).await;
        for t in (500..=510).map(|i| i * STEP) {
            svc.run_once(t).await;
        }
        let v = view(&svc);
        assert!(
            v.actuator_error
                .as_deref()
                .is_some_and(|e| e.starts_with("managed_by_hpa")),
            "{:?}",
            v.actuator_error
        );
        assert_eq!(scale_requests(&world, Method::PUT), 0);
        // Checked once, then backed off: not one HPA list per loop.
        let lists = world
            .lock()
            .unwrap()
            .log
            .iter()
            .filter(|(_, p)| p.ends_with("horizontalpodautoscalers"))
            .count();
        assert_eq!(lists, 1);
    }

    /// A trace at 900 for 500 rows, then 100 until `rows`.
    fn falling(rows: i64) -> Trace {
        step_trace(rows, 900.0, 100.0)
    }

    /// `shop/web` on `demo:0` with `web` settings, and `shop/b`, `shop/c` on `demo:1`, `demo:2`.
    fn three_workloads(api: SocketAddr, data: &std::path::Path, web: &str) -> Config {
        let entry = |name: &str, query: &str, extra: &str| {
            format!(
                "- {{namespace: shop, name: {name}, demand_query: '{query}', capacity_per_replica: 100, max_replicas: 20{extra}}}\n"
            )
        };
        let all = entry("web", "demo:0", &format!(", {web}"))
            + &entry("b", "demo:1", "")
            + &entry("c", "demo:2", "");
        config_with(api, data, &all)
    }

    /// Plays `demo:0` from its trace; the other queries fail while the flag is set and play
    /// the same trace otherwise.
    struct Switchable(TraceSource, std::sync::atomic::AtomicBool);

    #[async_trait::async_trait]
    impl MetricSource for Switchable {
        async fn fetch(&self, q: &str, w: TimeWindow) -> Result<Vec<Sample>, CollectError> {
            if q != "demo:0" && self.1.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(CollectError::Empty);
            }
            self.0.fetch("demo:0", w).await
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn when_most_workloads_fail_nothing_is_scaled_down() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let world = world_with(1);
        let addr = fake_api(world.clone()).await;
        let data = tempfile::tempdir().unwrap();
        let cfg = three_workloads(addr, data.path(), "mode: auto, actuator: scale");
        let source = Arc::new(Switchable(
            TraceSource::new(&falling(600)),
            std::sync::atomic::AtomicBool::new(true),
        ));
        let svc = build(cfg, source, 0).await;
        for t in (480..=499).map(|i| i * STEP) {
            svc.run_once(t).await;
        }
        let high = replicas(&world, "deployments", "web");
        assert!(high >= 9, "{high}");
        for t in (500..=560).map(|i| i * STEP) {
            svc.run_once(t).await;
        }
        assert_eq!(
            replicas(&world, "deployments", "web"),
            high,
            "held while 2 of 3 workloads fail"
        );
        let v = view(&svc);
        assert_eq!(v.term.as_deref(), Some("safety_hold"));
        assert!(v.desired_replicas.unwrap() >= high as u32);
        assert!(
            svc.shared()
                .metrics
                .encode_text()
                .contains("prescale_safe_to_act 0")
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_approved_scale_down_waits_while_most_workloads_fail() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let world = world_with(9);
        let addr = fake_api(world.clone()).await;
        let data = tempfile::tempdir().unwrap();
        let cfg = three_workloads(
            addr,
            data.path(),
            "mode: recommend, actuator: scale, recommendation_ttl: 1h",
        );
        let source = Arc::new(Switchable(
            TraceSource::new(&falling(700)),
            std::sync::atomic::AtomicBool::new(false),
        ));
        let svc = build(cfg, source.clone(), 0).await;
        let store = Store::open(&Store::sqlite_url(data.path())).await.unwrap();
        svc.attach_store(store.clone()).await.unwrap();
        // Demand falls at row 500: a scale-down from the 9 running is proposed.
        let mut t = 480;
        let pending = loop {
            svc.run_once(t * STEP).await;
            t += 1;
            let recs = recommendations(&store).await;
            if let Some(r) = recs
                .into_iter()
                .find(|r| r.state == RecState::Pending && r.to_replicas < 9)
            {
                break r;
            }
            assert!(t < 560, "no scale-down proposed");
        };
        // Two of three workloads fail for two loops: scale-downs become unsafe...
        source.1.store(true, std::sync::atomic::Ordering::SeqCst);
        for _ in 0..2 {
            svc.run_once(t * STEP).await;
            t += 1;
        }
        let safe = |svc: &Service| {
            svc.shared()
                .safe_to_act
                .load(std::sync::atomic::Ordering::SeqCst)
        };
        assert!(!safe(&svc));
        // ...and the scale-down approved now is held, still approved, not failed.
        store
            .decide(&pending.id, RecState::Approved, "alice", None, t * STEP)
            .await
            .unwrap();
        for _ in 0..2 {
            svc.run_once(t * STEP).await;
            t += 1;
        }
        assert_eq!(replicas(&world, "deployments", "web"), 9);
        assert_eq!(world.lock().unwrap().scale_writes, 0);
        assert_eq!(
            store.get(&pending.id).await.unwrap().state,
            RecState::Approved
        );
        // A flapping source (one good loop between failing ones) is no recovery: still held.
        for i in 0..6 {
            source
                .1
                .store(i % 2 == 1, std::sync::atomic::Ordering::SeqCst);
            svc.run_once(t * STEP).await;
            t += 1;
            assert!(!safe(&svc), "flapping, loop {i}");
        }
        // The failures end: three healthy loops make it safe, the next applies the approval.
        source.1.store(false, std::sync::atomic::Ordering::SeqCst);
        for i in 0..3 {
            assert_eq!(
                store.get(&pending.id).await.unwrap().state,
                RecState::Approved,
                "healthy loop {i}"
            );
            svc.run_once(t * STEP).await;
            t += 1;
            assert_eq!(safe(&svc), i == 2, "healthy loop {i}");
        }
        assert_eq!(world.lock().unwrap().scale_writes, 0);
        svc.run_once(t * STEP).await;
        let done = store.get(&pending.id).await.unwrap();
        assert_eq!(done.state, RecState::Applied, "{done:?}");
        assert_eq!(
            replicas(&world, "deployments", "web"),
            pending.to_replicas as i32
        );
        assert_eq!(world.lock().unwrap().scale_writes, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_loop_prunes_the_store_hourly() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let world = world_with(3);
        let addr = fake_api(world.clone()).await;
        let data = tempfile::tempdir().unwrap();
        let svc = build(config(addr, data.path()), Arc::new(Down), 0).await;
        let store = Store::open(&Store::sqlite_url(data.path())).await.unwrap();
        svc.attach_store(store.clone()).await.unwrap();
        // Applied changes of shop/other, 200 and 199 days before the loop's clock (the default
        // retention is 90 days): the older one goes, the newest applied one stays.
        let old = |days: i64, to: u32| prescale::store::Recommendation {
            state: RecState::Applied,
            ..common::recommendation("shop", "other", 3, to, 500 * STEP - days * 86_400)
        };
        let (a, b, c) = (old(200, 4), old(199, 5), old(198, 6));
        for r in [&a, &b] {
            assert!(store.create(r, "prescale").await.unwrap());
        }
        svc.run_once(500 * STEP).await;
        assert!(store.get(&a.id).await.is_err(), "pruned at the first loop");
        assert_eq!(store.get(&b.id).await.unwrap().to_replicas, 5);
        // An hour of loop time passes before the next prune.
        assert!(store.create(&c, "prescale").await.unwrap());
        svc.run_once(501 * STEP).await;
        assert!(store.get(&b.id).await.is_ok(), "not again within the hour");
        svc.run_once(560 * STEP).await;
        assert!(store.get(&b.id).await.is_err(), "pruned an hour later");
        assert_eq!(store.all_last_applied().await.unwrap()["shop/other"], 6);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fresh_start_reads_before_it_lowers() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        // 15 replicas run; demand needs about 2. The first decision is made without knowing
        // the 15: it may raise, never lower.
        let world = world_with(15);
        let (svc, _data) = service(&world, Arc::new(TraceSource::new(&trace())), 0).await;
        svc.run_once(400 * STEP).await;
        assert_eq!(replicas(&world, "deployments", "web"), 15);
        assert_eq!(world.lock().unwrap().scale_writes, 0);
        let v = view(&svc);
        assert_eq!(v.current_replicas, Some(15), "learned from /scale");
        assert!(v.desired_replicas.unwrap() < 15, "{v:?}");
        // Then the 15 it found stand in the stabilisation window, as the HPA's window starts:
        // nothing goes down for 300 s, then it does.
        for k in 1..=4 {
            svc.run_once((400 + k) * STEP).await;
            assert_eq!(replicas(&world, "deployments", "web"), 15, "loop {k}");
        }
        for k in 5..=8 {
            svc.run_once((400 + k) * STEP).await;
        }
        assert!(replicas(&world, "deployments", "web") < 15);
    }

    fn recommend_config(api: SocketAddr, data: &std::path::Path, actuator: &str) -> Config {
        let extra =
            format!("mode: recommend, actuator: {actuator}, auto_approve_scale_up_percent: 1000");
        one_workload(api, data, &extra)
    }

    async fn recommendations(store: &Store) -> Vec<prescale::store::Recommendation> {
        let mut all = store
            .list(&prescale::store::RecFilter {
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap();
        all.reverse();
        all
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recommend_mode_with_scale_starts_from_the_replicas_really_there() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let world = world_with(3);
        let addr = fake_api(world.clone()).await;
        let data = tempfile::tempdir().unwrap();
        let cfg = recommend_config(addr, data.path(), "scale");
        let svc = build(cfg, Arc::new(TraceSource::new(&trace())), 0).await;
        let store = Store::open(&Store::sqlite_url(data.path())).await.unwrap();
        svc.attach_store(store.clone()).await.unwrap();
        svc.run_once(480 * STEP).await;
        assert!(
            recommendations(&store).await.is_empty(),
            "nothing proposed before /scale was read"
        );
        assert_eq!(view(&svc).current_replicas, Some(3));
        for t in (481..=510).map(|i| i * STEP) {
            svc.run_once(t).await;
        }
        let recs = recommendations(&store).await;
        let applied: Vec<_> = recs
            .iter()
            .filter(|r| r.state == RecState::Applied)
            .collect();
        assert_eq!(applied.len(), 1, "{recs:?}");
        let up = applied[0];
        assert_eq!(up.from_replicas, 3, "from the replicas read: {up:?}");
        assert!(up.reason.from_known);
        assert_eq!(up.decided_by.as_deref(), Some(prescale::app::AUTONOMY));
        assert!(up.to_replicas >= 9, "{up:?}");
        assert_eq!(
            replicas(&world, "deployments", "web"),
            up.to_replicas as i32
        );
        assert_eq!(world.lock().unwrap().scale_writes, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nothing_is_approved_automatically_from_an_unknown_start() {
        // KEDA in recommend mode: before the first applied change nothing is published, so
        // where the workload stands is unknown and even a small scale-up waits for a person.
        let data = tempfile::tempdir().unwrap();
        let cfg = recommend_config("127.0.0.1:9".parse().unwrap(), data.path(), "keda");
        let svc = Service::new(
            cfg,
            Arc::new(TraceSource::new(&trace())),
            Timeline::Virtual {
                now: std::sync::atomic::AtomicI64::new(0),
                per_tick: STEP,
            },
            STEP as u64,
            Duration::from_secs(1),
        )
        .unwrap();
        let store = Store::open(&Store::sqlite_url(data.path())).await.unwrap();
        svc.attach_store(store.clone()).await.unwrap();
        for t in (495..=505).map(|i| i * STEP) {
            svc.run_once(t).await;
        }
        let recs = recommendations(&store).await;
        assert!(!recs.is_empty());
        for r in &recs {
            assert!(
                matches!(r.state, RecState::Pending | RecState::Superseded),
                "{r:?}"
            );
            assert!(r.decided_by.is_none() && !r.reason.from_known, "{r:?}");
        }
        assert!(recs.iter().any(|r| r.to_replicas > r.from_replicas));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn missing_data_never_touches_the_deployment() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let world = world_with(7);
        let (svc, _data) = service(&world, Arc::new(Down), 0).await;
        for t in (500..=505).map(|i| i * STEP) {
            svc.run_once(t).await;
        }
        assert_eq!(view(&svc).state, prescale::app::WorkloadState::Degraded);
        assert!(
            world.lock().unwrap().log.is_empty(),
            "no API call at all on missing data"
        );
        assert_eq!(replicas(&world, "deployments", "web"), 7);
    }
}

#[tokio::test]
async fn an_approval_is_applied_once_even_after_a_crash_and_never_forced_when_stale() {
    // The write of an approved 3 -> 7 went through, then the process died before recording
    // it: the retry finds 7 and writes nothing.
    let (world, act) = setup(7).await;
    let a = act.apply(&web(), 7, LIMITS, Some(3)).await.unwrap();
    assert_eq!((a.replicas, a.written), (7, false));
    assert_eq!(world.lock().unwrap().scale_writes, 0);
    // Someone moved it to 9 since the 3 -> 7 recommendation: not forced.
    let (world, act) = setup(9).await;
    let e = act.apply(&web(), 7, LIMITS, Some(3)).await.unwrap_err();
    assert_eq!(e.kind(), "stale");
    assert_eq!(replicas(&world, "deployments", "web"), 9);
}
