//! `prescale serve` as a newcomer meets it: the embedded demo over HTTP, readiness, the
//! read API, SIGHUP ignored, SIGTERM; and `check-config` on good and bad files.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design
#![allow(clippy::disallowed_methods)] // polling a child process from a test thread

use std::process::{Command, Stdio};
use std::time::Duration;

mod common;
use common::{free_port, http_get as get};

#[test]
fn the_demo_serves_forecasts_and_stops_cleanly_on_sigterm() {
    let port = free_port();
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_prescale"))
        .args(["serve", "--demo-tick", "1s"])
        .env("PRESCALE_LISTEN_HTTP", format!("127.0.0.1:{port}"))
        .env("PRESCALE_LISTEN_GRPC", format!("127.0.0.1:{}", free_port()))
        .env("PRESCALE_DATA_DIR", data.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = false;
    for _ in 0..300 {
        if get(port, "/readyz").is_some_and(|(s, _)| s == 200) {
            ready = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ready, "demo never became ready");
    assert_eq!(get(port, "/healthz").unwrap().0, 200);
    let (status, body) = get(port, "/api/v1/workloads").unwrap();
    assert_eq!(status, 200);
    let workloads: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(workloads.as_array().unwrap().len(), 2);
    assert!(workloads[0]["desired_replicas"].as_u64().unwrap() >= 1);
    let (status, metrics) = get(port, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("prescale_desired_replicas{namespace=\"demo\",workload=\"web\"}"));
    assert!(
        metrics.contains("prescale_forecast_demand{"),
        "no forecast after warm-up"
    );
    assert_eq!(get(port, "/api/v1/workloads/demo/nope").unwrap().0, 404);

    // Let a few more loops run: they are not snapshotted yet (at most every 30 s)...
    let last_sample = |text: &str| -> i64 {
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        v["demo/web"]["last_sample_at"].as_i64().unwrap()
    };
    let first = last_sample(&std::fs::read_to_string(data.path().join("snapshot.json")).unwrap());
    std::thread::sleep(Duration::from_millis(2500));

    let pid = child.id().to_string();
    let kill = |signal: &str| {
        Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap()
            .success()
    };
    // SIGHUP (a reflexive "reload") is ignored: the service keeps serving.
    assert!(kill("-HUP"));
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP stopped the service"
    );
    assert_eq!(get(port, "/healthz").unwrap().0, 200);

    // SIGTERM: drains and exits 0; the snapshot survives for the next start.
    assert!(kill("-TERM"));
    let mut status = None;
    for _ in 0..100 {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = status.expect("no exit within 10 s of SIGTERM");
    assert!(status.success(), "{status:?}");
    // ...so a newer snapshot means shutdown wrote one.
    let snapshot = std::fs::read_to_string(data.path().join("snapshot.json")).unwrap();
    assert!(last_sample(&snapshot) > first, "no snapshot at shutdown");
}

fn check_config(path: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_prescale"))
        .arg("check-config")
        .arg(path)
        .output()
        .unwrap()
}

#[test]
fn the_example_config_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/prescale.yaml");
    let o = check_config(&path);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn check_config_exits_64_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let good = "prometheus:\n  url: http://127.0.0.1:9090\nworkloads:\n- {namespace: shop, name: web, demand_query: 'up', capacity_per_replica: 5, max_replicas: 3}\n";
    let path = dir.path().join("good.yaml");
    std::fs::write(&path, good).unwrap();
    let o = check_config(&path);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let bad = good.replace("max_replicas: 3", "max_replicas: 3, min_replicas: 9");
    std::fs::write(&path, bad).unwrap();
    let o = check_config(&path);
    assert_eq!(o.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&o.stderr).contains("workloads[0].min_replicas"));
}

/// Signals are handled from the start, not only once the service serves: a SIGHUP while it
/// is still opening its store (here a PostgreSQL that accepts the connection and never
/// answers, fault injection) does not kill it.
#[cfg(unix)]
#[test]
fn a_sighup_during_a_slow_start_is_ignored() {
    use std::os::unix::process::ExitStatusExt;
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let pg = silent.local_addr().unwrap().port();
    let data = tempfile::tempdir().unwrap();
    let cfg = data.path().join("prescale.yaml");
    std::fs::write(
        &cfg,
        format!(
            "prometheus: {{url: 'http://127.0.0.1:9', timeout: 1s}}\n\
             data_dir: '{}'\n\
             store: {{url: 'postgres://prescale@127.0.0.1:{pg}/prescale'}}\n\
             listen: {{http: '127.0.0.1:{}', grpc: '127.0.0.1:{}'}}\n\
             workloads:\n\
             - {{namespace: shop, name: web, demand_query: 'up', capacity_per_replica: 10, max_replicas: 5}}\n",
            data.path().display(),
            free_port(),
            free_port()
        ),
    )
    .unwrap();
    let mut child = common::Kill(
        Command::new(env!("CARGO_BIN_EXE_prescale"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // The store is being opened: the service is past its start but serves nothing yet.
    let (_held, _) = silent.accept().unwrap();
    let pid = child.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    std::thread::sleep(Duration::from_millis(700));
    let status = child.0.try_wait().unwrap();
    assert!(
        status.is_none(),
        "stopped by a SIGHUP during start-up: {status:?} (signal {:?})",
        status.and_then(|s| s.signal())
    );
}
