//! The collector and the service against a real Prometheus (Debian's `prometheus` package),
//! started on a free loopback port with history loaded by `promtool tsdb
//! create-blocks-from openmetrics`.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design
#![allow(clippy::disallowed_methods)] // polling a child process from a test thread

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use prescale::app::{Service, Timeline, WorkloadState};
use prescale::collector::{MetricSource, PrometheusSource, TimeWindow};
use prescale::config::Config;

mod common;
use common::{free_port, http_get};

const STEP: i64 = 60;

struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The demand the test loads: a daily cycle with a little structure, per minute.
fn demand(t: i64) -> f64 {
    let day = (t % 86_400) as f64 / 86_400.0;
    (200.0 + 120.0 * (2.0 * std::f64::consts::PI * day).sin() + (t / STEP % 7) as f64).round()
}

/// Starts Prometheus with `[first, last]` of demand backfilled for shop/web.
fn start(first: i64, last: i64) -> Prometheus {
    let dir = tempfile::tempdir().unwrap();
    let om = dir.path().join("backfill.om");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&om).unwrap());
    writeln!(
        f,
        "# HELP test_demand Requests per second.\n# TYPE test_demand gauge"
    )
    .unwrap();
    let mut t = first;
    while t <= last {
        writeln!(
            f,
            "test_demand{{namespace=\"shop\",workload=\"web\"}} {} {t}",
            demand(t)
        )
        .unwrap();
        t += STEP;
    }
    writeln!(f, "# EOF").unwrap();
    drop(f);
    let data = dir.path().join("data");
    let out = Command::new("promtool")
        .args([
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            "-q",
            "--max-block-duration=336h",
        ])
        .arg(&om)
        .arg(&data)
        .output()
        .expect("promtool (Debian package `prometheus`) must be installed");
    assert!(
        out.status.success(),
        "promtool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        "global:\n  scrape_interval: 15s\nscrape_configs: []\n",
    )
    .unwrap();
    let port = free_port();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg("--storage.tsdb.retention.time=3650d")
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (Debian package `prometheus`) must be installed");
    let prom = Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    };
    for _ in 0..200 {
        if http_get(port, "/-/ready").is_some_and(|(status, _)| status == 200) {
            return prom;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("prometheus did not become ready");
}

fn config(url: &str, history: &str, data_dir: &Path) -> Config {
    let yaml = format!(
        "prometheus:\n  url: {url}\n  timeout: 5s\nloop:\n  interval: 60s\n  history: {history}\ndata_dir: {}\n\
         workloads:\n- namespace: shop\n  name: web\n  demand_query: 'test_demand{{namespace=\"{{{{namespace}}}}\", workload=\"{{{{name}}}}\"}}'\n  capacity_per_replica: 20\n  max_replicas: 50\n",
        data_dir.display()
    );
    Config::parse(Path::new("t.yaml"), &yaml, &|_| None).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_and_incremental_fetches_return_exactly_the_loaded_samples() {
    let last = (1_790_000_000 / STEP) * STEP;
    let first = last - 15 * 86_400; // 21,601 points: more than one range query can hold
    let prom = start(first, last);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&prom.url, "15d", dir.path());
    let source = PrometheusSource::new(&cfg.prometheus).unwrap();
    let query = cfg.workloads[0].render_query();
    let mid = first + 10_000 * STEP;
    let a = source
        .fetch(
            &query,
            TimeWindow {
                start: first,
                end: mid,
                step: STEP as u64,
            },
        )
        .await
        .unwrap();
    let b = source
        .fetch(
            &query,
            TimeWindow {
                start: mid + STEP,
                end: last,
                step: STEP as u64,
            },
        )
        .await
        .unwrap();
    let whole = source
        .fetch(
            &query,
            TimeWindow {
                start: first,
                end: last,
                step: STEP as u64,
            },
        )
        .await
        .unwrap();
    let expected: Vec<(i64, f64)> = (0..)
        .map(|k| first + k * STEP)
        .take_while(|t| *t <= last)
        .map(|t| (t, demand(t)))
        .collect();
    let got: Vec<(i64, f64)> = a.iter().chain(&b).map(|s| (s.at, s.value)).collect();
    assert_eq!(got.len(), 21_601);
    assert_eq!(got, expected);
    assert_eq!(
        whole.iter().map(|s| (s.at, s.value)).collect::<Vec<_>>(),
        expected
    );

    // A window past the data's end is stale, not zero; an unknown series is empty.
    let late = source
        .fetch(
            &query,
            TimeWindow {
                start: last + 3600,
                end: last + 7200,
                step: 60,
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(late.kind(), "empty" | "stale"), "{late}");
    let none = source
        .fetch(
            "test_demand{workload=\"nope\"}",
            TimeWindow {
                start: first,
                end: last,
                step: 60,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(none.kind(), "empty");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forecasts_and_recommendations_appear_on_metrics() {
    let last = (1_790_000_000 / STEP) * STEP;
    let first = last - 3 * 86_400;
    let prom = start(first, last);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&prom.url, "3d", dir.path());
    let source = Arc::new(PrometheusSource::new(&cfg.prometheus).unwrap());
    let service = Service::new(cfg, source, Timeline::Wall, 60, Duration::from_secs(60)).unwrap();
    service.run_once(last).await;
    let view = service.shared().views.read().unwrap()["shop/web"].clone();
    assert_eq!(view.state, WorkloadState::Healthy, "{view:?}");
    assert_eq!(view.last_sample_at, Some(last));
    let need = (demand(last) / 20.0).ceil() as u32;
    assert!(view.desired_replicas.unwrap() >= need, "{view:?}");
    let text = service.shared().metrics.encode();
    for needle in [
        "prescale_desired_replicas{namespace=\"shop\",workload=\"web\"}",
        "prescale_forecast_demand{namespace=\"shop\",workload=\"web\",horizon=\"lead\",band=\"upper\"}",
        "prescale_forecast_demand{namespace=\"shop\",workload=\"web\",horizon=\"1h\",band=\"point\"}",
        "prescale_demand{namespace=\"shop\",workload=\"web\"}",
        "prescale_workload_state{namespace=\"shop\",workload=\"web\",state=\"healthy\"} 1",
        concat!(
            "prescale_build_info{version=\"",
            env!("CARGO_PKG_VERSION"),
            "\"} 1"
        ),
    ] {
        assert!(text.contains(needle), "missing {needle}");
    }
    // The snapshot was written and restores into a fresh service.
    assert!(dir.path().join("snapshot.json").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exposition_passes_promtool_check_metrics() {
    let last = (1_790_000_000 / STEP) * STEP;
    let prom = start(last - 86_400, last);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&prom.url, "1d", dir.path());
    let source = Arc::new(PrometheusSource::new(&cfg.prometheus).unwrap());
    let service = Service::new(cfg, source, Timeline::Wall, 60, Duration::from_secs(60)).unwrap();
    service.run_once(last).await;
    // An error too, so the counter family has a series.
    service.run_once(last + 7200).await;
    let text = service.shared().metrics.encode_text();
    assert!(text.contains("prescale_errors_total{"), "{text}");
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {said}"
    );
}
