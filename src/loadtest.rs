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
    /// Wall time of each steady-state loop.
    pub loop_seconds: Vec<f64>,
    /// Resident memory before the service was built, bytes.
    pub rss_before_bytes: u64,
    /// Resident memory after the last loop, bytes.
    pub rss_after_bytes: u64,
    /// (after - before) / workloads.
    pub rss_per_workload_bytes: u64,
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
/// warm-up loop then `loops` steady loops.
///
/// # Errors
/// A configuration the service refuses.
pub async fn run(
    n: usize,
    history: Duration,
    step: u64,
    loops: usize,
    concurrency: usize,
) -> anyhow::Result<LoopBench> {
    let mut yaml = format!(
        "prometheus:\n  url: http://127.0.0.1:9\n  timeout: 1s\nloop:\n  interval: {step}s\n  history: {}s\n  concurrency: {concurrency}\ndata_dir: {}\nworkloads:\n",
        history.as_secs(),
        std::env::temp_dir().join("prescale-bench-loop").display()
    );
    for i in 0..n {
        yaml += &format!(
            "- {{namespace: bench, name: w{i}, demand_query: 'synthetic:{i}', capacity_per_replica: 20, max_replicas: 200, startup: 2m}}\n"
        );
    }
    let cfg = Config::parse(std::path::Path::new("bench"), &yaml, &|_| None)?;
    let rss_before = rss_bytes();
    let service = Service::new(
        cfg,
        Arc::new(SyntheticSource),
        Timeline::Wall,
        step,
        Duration::from_secs(step),
    )?;
    let mut now = 1_790_000_000_i64 / step as i64 * step as i64;
    let clock = Instant::now();
    service.run_once(now).await;
    let warmup = clock.elapsed().as_secs_f64();
    let mut loop_seconds = Vec::new();
    for _ in 0..loops {
        now += step as i64;
        let clock = Instant::now();
        service.run_once(now).await;
        loop_seconds.push(clock.elapsed().as_secs_f64());
    }
    let rss_after = rss_bytes();
    Ok(LoopBench {
        workloads: n,
        history_seconds: history.as_secs(),
        step_seconds: step,
        warmup_seconds: warmup,
        loop_seconds,
        rss_before_bytes: rss_before,
        rss_after_bytes: rss_after,
        rss_per_workload_bytes: rss_after.saturating_sub(rss_before) / n.max(1) as u64,
    })
}
