//! `prescale replay --suite`: every trace of a suite file, per-trace and aggregate tables.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::{ModelAccuracy, PolicyName, ReplayConfig, Scores, Trace, replay};

/// A suite file (format of `shared/datasets/suite.json`).
#[derive(Debug, Clone, Deserialize)]
pub struct Suite {
    /// Traces with their replay parameters; paths are relative to the suite file.
    pub traces: Vec<SuiteEntry>,
}

/// One trace of a suite.
#[derive(Debug, Clone, Deserialize)]
pub struct SuiteEntry {
    /// CSV path relative to the suite file.
    pub trace: String,
    /// Demand per ready replica.
    pub capacity: f64,
    /// Pod startup, seconds.
    pub startup_s: u64,
    /// Rows before this one are warm-up.
    pub score_from_row: usize,
}

/// One trace's line in the suite table.
#[derive(Debug, Clone, Serialize)]
pub struct SuiteRow {
    /// Trace file name.
    pub trace: String,
    /// Rows in the trace.
    pub rows: usize,
    /// HPA scores.
    pub hpa: Scores,
    /// Predictive scores.
    pub predictive: Scores,
    /// Scores of the foresight bound (the least cost that serves everything).
    pub foresight: Scores,
    /// Predictive served more (or equal when both serve everything) with fewer replica-hours.
    pub predictive_wins: bool,
    /// Coverage of the published upper quantile at the lead horizon.
    pub coverage: Option<f64>,
    /// Forecast accuracy per model.
    pub forecast: Vec<ModelAccuracy>,
    /// Most used model.
    pub main_model: String,
    /// Seconds the replay took.
    pub elapsed_seconds: f64,
}

/// Aggregate over the suite.
#[derive(Debug, Clone, Serialize)]
pub struct SuiteAggregate {
    /// Traces run.
    pub traces: usize,
    /// Traces where predictive wins on both unserved fraction and replica-hours.
    pub predictive_wins: usize,
    /// Median unserved fraction, HPA.
    pub median_unserved_hpa: f64,
    /// Median unserved fraction, predictive.
    pub median_unserved_predictive: f64,
    /// Median overloaded-time fraction, HPA.
    pub median_overloaded_hpa: f64,
    /// Median overloaded-time fraction, predictive.
    pub median_overloaded_predictive: f64,
    /// Median cost vs oracle, HPA.
    pub median_cost_hpa: f64,
    /// Median cost vs oracle, predictive.
    pub median_cost_predictive: f64,
    /// Median cost vs oracle of the foresight bound.
    pub median_cost_foresight: f64,
    /// Median coverage of the upper quantile at the lead horizon.
    pub median_coverage: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Runs every trace of the suite at `suite_path` with `base` settings (capacity, startup and
/// warm-up come from the suite), writing per-trace outputs under `out/<trace>/` and
/// `out/suite.md` and `out/suite.json`.
///
/// # Errors
/// An unreadable suite file or trace, or an unwritable output directory.
pub fn run_suite(
    suite_path: &Path,
    out: &Path,
    base: &ReplayConfig,
    threads: usize,
) -> anyhow::Result<(Vec<SuiteRow>, SuiteAggregate)> {
    let text = std::fs::read_to_string(suite_path)
        .with_context(|| format!("{}: cannot read suite", suite_path.display()))?;
    let suite: Suite = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a suite file", suite_path.display()))?;
    let dir = suite_path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;

    let bar = indicatif::ProgressBar::new(suite.traces.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, anyhow::Result<SuiteRow>)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(entry) = suite.traces.get(i) else {
                        break;
                    };
                    bar.set_message(entry.trace.clone());
                    let r = run_one(&dir.join(&entry.trace), entry, out, base);
                    bar.inc(1);
                    if let Ok(mut v) = results.lock() {
                        v.push((i, r));
                    }
                }
            });
        }
    });
    bar.finish_and_clear();
    let mut results = results
        .into_inner()
        .map_err(|_| anyhow::anyhow!("a suite worker panicked"))?;
    results.sort_by_key(|(i, _)| *i);
    let rows: Vec<SuiteRow> = results
        .into_iter()
        .map(|(_, r)| r)
        .collect::<anyhow::Result<_>>()?;
    let agg = SuiteAggregate {
        traces: rows.len(),
        predictive_wins: rows.iter().filter(|r| r.predictive_wins).count(),
        median_unserved_hpa: median(rows.iter().map(|r| r.hpa.unserved_fraction).collect()),
        median_unserved_predictive: median(
            rows.iter()
                .map(|r| r.predictive.unserved_fraction)
                .collect(),
        ),
        median_overloaded_hpa: median(
            rows.iter()
                .map(|r| r.hpa.overloaded_time_fraction)
                .collect(),
        ),
        median_overloaded_predictive: median(
            rows.iter()
                .map(|r| r.predictive.overloaded_time_fraction)
                .collect(),
        ),
        median_cost_hpa: median(rows.iter().filter_map(|r| r.hpa.cost_vs_oracle).collect()),
        median_cost_predictive: median(
            rows.iter()
                .filter_map(|r| r.predictive.cost_vs_oracle)
                .collect(),
        ),
        median_cost_foresight: median(
            rows.iter()
                .filter_map(|r| r.foresight.cost_vs_oracle)
                .collect(),
        ),
        median_coverage: median(rows.iter().filter_map(|r| r.coverage).collect()),
    };
    std::fs::write(out.join("suite.md"), markdown(&rows, &agg))?;
    std::fs::write(
        out.join("suite.json"),
        serde_json::to_string_pretty(&serde_json::json!({"traces": rows, "aggregate": agg}))?
            + "\n",
    )?;
    Ok((rows, agg))
}

fn run_one(
    path: &Path,
    entry: &SuiteEntry,
    out: &Path,
    base: &ReplayConfig,
) -> anyhow::Result<SuiteRow> {
    let trace = Trace::read(path)?;
    let cfg = ReplayConfig {
        capacity: entry.capacity,
        startup: entry.startup_s,
        score_from_row: entry.score_from_row,
        policies: PolicyName::ALL.to_vec(),
        ..base.clone()
    };
    let result = replay(&trace, &cfg)?;
    let stem = path
        .file_stem()
        .map_or_else(|| entry.trace.clone(), |s| s.to_string_lossy().into_owned());
    let dir: PathBuf = out.join(&stem);
    super::write_outputs(&dir, &result, &stem)?;
    let s = &result.summary;
    let pick = |p: &str| {
        s.policies
            .get(p)
            .cloned()
            .context("policy missing from replay")
    };
    let hpa = pick("hpa")?;
    let predictive = pick("predictive")?;
    let foresight = pick("foresight")?;
    let unserved_ok = predictive.unserved_fraction < hpa.unserved_fraction
        || (predictive.unserved_fraction == 0.0 && hpa.unserved_fraction == 0.0);
    let main_model = s
        .forecast
        .iter()
        .filter(|m| m.model != "published")
        .max_by(|a, b| {
            a.selected_share
                .unwrap_or(0.0)
                .total_cmp(&b.selected_share.unwrap_or(0.0))
        })
        .map_or_else(|| "none".to_string(), |m| m.model.clone());
    Ok(SuiteRow {
        trace: entry.trace.clone(),
        rows: trace.len(),
        predictive_wins: unserved_ok && predictive.replica_hours < hpa.replica_hours,
        hpa,
        predictive,
        foresight,
        coverage: s.forecast_status.as_ref().and_then(|st| st.coverage),
        forecast: s.forecast.clone(),
        main_model,
        elapsed_seconds: s.elapsed_seconds,
    })
}

fn markdown(rows: &[SuiteRow], agg: &SuiteAggregate) -> String {
    let pct = |v: f64| format!("{:.2}%", 100.0 * v);
    let opt = |v: Option<f64>| v.map_or_else(|| "-".into(), |x| format!("{x:.3}"));
    let mut s = String::from(
        "| trace | unserved hpa | unserved pred | overloaded hpa | overloaded pred | cost hpa | cost pred | cost foresight | win | coverage | model |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.trace,
            pct(r.hpa.unserved_fraction),
            pct(r.predictive.unserved_fraction),
            pct(r.hpa.overloaded_time_fraction),
            pct(r.predictive.overloaded_time_fraction),
            opt(r.hpa.cost_vs_oracle),
            opt(r.predictive.cost_vs_oracle),
            opt(r.foresight.cost_vs_oracle),
            if r.predictive_wins { "yes" } else { "no" },
            opt(r.coverage),
            r.main_model,
        );
    }
    s += &format!(
        "| **median** | {} | {} | {} | {} | {:.3} | {:.3} | {:.3} | {}/{} | {:.3} | |\n",
        pct(agg.median_unserved_hpa),
        pct(agg.median_unserved_predictive),
        pct(agg.median_overloaded_hpa),
        pct(agg.median_overloaded_predictive),
        agg.median_cost_hpa,
        agg.median_cost_predictive,
        agg.median_cost_foresight,
        agg.predictive_wins,
        agg.traces,
        agg.median_coverage,
    );
    s
}
