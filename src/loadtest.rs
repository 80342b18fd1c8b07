//! `prescale bench-loop`: the service loop with many synthetic workloads, for loop time and
//! memory per workload.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::app::{Service, Timeline};
use crate::collector::{CollectError, MetricSource, Sample, TimeWindow};
use crate::config::Config;

/// Deterministic demand per workload: `synthetic:<seed>`, a daily cycle with a weekly dip,
/// a level and phase that depend on the seed, and hashed noise.
pub struct SyntheticSource;

fn noise(seed: u64, t: i64) -> f64 {
    let mut x =
        seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (t as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 31;
    x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 29;
    (x >> 11) as f64 / (1u64 << 53) as f64 - 0.5
}

/// Demand of workload `seed` at time `t`.
pub fn synthetic_demand(seed: u64, t: i64) -> f64 {
    let level = 100.0 + (seed % 400) as f64;
    let phase = (seed % 24) as f64 / 24.0;
    let day = (t.rem_euclid(86_400)) as f64 / 86_400.0;
    let weekend = if (t / 86_400).rem_euclid(7) >= 5 {
        0.7
    } else {
        1.0
    };
    let v = level * weekend * (1.0 + 0.5 * (2.0 * std::f64::consts::PI * (day + phase)).sin())
        + 0.05 * level * noise(seed, t);
    v.max(0.0)
}

#[async_trait::async_trait]
impl MetricSource for SyntheticSource {
    async fn fetch(&self, query: &str, window: TimeWindow) -> Result<Vec<Sample>, CollectError> {
        let seed: u64 = query
            .strip_prefix("synthetic:")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                CollectError::BadResponse(format!("expected synthetic:<seed>, got {query}"))
            })?;
        let step = window.step.max(1) as i64;
        let mut t = window.start.div_euclid(step) * step;
        if t < window.start {
            t += step;
        }
        let mut out = Vec::new();
        while t <= window.end {
            out.push(Sample {
                at: t,
                value: synthetic_demand(seed, t),
            });
            t += step;
        }
        if out.is_empty() {
            Err(CollectError::Empty)
        } else {
            Ok(out)
        }
    }
}

/// Figures of one run.
#[derive(Debug, Clone, Serialize)]
pub struct LoopBench {
    /// Workloads.
    pub workloads: usize,
    /// History backfilled per workload, seconds.
    pub history_seconds: u64,
    /// Sampling step, seconds.
    pub step_seconds: u64,
    /// Wall time of the first loop (backfill, fits, replay of the last two days).
    pub warmup_seconds: f64,
    /// `--warmup-budget`, seconds.
    pub warmup_budget_seconds: u64,
    /// Workloads whose warm-up still waited after the first loop, then after each steady one.
    pub warmups_pending: Vec<i64>,
    /// Wall time of each steady-state loop.
    pub loop_seconds: Vec<f64>,
    /// Resident memory before the service was built, bytes.
    pub rss_before_bytes: u64,
    /// Resident memory after the last loop, bytes.
    pub rss_after_bytes: u64,
    /// (after - before) / workloads.
    pub rss_per_workload_bytes: u64,
    /// Live heap (bytes allocated and not freed) per workload at the same two moments, when
    /// the caller counts allocations (`cargo bench --bench heap`); resident memory adds the
    /// allocator's free space to this.
    pub heap_per_workload_bytes: Option<u64>,
    /// Writing both snapshots (views and model state), as at shutdown.
    pub save_seconds: f64,
    /// Size of the model state file.
    pub models_file_bytes: u64,
    /// A second service on the same data directory: reading the snapshots back.
    pub restore_seconds: f64,
    /// Workloads whose forecasting state the second service restored.
    pub restored_models: usize,
    /// Its first loop: the samples since, one refit per model (no backfill, no replay).
    pub restart_first_loop_seconds: f64,
    /// Workloads whose decision in that loop was set by the `reactive` term (the policy
    /// decides so while its headroom tuner has not scored enough decisions: after a restart,
    /// only when the policy state was not restored).
    pub restart_reactive_decisions: usize,
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Builds a service with `n` synthetic workloads of `history` at `step` and runs one
/// warm-up loop then `loops` steady loops. `heap`, when given, reads the live heap in bytes
/// (an instrumented allocator's count).
///
/// # Errors
/// A configuration the service refuses.
pub async fn run(
    n: usize,
    history: Duration,
    step: u64,
    loops: usize,
    concurrency: usize,
    warmup_budget: Duration,
    heap: Option<fn() -> u64>,
) -> anyhow::Result<LoopBench> {
    let mut yaml = format!(
        "prometheus:\n  url: http://127.0.0.1:9\n  timeout: 1s\n  retries: 0\nloop:\n  interval: {step}s\n  history: {}s\n  concurrency: {concurrency}\n  warmup_budget: {}s\ndata_dir: {}\nworkloads:\n",
        history.as_secs(),
        warmup_budget.as_secs(),
        std::env::temp_dir().join("prescale-bench-loop").display()
    );
    for i in 0..n {
        yaml += &format!(
            "- {{namespace: bench, name: w{i}, demand_query: 'synthetic:{i}', capacity_per_replica: 20, max_replicas: 200, startup: 2m}}\n"
        );
    }
    let cfg = Config::parse(std::path::Path::new("bench"), &yaml, &|_| None)?;
    // Snapshots of an earlier run are not this run's.
    let _ = std::fs::remove_dir_all(&cfg.data_dir);
    std::fs::create_dir_all(&cfg.data_dir)?;
    // The loop's clock is the bench's (`run_once` is given the time); restore reads it.
    let build = |cfg: Config, at: i64| {
        let timeline = Timeline::Virtual {
            now: std::sync::atomic::AtomicI64::new(at),
            per_tick: step as i64,
        };
        Service::new(
            cfg,
            Arc::new(SyntheticSource),
            timeline,
            step,
            Duration::from_secs(step),
        )
    };
    let mut now = 1_790_000_000_i64 / step as i64 * step as i64;
    let rss_before = rss_bytes();
    let heap_before = heap.map(|f| f());
    let service = build(cfg.clone(), now)?;
    let clock = Instant::now();
    service.run_once(now).await;
    let warmup = clock.elapsed().as_secs_f64();
    let pending = |s: &Service| s.shared().metrics.warmups_pending.get();
    let mut warmups_pending = vec![pending(&service)];
    let mut loop_seconds = Vec::new();
    for _ in 0..loops {
        now += step as i64;
        let clock = Instant::now();
        service.run_once(now).await;
        loop_seconds.push(clock.elapsed().as_secs_f64());
        warmups_pending.push(pending(&service));
    }
    let rss_after = rss_bytes();
    let heap_per_workload_bytes = heap
        .zip(heap_before)
        .map(|(f, b)| f().saturating_sub(b) / n.max(1) as u64);
    let clock = Instant::now();
    service.save().await;
    let save_seconds = clock.elapsed().as_secs_f64();
    drop(service);
    let models_file_bytes =
        std::fs::metadata(cfg.data_dir.join("models.bin")).map_or(0, |m| m.len());
    // A restart: the next loop's time, from the snapshots.
    let clock = Instant::now();
    let again = build(cfg, now)?;
    let restored = again.restore()?;
    let restore_seconds = clock.elapsed().as_secs_f64();
    now += step as i64;
    let clock = Instant::now();
    again.run_once(now).await;
    let restart_first_loop_seconds = clock.elapsed().as_secs_f64();
    let restart_reactive_decisions = again.shared().views.read().map_or(0, |v| {
        v.values()
            .filter(|w| w.term.as_deref() == Some("reactive"))
            .count()
    });
    Ok(LoopBench {
        workloads: n,
        history_seconds: history.as_secs(),
        step_seconds: step,
        warmup_seconds: warmup,
        warmup_budget_seconds: warmup_budget.as_secs(),
        warmups_pending,
        loop_seconds,
        rss_before_bytes: rss_before,
        rss_after_bytes: rss_after,
        rss_per_workload_bytes: rss_after.saturating_sub(rss_before) / n.max(1) as u64,
        heap_per_workload_bytes,
        save_seconds,
        models_file_bytes,
        restore_seconds,
        restored_models: restored.models,
        restart_first_loop_seconds,
        restart_reactive_decisions,
    })
}

/// Latency of one row of `prescale bench-keda`.
#[derive(Debug, Clone, Serialize)]
pub struct KedaLevel {
    /// Callers: in flight at once (closed loop), or ScaledObjects (open loop).
    pub concurrency: usize,
    /// `GetMetrics` (board lookup, answer) or `baseline` (an unimplemented method of the same
    /// service: transport and routing only).
    pub call: &'static str,
    /// Calls made.
    pub calls: usize,
    /// Median latency, microseconds.
    pub p50_us: f64,
    /// 99th percentile, microseconds.
    pub p99_us: f64,
    /// Worst call, microseconds.
    pub max_us: f64,
    /// Calls per second achieved.
    pub calls_per_second: f64,
    /// Open loop only: calls per second offered, spread evenly over the callers' phases.
    pub offered_per_second: Option<f64>,
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64
}

fn level(
    concurrency: usize,
    call: &'static str,
    mut lat: Vec<u64>,
    secs: f64,
    offered: Option<f64>,
) -> KedaLevel {
    lat.sort_unstable();
    KedaLevel {
        concurrency,
        call,
        calls: lat.len(),
        p50_us: percentile(&lat, 0.5),
        p99_us: percentile(&lat, 0.99),
        max_us: lat.last().map_or(f64::NAN, |v| *v as f64),
        calls_per_second: lat.len() as f64 / secs.max(1e-9),
        offered_per_second: offered,
    }
}

type ScalerClient = crate::actuator::keda::pb::external_scaler_client::ExternalScalerClient<
    tonic::transport::Channel,
>;

/// One caller's two clients on a shared connection.
struct Caller {
    client: ScalerClient,
    raw: tonic::client::Grpc<tonic::transport::Channel>,
    name: String,
}

impl Caller {
    fn new(ch: tonic::transport::Channel, name: String) -> Self {
        Self {
            client: ScalerClient::new(ch.clone()),
            raw: tonic::client::Grpc::new(ch),
            name,
        }
    }

    /// One call: `GetMetrics`, or for the baseline the same request to a method the server
    /// does not have (UNIMPLEMENTED from the router: transport only). Returns the latency
    /// when the answer was the expected one.
    async fn call(&mut self, baseline: bool) -> Option<u64> {
        use crate::actuator::keda::{METRIC_NAME, pb};
        let req = pb::GetMetricsRequest {
            scaled_object_ref: Some(pb::ScaledObjectRef {
                name: self.name.clone(),
                namespace: "bench".to_string(),
                scaler_metadata: Default::default(),
            }),
            metric_name: METRIC_NAME.to_string(),
        };
        let t0 = Instant::now();
        let ok = if baseline {
            self.raw.ready().await.ok()?;
            let r: Result<tonic::Response<pb::GetMetricsResponse>, tonic::Status> = self
                .raw
                .unary(
                    tonic::Request::new(req),
                    tonic::codegen::http::uri::PathAndQuery::from_static(
                        "/externalscaler.ExternalScaler/Baseline",
                    ),
                    tonic_prost::ProstCodec::default(),
                )
                .await;
            r.is_err_and(|e| e.code() == tonic::Code::Unimplemented)
        } else {
            self.client.get_metrics(req).await.is_ok()
        };
        ok.then(|| t0.elapsed().as_micros() as u64)
    }
}

async fn gather(tasks: Vec<tokio::task::JoinHandle<Vec<u64>>>) -> anyhow::Result<Vec<u64>> {
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await?);
    }
    Ok(lat)
}

/// `callers` ScaledObjects calling at `rate` calls per second in all (each at its own phase,
/// as KEDA's pollers and HPA reads are) for `seconds`. Latency counts from the send, not
/// from the due time: tokio's timer wakes up to 1 ms late, which is the load generator's
/// lateness, not the server's; a caller's next call is due a whole period later, so a slow
/// answer cannot hide queued calls unless it takes longer than the period (`max_us` shows
/// that).
async fn open_loop_level(
    channels: &[tonic::transport::Channel],
    workloads: usize,
    (callers, rate, seconds): (usize, f64, u64),
    call: &'static str,
) -> anyhow::Result<KedaLevel> {
    let period = Duration::from_secs_f64(callers as f64 / rate.max(1e-9));
    let started = Instant::now() + Duration::from_millis(100);
    let end = started + Duration::from_secs(seconds);
    let tasks = (0..callers)
        .map(|c| {
            let mut caller = Caller::new(
                channels[c % channels.len()].clone(),
                format!("w{}", c % workloads.max(1)),
            );
            let phase = period.mul_f64(c as f64 / callers.max(1) as f64);
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut due = started + phase;
                while due < end {
                    tokio::time::sleep_until(due.into()).await;
                    lat.extend(caller.call(call == "baseline").await);
                    due += period;
                }
                lat
            })
        })
        .collect();
    let lat = gather(tasks).await?;
    Ok(level(callers, call, lat, seconds as f64, Some(rate)))
}

/// Serves the KEDA scaler on loopback with `workloads` fresh `auto` publications, then for
/// each level runs `level` concurrent callers over `connections` HTTP/2 connections, each
/// making calls back to back until `calls` calls are done; every call's latency is recorded.
/// The baseline asks the same server for a method it does not have, the same number of
/// times, interleaved level by level so both see the same machine. With `open_loop`
/// (callers, total rate, seconds), two last rows measure a KEDA-like steady rate.
///
/// # Errors
/// Binding or connecting on loopback.
pub async fn bench_keda(
    workloads: usize,
    levels: &[usize],
    calls: usize,
    connections: usize,
    open_loop: Option<(usize, f64, u64)>,
) -> anyhow::Result<Vec<KedaLevel>> {
    use crate::actuator::keda::{self, KedaScaler, RequestLimits};
    use crate::actuator::{Board, Publication};
    use crate::config::Mode;

    let board = Arc::new(Board::new(Duration::from_secs(3600)));
    let now = Instant::now();
    board.publish(
        (0..workloads)
            .map(|i| {
                let p = Publication {
                    mode: Mode::Auto,
                    desired_replicas: 1 + (i % 50) as u32,
                    demand: Some(100.0),
                    forecast_peak: Some(120.0),
                    forecast_peak_at: Some(0),
                    quantile: Some(0.9),
                    sample_at: Some(0),
                    unavailable: None,
                    refreshed: Some(now),
                };
                (format!("bench/w{i}"), p)
            })
            .collect(),
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let limits = RequestLimits {
        max_message_bytes: 64 * 1024,
        max_metadata_entries: 64,
        max_metadata_value_bytes: 4096,
    };
    let scaler = KedaScaler::new(board, limits, shutdown.clone());
    let token = shutdown.clone();
    let server = tokio::spawn(async move { keda::serve(listener, scaler, None, token).await });
    let mut channels = Vec::new();
    for _ in 0..connections.max(1) {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect()
            .await?;
        channels.push(ch);
    }

    let mut out = Vec::new();
    for &concurrency in levels {
        for call in ["GetMetrics", "baseline"] {
            let per_task = calls.div_ceil(concurrency.max(1));
            let started = Instant::now();
            let tasks = (0..concurrency)
                .map(|t| {
                    let mut caller = Caller::new(
                        channels[t % channels.len()].clone(),
                        format!("w{}", t % workloads.max(1)),
                    );
                    tokio::spawn(async move {
                        let mut lat = Vec::with_capacity(per_task);
                        for _ in 0..per_task {
                            lat.extend(caller.call(call == "baseline").await);
                        }
                        lat
                    })
                })
                .collect();
            let lat = gather(tasks).await?;
            let secs = started.elapsed().as_secs_f64();
            out.push(level(concurrency, call, lat, secs, None));
        }
    }
    if let Some(open) = open_loop {
        for call in ["GetMetrics", "baseline"] {
            out.push(open_loop_level(&channels, workloads, open, call).await?);
        }
    }
    shutdown.cancel();
    let _ = server.await;
    Ok(out)
}
