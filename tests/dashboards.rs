//! The Grafana dashboard: lint rules (after grafana/dashboard-linter's), and every panel
//! query run against a real Prometheus scraping a running prescale.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design
#![allow(clippy::disallowed_methods)] // polling child processes from a test thread

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;
use common::{Kill, free_port, http_get};

fn dashboard() -> serde_json::Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards/prescale.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn exprs(d: &serde_json::Value) -> Vec<String> {
    d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            p["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["expr"].as_str().unwrap().to_string())
        })
        .collect()
}

#[test]
fn the_dashboard_follows_the_lint_rules() {
    let d = dashboard();
    assert_eq!(d["uid"], "prescale-overview");
    let vars = d["templating"]["list"].as_array().unwrap();
    assert!(vars.iter().any(|v| v["name"] == "datasource"
        && v["type"] == "datasource"
        && v["query"] == "prometheus"));
    let mut ids = HashSet::new();
    for p in d["panels"].as_array().unwrap() {
        assert!(ids.insert(p["id"].as_i64().unwrap()), "duplicate panel id");
        assert_eq!(p["datasource"]["uid"], "${datasource}");
        for t in p["targets"].as_array().unwrap() {
            assert_eq!(t["datasource"]["uid"], "${datasource}");
        }
    }
    for e in exprs(&d) {
        if e.contains("rate(") {
            assert!(e.contains("[$__rate_interval]"), "{e}");
        }
        assert!(e.contains("prescale_"), "{e}");
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn every_panel_query_returns_data_from_a_real_scrape() {
    // prescale's demo, scraped every second by a real Prometheus.
    let app_port = free_port();
    let data = tempfile::tempdir().unwrap();
    let _app = Kill(
        Command::new(env!("CARGO_BIN_EXE_prescale"))
            .args(["serve", "--demo-tick", "1s"])
            .env("PRESCALE_LISTEN_HTTP", format!("127.0.0.1:{app_port}"))
            .env(
                "PRESCALE_LISTEN_GRPC",
                format!("127.0.0.1:{}", common::free_port()),
            )
            .env("PRESCALE_DATA_DIR", data.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: prescale\n    honor_labels: true\n    static_configs:\n      - targets: ['127.0.0.1:{app_port}']\n"
        ),
    )
    .unwrap();
    let prom_port = free_port();
    let _prom = Kill(
        Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian package `prometheus`) must be installed"),
    );
    let d = dashboard();
    let queries: Vec<String> = exprs(&d)
        .into_iter()
        .map(|e| {
            e.replace("$namespace", "demo")
                .replace("$workload", "web")
                .replace("$__rate_interval", "30s")
        })
        .collect();
    // Wait until every query has data (scrapes every second; rates need a few samples).
    let mut missing = queries.clone();
    for _ in 0..90 {
        missing.retain(|q| {
            let path = format!("/api/v1/query?query={}", urlencode(q));
            match http_get(prom_port, &path) {
                Some((200, body)) => {
                    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                    v["data"]["result"].as_array().is_none_or(|r| r.is_empty())
                }
                _ => true,
            }
        });
        if missing.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        missing.is_empty(),
        "panel queries without data: {missing:#?}"
    );
    // The variables' queries too.
    let (_, body) = http_get(prom_port, "/api/v1/label/workload/values").unwrap();
    assert!(
        body.contains("\"web\"") && body.contains("\"api\""),
        "{body}"
    );
}
