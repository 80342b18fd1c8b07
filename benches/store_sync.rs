//! The review store's per-loop reads (`all_last_applied` and `lapsed`, run by every loop to
//! mirror the store) on a long history of ended recommendations: the previous queries (a
//! grouped scan of the history) against the current ones (one row per workload from
//! `heads`), before and after `prune` has applied a 90-day retention, and the cost of the
//! rebuild of `heads` at start, and the writes of a change on that history against the same
//! writes on an empty store. On a SQLite
//! file, or with `postgres` on a PostgreSQL server the bench starts (initdb in a temporary
//! directory, as the tests do).
//!
//! `cargo bench --bench store_sync -- [WORKLOADS] [ROWS_PER_WORKLOAD] [postgres]` (default
//! 1000 200).

#![allow(clippy::unwrap_used)] // the shared test helpers fail loudly by design

// The tests' helpers: the bench uses their PostgreSQL server.
#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::time::Instant;

use prescale::store::{RecState, Store};
use sqlx::Connection;

const DAY: i64 = 86_400;

/// Median seconds of one change as `auto` mode writes it (create, approve, apply: three
/// transactions, each also updating the workload's row in `heads`), over `cycles` changes
/// spread across `workloads` workloads, made after the history's newest.
async fn writes(store: &Store, workloads: usize, cycles: usize, from: i64) -> anyhow::Result<f64> {
    let mut times = Vec::with_capacity(cycles);
    for i in 0..cycles {
        let now = from + 60 * i as i64;
        let rec = common::recommendation(
            "bench",
            &format!("w{}", i % workloads),
            3,
            4 + (i % 7) as u32,
            now,
        );
        let t = Instant::now();
        assert!(store.create(&rec, "prescale").await?);
        store
            .decide(&rec.id, RecState::Approved, "prescale:auto", None, now)
            .await?;
        assert!(store.finish(&rec.id, RecState::Applied, "ok", now).await?);
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Median seconds of one loop's two reads, over `runs` runs.
async fn reads(store: &Store, runs: usize) -> anyhow::Result<f64> {
    let mut secs = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let applied = store.all_last_applied().await?;
        let lapsed = store.lapsed().await?;
        secs.push(t.elapsed().as_secs_f64());
        std::hint::black_box((applied, lapsed));
    }
    secs.sort_by(f64::total_cmp);
    Ok(secs[runs / 2])
}

/// Median seconds of the two reads as the previous version wrote them (one scan of the
/// recommendations, grouped by workload, per read), and how many rows each answered.
async fn grouped_reads(
    conn: &mut sqlx::AnyConnection,
    runs: usize,
) -> anyhow::Result<(f64, (usize, usize))> {
    let mut secs = Vec::with_capacity(runs);
    let mut answered = (0, 0);
    for _ in 0..runs {
        let t = Instant::now();
        let a = sqlx::query(
            "SELECT r.namespace, r.workload, r.to_replicas FROM recommendations r \
             JOIN (SELECT namespace, workload, MAX(updated_at) AS newest FROM recommendations \
                   WHERE state = 'applied' GROUP BY namespace, workload) l \
             ON r.namespace = l.namespace AND r.workload = l.workload AND r.updated_at = l.newest \
             WHERE r.state = 'applied' ORDER BY r.id",
        )
        .fetch_all(&mut *conn)
        .await?;
        let l = sqlx::query(
            "SELECT r.namespace, r.workload FROM recommendations r \
             JOIN (SELECT namespace, workload, MAX(created_at) AS newest FROM recommendations \
                   GROUP BY namespace, workload) l \
             ON r.namespace = l.namespace AND r.workload = l.workload AND r.created_at = l.newest \
             WHERE r.state IN ('expired', 'failed')",
        )
        .fetch_all(&mut *conn)
        .await?;
        secs.push(t.elapsed().as_secs_f64());
        answered = std::hint::black_box((a.len(), l.len()));
    }
    secs.sort_by(f64::total_cmp);
    Ok((secs[runs / 2], answered))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let raw_args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<usize> = raw_args.iter().filter_map(|a| a.parse().ok()).collect();
    let workloads = args.first().copied().unwrap_or(1000);
    let per = args.get(1).copied().unwrap_or(200);
    let mut out = std::io::stdout().lock();
    let dir = tempfile::tempdir()?;
    // The server lives until the end of the bench (dropped last: stopped and removed).
    let pg = raw_args
        .iter()
        .any(|a| a == "postgres")
        .then(common::Postgres::start);
    let url = pg
        .as_ref()
        .map_or_else(|| Store::sqlite_url(dir.path()), |p| p.url.clone());
    // Migrated before the fill; opened again after it, as a restart would (that open
    // rebuilds `heads` from the history).
    drop(Store::open(&url).await?);
    let now = 1_800_000_000_i64;
    // Each workload: `per` changes spread over 300 days, alternately applied and expired
    // (superseded and failed ones cost the same to skip), the newest last.
    let mut raw = sqlx::AnyConnection::connect(&url).await?;
    let t = Instant::now();
    let mut tx = raw.begin().await?;
    for w in 0..workloads {
        for k in 0..per {
            let at = now - 300 * DAY + (k as i64 * 300 * DAY) / per as i64;
            let state = if k % 2 == 0 { "applied" } else { "expired" };
            sqlx::query(
                "INSERT INTO recommendations (id, namespace, workload, from_replicas, to_replicas, \
                 created_at, valid_until, state, reason, updated_at) \
                 VALUES ($1, 'bench', $2, 3, $3, $4, $5, $6, '{}', $4)",
            )
            .bind(format!("{w:06}-{k:06}"))
            .bind(format!("w{w}"))
            .bind(1 + (k % 20) as i64)
            .bind(at)
            .bind(at + 600)
            .bind(state)
            .execute(&mut *tx)
            .await?;
            // Its audit entry, as `create` writes one.
            sqlx::query(
                "INSERT INTO audit (id, seq, at, actor, action, target, detail) \
                 VALUES ($1, $2, $3, 'prescale', 'create', $1, '{}')",
            )
            .bind(format!("{w:06}-{k:06}"))
            .bind((w * per + k) as i64)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    let rows = workloads * per;
    writeln!(
        out,
        "store_sync ({}): {workloads} workloads x {per} ended recommendations = {rows} rows (filled in {:.1} s)",
        if pg.is_some() { "PostgreSQL" } else { "SQLite" },
        t.elapsed().as_secs_f64()
    )?;
    let t = Instant::now();
    let store = Store::open(&url).await?;
    let open_secs = t.elapsed().as_secs_f64();
    let runs = 5;
    let current = reads(&store, runs).await?;
    let (grouped, answered) = grouped_reads(&mut raw, runs).await?;
    // Both answer as many workloads (the tests compare the answers themselves).
    let applied = store.all_last_applied().await?;
    assert_eq!(applied.len(), workloads);
    assert_eq!(answered, (applied.len(), store.lapsed().await?.len()));
    // Writes on this history against the same writes on an empty store of the same kind,
    // in the same run: what a long history adds to each change.
    let cycles = 200;
    let written = writes(&store, workloads, cycles, now + 60).await?;
    let empty_url = match &pg {
        Some(p) => {
            sqlx::query("CREATE DATABASE empty")
                .execute(&mut raw)
                .await?;
            match p.url.rsplit_once('/') {
                Some((server, _)) => format!("{server}/empty"),
                None => anyhow::bail!("unexpected PostgreSQL URL {}", p.url),
            }
        }
        None => {
            let empty_dir = dir.path().join("empty");
            std::fs::create_dir(&empty_dir)?;
            Store::sqlite_url(&empty_dir)
        }
    };
    let empty = Store::open(&empty_url).await?;
    let written_empty = writes(&empty, workloads, cycles, now + 60).await?;
    drop(empty);
    // What the prune must keep, with the changes just written.
    let applied = store.all_last_applied().await?;
    // The prune as the loop runs it: batches of 10,000 until one comes back short (timed once).
    let t = Instant::now();
    let (mut pruned, mut entries, mut batches) = (0, 0, 0);
    loop {
        let (r, e) = store.prune(now - 90 * DAY, now, 10_000).await?;
        (pruned, entries, batches) = (pruned + r, entries + e, batches + 1);
        if r < 10_000 && e < 10_000 {
            break;
        }
    }
    let prune_secs = t.elapsed().as_secs_f64();
    let after = reads(&store, runs).await?;
    let (grouped_after, _) = grouped_reads(&mut raw, runs).await?;
    assert_eq!(
        store.all_last_applied().await?,
        applied,
        "the prune keeps what is read"
    );
    writeln!(out, "per-loop reads, median of {runs}:")?;
    writeln!(
        out,
        "  previous version (a grouped scan per read):  {grouped:.4} s ({:.0}x the current one)",
        grouped / current
    )?;
    writeln!(
        out,
        "  current (one row per workload, `heads`):    {current:.4} s"
    )?;
    writeln!(
        out,
        "  after the 90-day prune: previous {grouped_after:.4} s, current {after:.4} s ({:.0}x)",
        grouped_after / after
    )?;
    writeln!(
        out,
        "one change (create, approve, apply), median of {cycles}: {:.2} ms on this history, {:.2} ms on an empty store ({:.2}x)",
        written * 1e3,
        written_empty * 1e3,
        written / written_empty
    )?;
    writeln!(
        out,
        "open (migrations and the rebuild of `heads` from the history, once per start): {open_secs:.3} s"
    )?;
    writeln!(
        out,
        "prune: {pruned} recommendations and {entries} audit entries deleted in {batches} batches, {prune_secs:.1} s (once); {} recommendations left",
        rows as u64 - pruned
    )?;
    Ok(())
}
