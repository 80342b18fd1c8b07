//! Live heap per workload: the service loop of `bench-loop`, and one forecasting engine on
//! its own, counted by an instrumented system allocator (resident memory, what
//! `bench-loop` reports, adds the allocator's free space and fragmentation to these).
//!
//! `cargo bench --bench heap -- [WORKLOADS]` (default 200).

use std::alloc::System;
use std::io::Write;
use std::time::Duration;

use prescale::forecast::{Engine, ModelPreset};
use prescale::loadtest::synthetic_demand;
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn live() -> u64 {
    let s = GLOBAL.stats();
    // Reallocations are already in these two (`bytes_reallocated` repeats their net).
    let net = s.bytes_allocated as i128 - s.bytes_deallocated as i128;
    u64::try_from(net.max(0)).unwrap_or(u64::MAX)
}

/// Live allocations (blocks allocated and not freed).
fn blocks() -> u64 {
    let s = GLOBAL.stats();
    u64::try_from(s.allocations as i128 - s.deallocations as i128).unwrap_or(0)
}

/// Engines as the service warms them: 7 days at one minute, the last two forecast at every
/// step (the online backtest), lead 3 steps. Live heap bytes and blocks per engine.
fn engines(n: usize) -> anyhow::Result<(u64, u64)> {
    let mut preset = ModelPreset::load("auto")?;
    // The service keeps no more history than it backfills.
    preset.history = Duration::from_secs(7 * 86_400);
    let step = 60_i64;
    let steps = 7 * 1440;
    let t0 = 1_790_000_000 / step * step;
    let before = live();
    let blocks_before = blocks();
    let mut held = Vec::with_capacity(n);
    for w in 0..n {
        let mut e = Engine::new(preset.clone(), step as u64, 3);
        e.set_scoring_candidates(false);
        for i in 0..steps {
            let t = t0 + i * step;
            e.observe(t, synthetic_demand(w as u64, t))?;
            if i >= steps - 2 * 1440 {
                // Warming up is an error until calibrated: that is expected here.
                let _ = e.forecast(60);
            }
        }
        held.push(e);
    }
    let per = live().saturating_sub(before) / n.max(1) as u64;
    let per_blocks = blocks().saturating_sub(blocks_before) / n.max(1) as u64;
    drop(held);
    Ok((per, per_blocks))
}

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map_or(Ok(200), |a| a.parse())?;
    // First, before the service's threads and caches exist.
    let (engine, engine_blocks) = engines(n.min(50))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let r = runtime.block_on(prescale::loadtest::run(
        n,
        Duration::from_secs(7 * 86_400),
        60,
        2,
        64,
        Duration::from_secs(86_400),
        Some(live),
    ))?;
    writeln!(
        std::io::stdout().lock(),
        "{}",
        serde_json::json!({
            "workloads": n,
            "heap_per_workload_bytes": r.heap_per_workload_bytes,
            "rss_per_workload_bytes": r.rss_per_workload_bytes,
            "engine_heap_bytes": engine,
            "engine_heap_blocks": engine_blocks,
            "warmup_seconds": r.warmup_seconds,
        })
    )?;
    Ok(())
}
