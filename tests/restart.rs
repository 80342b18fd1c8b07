//! A restart goes on from where the service stopped: the forecasting state written at
//! shutdown is restored, only the samples since are fetched, and the forecasts are those of
//! a service that never stopped, as are its decisions, with no refit before the schedule's.
//! A damaged state file costs a cold start, never the start.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prescale::app::{Restored, Service, Timeline};
use prescale::collector::{CollectError, MetricSource, Sample, TimeWindow, TraceSource};
use prescale::config::Config;
use prescale::sim::Trace;

const STEP: i64 = 300;

/// The bundled trace, with every window asked for written down.
struct Recording {
    inner: TraceSource,
    asked: Mutex<Vec<TimeWindow>>,
}

#[async_trait::async_trait]
impl MetricSource for Recording {
    async fn fetch(&self, q: &str, w: TimeWindow) -> Result<Vec<Sample>, CollectError> {
        self.asked.lock().unwrap().push(w);
        self.inner.fetch(q, w).await
    }
}

fn trace() -> Trace {
    common::nasa_fixture()
}

fn service(data: &std::path::Path, now: i64) -> (Service, Arc<Recording>) {
    service_of(data, now, &["web"], "")
}

/// The bundled trace behind each of `names` (namespace `shop`); `loop_extra` is added to
/// the loop settings.
fn service_of(
    data: &std::path::Path,
    now: i64,
    names: &[&str],
    loop_extra: &str,
) -> (Service, Arc<Recording>) {
    let trace = trace();
    let cap = trace.value_quantile(0.99) / 20.0;
    let mut yaml = common::test_config_head(data)
        .replace("history: 7d}", &format!("history: 7d{loop_extra}}}"));
    for name in names {
        yaml += &format!(
            "- {{namespace: shop, name: {name}, demand_query: 'demo:0', capacity_per_replica: {cap}, max_replicas: 60, startup: 3m}}\n"
        );
    }
    let cfg = Config::parse(std::path::Path::new("t.yaml"), &yaml, &|_| None).unwrap();
    let source = Arc::new(Recording {
        inner: TraceSource::new(&trace),
        asked: Mutex::new(Vec::new()),
    });
    let timeline = Timeline::Virtual {
        now: std::sync::atomic::AtomicI64::new(now),
        per_tick: STEP,
    };
    let svc = Service::new(
        cfg,
        source.clone(),
        timeline,
        STEP as u64,
        Duration::from_secs(1),
    )
    .unwrap();
    (svc, source)
}

fn forecast(svc: &Service) -> (Vec<f32>, Vec<f32>, Option<String>) {
    let v = svc.shared().views.read().unwrap()["shop/web"].clone();
    let f = v.forecast.unwrap();
    (f.point.clone(), f.upper.clone(), v.model)
}

/// The decision and the term that set it.
fn decision(svc: &Service) -> (Option<u32>, Option<String>) {
    let v = svc.shared().views.read().unwrap()["shop/web"].clone();
    (v.desired_replicas, v.term)
}

/// A service cold-started on `data` a week into the trace, run for twelve loops and saved:
/// (the service, its start, the next loop's time).
async fn saved_after_an_hour(data: &std::path::Path) -> (Service, i64, i64) {
    let t0 = trace().timestamps[0] + 7 * 86_400;
    let (a, _) = service(data, t0);
    let mut t = t0;
    for _ in 0..12 {
        a.run_once(t).await;
        t += STEP;
    }
    a.save().await;
    (a, t0, t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_goes_on_from_the_saved_state() {
    let data = tempfile::tempdir().unwrap();
    let (a, t0, mut t) = saved_after_an_hour(data.path()).await;
    assert!(data.path().join("models.bin").exists());

    // The second process starts where the first stopped.
    let (b, asked) = service(data.path(), t - STEP);
    assert_eq!(
        b.restore().unwrap(),
        Restored {
            views: 1,
            models: 1
        }
    );
    for k in 0..48 {
        a.run_once(t).await;
        b.run_once(t).await;
        assert_eq!(forecast(&a), forecast(&b), "loop {k} after the restart");
        // The policy goes on too: its headroom tuner's shadows were saved, so the restarted
        // service does not react for hours while they score decisions again.
        assert_eq!(decision(&a), decision(&b), "decision {k} after the restart");
        assert_ne!(decision(&b).1.as_deref(), Some("reactive"), "loop {k}");
        // The saved fits were taken up: the restarted service refits nothing before the
        // schedule does (a day here), where it used to refit every model in its first loop.
        assert_eq!(b.shared().metrics.refits.get(), 0, "loop {k}");
        t += STEP;
    }
    assert!(
        a.shared().metrics.refits.get() > 0,
        "the cold start's fits are counted"
    );
    // Nothing was backfilled: the first fetch starts right after the last sample saved.
    let first = asked.asked.lock().unwrap()[0];
    assert_eq!(first.start, t0 + 11 * STEP + STEP, "{first:?}");
}

/// Killed (-9) an hour after its model state was last written (every 15 min), the service
/// comes back with the replicas of its views snapshot (every 30 s) and a stabilisation
/// window whose decisions are lost: the replicas in place stand for them, so they are not
/// dropped at the first low forecast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_from_an_older_model_state_holds_the_replicas_it_last_had() {
    let data = tempfile::tempdir().unwrap();
    let (a, _, t) = saved_after_an_hour(data.path()).await;
    let settled = decision(&a).0.unwrap();
    // Scaled up in the hour after the save, as the views snapshot says.
    let high = settled + 15;
    assert!(high <= 60, "{settled}");
    let snapshot = data.path().join("snapshot.json");
    let mut views: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&snapshot).unwrap()).unwrap();
    views["shop/web"]["current_replicas"] = high.into();
    std::fs::write(&snapshot, views.to_string()).unwrap();
    let t = t + 12 * STEP;
    let (b, _) = service(data.path(), t);
    assert_eq!(b.restore().unwrap().models, 1);
    b.run_once(t).await;
    assert_eq!(
        decision(&b),
        (Some(high), Some("stabilization".to_string()))
    );
    // A window later, the forecast decides again.
    b.run_once(t + STEP).await;
    assert!(decision(&b).0.unwrap() < high, "{:?}", decision(&b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_or_stale_state_means_a_cold_start() {
    let data = tempfile::tempdir().unwrap();
    let models = data.path().join("models.bin");
    let t0 = trace().timestamps[0] + 7 * 86_400;
    let (a, _) = service(data.path(), t0);
    a.run_once(t0).await;
    a.save().await;
    let good = std::fs::read(&models).unwrap();
    // Control: the file as written is taken up.
    let (b, _) = service(data.path(), t0 + STEP);
    assert_eq!(b.restore().unwrap().models, 1);
    // Eight days later: older than the history window, so refetched whole.
    let late = t0 + 8 * 86_400;
    let (c, asked) = service(data.path(), late);
    assert_eq!(
        c.restore().unwrap(),
        Restored {
            views: 1,
            models: 0
        }
    );
    c.run_once(late).await;
    c.save().await;
    assert_eq!(asked.asked.lock().unwrap()[0].start, late - 7 * 86_400);
    // Damaged copies of the good file: a warning and a cold start, never a failed start
    // (nor an abort: a length read from the file is bounded by the file's size).
    let header = 12; // format (u32) and count (u64)
    let mut huge_key = good[..header].to_vec();
    huge_key.extend_from_slice(&(1_u64 << 62).to_le_bytes());
    let mut flipped = good.clone();
    for b in &mut flipped[header..header + 64] {
        *b = !*b;
    }
    let cases: [(&str, Vec<u8>); 4] = [
        ("truncated", good[..good.len() / 2].to_vec()),
        ("huge length", huge_key),
        ("flipped bytes", flipped),
        ("not ours", b"not a model state at all".to_vec()),
    ];
    for (what, bytes) in cases {
        std::fs::write(&models, &bytes).unwrap();
        let (d, _) = service(data.path(), t0 + STEP);
        assert_eq!(
            d.restore().unwrap(),
            Restored {
                views: 1,
                models: 0
            },
            "{what}"
        );
        assert!(
            d.shared()
                .metrics
                .encode_text()
                .contains("prescale_errors_total{stage=\"store\",kind=\"snapshot\"} 1"),
            "{what}: the failed restore is counted"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_start_warms_the_headroom_tuner_from_the_backfill() {
    let data = tempfile::tempdir().unwrap();
    let t0 = trace().timestamps[0] + 7 * 86_400;
    let (svc, _) = service(data.path(), t0);
    svc.run_once(t0).await;
    let v = svc.shared().views.read().unwrap()["shop/web"].clone();
    assert!(v.forecast.is_some(), "no forecast after a 7-day backfill");
    // The shadows replayed the backfill's last two days, so the first live decision already
    // provisions for a judged headroom rather than reacting while they learn.
    let term = v.term.unwrap();
    assert_ne!(term, "reactive", "the tuner was not warmed by the backfill");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_start_past_its_warm_up_budget_decides_every_workload_and_warms_the_rest_later() {
    let data = tempfile::tempdir().unwrap();
    let t0 = trace().timestamps[0] + 7 * 86_400;
    let names = ["a", "b", "c"];
    // No budget: one warm-up per loop, the others wait.
    let (svc, asked) = service_of(data.path(), t0, &names, ", warmup_budget: 0s");
    let cap = trace().value_quantile(0.99) / 20.0;
    let views = |svc: &Service| {
        let shared = svc.shared();
        let v = shared.views.read().unwrap();
        names
            .iter()
            .map(|n| v[&format!("shop/{n}")].clone())
            .collect::<Vec<_>>()
    };
    let mut t = t0;
    for loop_ in 0..3_i64 {
        svc.run_once(t).await;
        let waiting = 2 - loop_;
        assert_eq!(
            svc.shared().metrics.warmups_pending.get(),
            waiting,
            "loop {loop_}"
        );
        let vs = views(&svc);
        let queued: Vec<_> = vs
            .iter()
            .filter(|v| v.reason.as_deref() == Some("warm_up_queued"))
            .collect();
        assert_eq!(queued.len() as i64, waiting, "loop {loop_}");
        for v in &vs {
            // Every workload is decided in every loop, from its newest sample.
            let demand = v.demand.unwrap();
            let desired = v.desired_replicas.unwrap();
            assert_eq!(v.last_sample_at, Some(t - t.rem_euclid(STEP)), "{}", v.name);
            if v.reason.is_some() {
                // As the HPA would: current demand at 70% of capacity, no forecast yet.
                assert_eq!(v.term.as_deref(), Some("reactive"), "{}", v.name);
                assert_eq!(v.state, prescale::app::WorkloadState::WarmingUp);
                assert!(v.forecast.is_none());
                assert!(f64::from(desired) * cap * 0.7 >= demand * 0.9, "{}", v.name);
            } else {
                // Warmed: its tuner saw the replayed tail before its first live step.
                assert!(v.forecast.is_some(), "{}", v.name);
                assert_ne!(
                    v.term.as_deref(),
                    Some("reactive"),
                    "{} loop {loop_}",
                    v.name
                );
            }
        }
        t += STEP;
    }
    // Each workload fetched its 7 days once: a waiting one keeps what it fetched.
    let long = asked
        .asked
        .lock()
        .unwrap()
        .iter()
        .filter(|w| w.end - w.start > 86_400)
        .count();
    assert_eq!(long, names.len());
}
