//! `prescale replay`: the forecaster and policies run over a recorded trace under the replay
//! contract (decisions use data up to their row; pods start `startup` after the next row).

mod bench;
mod plot;
mod report;
mod suite;
mod trace;

pub use crate::policy::{Pods, unserved};
pub use bench::{ForecastBenchRow, forecast_bench, protocol};
pub use report::{write_decisions, write_summary};
pub use suite::{Suite, SuiteEntry, SuiteRow, run_suite};
pub use trace::{Trace, TraceError};

use serde::Serialize;

use crate::domain::{Decision, Reason, Term};
use crate::forecast::{CandidateStats, Engine, EngineStatus, ModelPreset};
use crate::policy::{
    Headroom, HpaConfig, HpaPolicy, Observation, PolicyConfig, PolicyConfigError, PredictivePolicy,
    ScalingPolicy,
};

/// A policy `prescale replay` can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum PolicyName {
    /// prescale's forecaster and predictive policy.
    Predictive,
    /// The Kubernetes HPA algorithm with its defaults.
    Hpa,
    /// Perfect foresight: exactly ceil(demand / capacity) ready replicas on every row.
    Oracle,
    /// Perfect foresight under the pod startup physics: at each row, the fewest replicas that
    /// serve every row the decision alone provides for. Its replica-hours are the least any
    /// policy can spend while serving all demand with pods that take `startup` to start, so
    /// it is the floor of cost vs oracle for a policy that serves everything. It reads the
    /// future: a bound to measure against, never a contender.
    Foresight,
}

impl PolicyName {
    /// Every policy, in the order replays run and report them.
    pub const ALL: [PolicyName; 4] = [
        PolicyName::Predictive,
        PolicyName::Hpa,
        PolicyName::Oracle,
        PolicyName::Foresight,
    ];

    /// Stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyName::Predictive => "predictive",
            PolicyName::Hpa => "hpa",
            PolicyName::Oracle => "oracle",
            PolicyName::Foresight => "foresight",
        }
    }
}

/// Everything a replay needs besides the trace.
#[derive(Debug, Clone)]
pub struct ReplayConfig {
    /// Demand one ready replica serves.
    pub capacity: f64,
    /// Seconds from a scale-up decision's effect to the new pods being ready.
    pub startup: u64,
    /// Lowest replicas (predictive and hpa).
    pub min_replicas: u32,
    /// Highest replicas (predictive and hpa).
    pub max_replicas: u32,
    /// The HPA baseline's target utilisation.
    pub hpa_target_utilization: f64,
    /// Model preset of the predictive policy.
    pub preset: ModelPreset,
    /// Headroom rule of the predictive policy.
    pub headroom: Headroom,
    /// Policies to run.
    pub policies: Vec<PolicyName>,
    /// Rows before this one are warm-up and not scored.
    pub score_from_row: usize,
}

/// One row of a policy's replay.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The row's timestamp.
    pub timestamp: i64,
    /// Demand on the row.
    pub demand: f64,
    /// The decision made at this row (effective from the next row).
    pub desired_replicas: u32,
    /// Replicas ready (serving) on this row.
    pub ready_replicas: u32,
    /// All replicas on this row, starting ones included.
    pub total_replicas: u32,
    /// Demand not served on this row.
    pub unserved: f64,
    /// Highest point forecast over the lead window (predictive only).
    pub forecast_point: Option<f64>,
    /// Highest upper-quantile forecast over the lead window (predictive only).
    pub forecast_upper: Option<f64>,
    /// Model behind the forecast.
    pub model: &'static str,
    /// Policy term that decided.
    pub term: Term,
    /// Quantile level provisioned for (0 when no forecast was used).
    pub quantile: f64,
    /// Multiplier on that quantile's band.
    pub headroom_scale: f64,
}

/// Scores of one policy over the scored rows.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Scores {
    /// Unserved demand / total demand.
    pub unserved_fraction: f64,
    /// Fraction of scored rows with unserved demand.
    pub overloaded_time_fraction: f64,
    /// Replica-hours, starting pods included (each row counts one cadence).
    pub replica_hours: f64,
    /// Replica-hours / the oracle's replica-hours.
    pub cost_vs_oracle: Option<f64>,
    /// Rows scored.
    pub scored_rows: usize,
    /// Times the desired replica count changed from one scored row to the next (the
    /// warm-up rows, like every other score, are left out).
    pub scale_changes: usize,
}

/// Forecast accuracy of one model at the lead horizon.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelAccuracy {
    /// Model name (`published` is the forecast the policy actually used).
    pub model: String,
    /// Forecasts scored.
    pub count: usize,
    /// Mean absolute error / mean absolute one-step change of the series (MASE).
    pub mase: Option<f64>,
    /// Mean pinball loss of the upper quantile / mean demand.
    pub scaled_pinball: Option<f64>,
    /// Fraction of actuals at or below the upper quantile.
    pub coverage: Option<f64>,
    /// Share of published forecasts that used this model.
    pub selected_share: Option<f64>,
}

/// The result of replaying one trace.
#[derive(Debug, Clone)]
pub struct ReplayResult {
    /// Rows per policy, in the order of `ReplayConfig::policies`.
    pub rows: Vec<(PolicyName, Vec<Row>)>,
    /// Summary for `summary.json`.
    pub summary: Summary,
}

/// `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Trace file.
    pub trace: String,
    /// Rows in the trace.
    pub rows: usize,
    /// Median spacing of rows, seconds.
    pub cadence_seconds: u64,
    /// Demand per ready replica.
    pub capacity: f64,
    /// Pod startup, seconds.
    pub startup_seconds: u64,
    /// First scored row.
    pub score_from_row: usize,
    /// Lead window of the predictive policy, seconds.
    pub lead_seconds: u64,
    /// Model preset.
    pub model_preset: String,
    /// Scores per policy.
    pub policies: std::collections::BTreeMap<String, Scores>,
    /// Forecast accuracy at the lead horizon (predictive only).
    pub forecast: Vec<ModelAccuracy>,
    /// Final forecasting status (predictive only).
    pub forecast_status: Option<EngineStatus>,
    /// Wall time of the replay, seconds.
    pub elapsed_seconds: f64,
}

/// Runs the configured policies over `trace`.
///
/// # Errors
/// When the policy settings are invalid.
pub fn replay(trace: &Trace, cfg: &ReplayConfig) -> Result<ReplayResult, PolicyConfigError> {
    let clock = std::time::Instant::now();
    let cadence = trace.cadence();
    let policy_cfg = PolicyConfig {
        headroom: cfg.headroom,
        hpa_target_utilization: cfg.hpa_target_utilization,
        ..PolicyConfig::new(
            cfg.capacity,
            cfg.min_replicas,
            cfg.max_replicas,
            cfg.startup,
            cadence,
        )
    };
    policy_cfg.validate()?;
    let lead_steps = policy_cfg.lead_seconds().div_ceil(cadence) as usize;
    let initial = needed_replicas(trace.values[0], cfg);
    let mut rows = Vec::new();
    let mut forecast = Vec::new();
    let mut status = None;
    for &name in &cfg.policies {
        let r = match name {
            PolicyName::Oracle => oracle_rows(trace, cfg.capacity),
            PolicyName::Foresight => {
                let wants = foresight_decisions(trace, cfg);
                run_policy(trace, cfg, initial, |i, _| {
                    scripted(wants[i], "foresight", cfg.startup + cadence)
                })
            }
            PolicyName::Hpa => {
                let mut hpa = HpaPolicy::new(
                    HpaConfig {
                        target_utilization: cfg.hpa_target_utilization,
                        ..HpaConfig::new(cfg.capacity, cfg.min_replicas, cfg.max_replicas)
                    },
                    cadence,
                );
                run_policy(trace, cfg, initial, |_, obs| hpa.recommend(obs))
            }
            PolicyName::Predictive => {
                let mut engine = Engine::new(cfg.preset.clone(), cadence, lead_steps);
                let mut policy = PredictivePolicy::new(policy_cfg.clone())?;
                let r = run_policy(trace, cfg, initial, |i, obs| {
                    if i == cfg.score_from_row {
                        engine.set_evaluating(true);
                    }
                    // A sample the engine refuses counts as missing data: replicas hold.
                    let ok = obs
                        .demand
                        .is_some_and(|d| engine.observe(obs.now, d).is_ok());
                    let f = if ok {
                        engine.forecast(lead_steps).ok()
                    } else {
                        None
                    };
                    policy.recommend(&Observation {
                        forecast: f.as_ref(),
                        demand: if ok { obs.demand } else { None },
                        ..*obs
                    })
                });
                forecast = accuracy(trace, cfg.score_from_row, &engine);
                status = Some(engine.status());
                r
            }
        };
        rows.push((name, r));
    }
    let oracle_hours: f64 = trace
        .values
        .iter()
        .skip(cfg.score_from_row)
        .map(|d| f64::from(crate::policy::replicas_for(*d, cfg.capacity)) * cadence as f64 / 3600.0)
        .sum();
    let policies = rows
        .iter()
        .map(|(name, r)| {
            (
                name.as_str().to_string(),
                score(r, cfg.score_from_row, cadence, oracle_hours),
            )
        })
        .collect();
    Ok(ReplayResult {
        rows,
        summary: Summary {
            trace: trace.path.display().to_string(),
            rows: trace.len(),
            cadence_seconds: cadence,
            capacity: cfg.capacity,
            startup_seconds: cfg.startup,
            score_from_row: cfg.score_from_row,
            lead_seconds: policy_cfg.lead_seconds(),
            model_preset: cfg.preset.name.clone(),
            policies,
            forecast,
            forecast_status: status,
            elapsed_seconds: clock.elapsed().as_secs_f64(),
        },
    })
}

/// `ceil(demand / capacity)` within min/max: the replicas a row's demand needs.
fn needed_replicas(demand: f64, cfg: &ReplayConfig) -> u32 {
    crate::policy::replicas_for(demand, cfg.capacity).clamp(cfg.min_replicas, cfg.max_replicas)
}

/// A decision read from a precomputed sequence rather than from a forecast.
fn scripted(desired_replicas: u32, model: &'static str, lead_seconds: u64) -> Decision {
    Decision {
        desired_replicas,
        reason: Reason {
            term: Term::Forecast,
            forecast_peak: 0.0,
            forecast_peak_at: None,
            forecast_point_peak: 0.0,
            model,
            quantile: 0.0,
            headroom_scale: 1.0,
            lead_seconds,
            raw_replicas: desired_replicas,
        },
    }
}

/// Steps the physics row by row; `decide(i, demand, obs)` sees only rows up to `i`.
fn run_policy(
    trace: &Trace,
    cfg: &ReplayConfig,
    initial: u32,
    mut decide: impl FnMut(usize, &Observation<'_>) -> Decision,
) -> Vec<Row> {
    let mut pods = Pods::ready(initial);
    let mut out = Vec::with_capacity(trace.len());
    for (i, (&t, &d)) in trace.timestamps.iter().zip(&trace.values).enumerate() {
        let ready = pods.ready_at(t);
        let total = pods.total();
        let obs = Observation {
            now: t,
            demand: Some(d),
            current_replicas: total,
            ready_replicas: ready,
            forecast: None,
        };
        let decision = decide(i, &obs);
        let has_forecast = decision.reason.forecast_peak_at.is_some();
        let band = has_forecast.then_some((
            decision.reason.forecast_point_peak,
            decision.reason.forecast_peak,
        ));
        out.push(Row {
            timestamp: t,
            demand: d,
            desired_replicas: decision.desired_replicas,
            ready_replicas: ready,
            total_replicas: total,
            unserved: unserved(d, ready, cfg.capacity),
            forecast_point: band.map(|b| b.0),
            forecast_upper: band.map(|b| b.1),
            model: decision.reason.model,
            term: decision.reason.term,
            quantile: decision.reason.quantile,
            headroom_scale: decision.reason.headroom_scale,
        });
        if let Some(&next) = trace.timestamps.get(i + 1) {
            pods.apply(decision.desired_replicas, next, cfg.startup);
        }
    }
    out
}

/// The foresight bound's decisions. A pod ready on row `j` was asked for on a row `m` with
/// `t[m+1] + startup <= t[j]`, and it exists on every row from `m+1` to `j`. When
/// `t[j] < t[i+2] + startup`, a pod the decision of row `i+1` asks for is not ready by row
/// `j`, so every pod serving `j` already exists on row `i+1`: the replicas kept on row `i+1`
/// must cover the need of every such row `j`. The decision of row `i` is that maximum (the
/// last row, with nothing after it, keeps its own need).
fn foresight_decisions(trace: &Trace, cfg: &ReplayConfig) -> Vec<u32> {
    let (t, d) = (&trace.timestamps, &trace.values);
    let need = |j: usize| needed_replicas(d[j], cfg);
    let startup = i64::try_from(cfg.startup).unwrap_or(i64::MAX);
    (0..t.len())
        .map(|i| {
            // Without a row i+2 the window runs to the end of the trace.
            let until = t
                .get(i + 2)
                .map_or(i64::MAX, |&x| x.saturating_add(startup));
            (i + 1..t.len())
                .take_while(|&j| t[j] < until)
                .map(need)
                .max()
                .unwrap_or_else(|| need(i))
        })
        .collect()
}

fn oracle_rows(trace: &Trace, capacity: f64) -> Vec<Row> {
    trace
        .timestamps
        .iter()
        .zip(&trace.values)
        .map(|(&t, &d)| {
            let r = crate::policy::replicas_for(d, capacity);
            Row {
                timestamp: t,
                demand: d,
                desired_replicas: r,
                ready_replicas: r,
                total_replicas: r,
                unserved: 0.0,
                forecast_point: None,
                forecast_upper: None,
                model: "oracle",
                term: Term::Forecast,
                quantile: 0.0,
                headroom_scale: 1.0,
            }
        })
        .collect()
}

fn score(rows: &[Row], from: usize, cadence: u64, oracle_hours: f64) -> Scores {
    let scored = rows.get(from..).unwrap_or(&[]);
    let mut demand = 0.0;
    let mut unserved = 0.0;
    let mut overloaded = 0;
    let mut hours = 0.0;
    for r in scored {
        demand += r.demand;
        unserved += r.unserved;
        overloaded += usize::from(r.unserved > 0.0);
        hours += f64::from(r.total_replicas) * cadence as f64 / 3600.0;
    }
    let changes = scored
        .windows(2)
        .filter(|w| w[0].desired_replicas != w[1].desired_replicas)
        .count();
    Scores {
        unserved_fraction: if demand > 0.0 { unserved / demand } else { 0.0 },
        overloaded_time_fraction: if scored.is_empty() {
            0.0
        } else {
            overloaded as f64 / scored.len() as f64
        },
        replica_hours: hours,
        cost_vs_oracle: (oracle_hours > 0.0).then(|| hours / oracle_hours),
        scored_rows: scored.len(),
        scale_changes: changes,
    }
}

fn accuracy(trace: &Trace, from: usize, engine: &Engine) -> Vec<ModelAccuracy> {
    let v = trace.values.get(from..).unwrap_or(&[]);
    let naive_mae = if v.len() > 1 {
        v.windows(2).map(|w| (w[1] - w[0]).abs()).sum::<f64>() / (v.len() - 1) as f64
    } else {
        0.0
    };
    let mean = if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    };
    let stats: Vec<CandidateStats> = engine.candidate_stats();
    let published: usize = stats
        .iter()
        .filter(|s| s.model != "published")
        .map(|s| s.selected)
        .sum();
    stats
        .iter()
        .map(|s| {
            let n = s.count as f64;
            ModelAccuracy {
                model: s.model.to_string(),
                count: s.count,
                mase: (s.count > 0 && naive_mae > 0.0).then(|| s.abs_error_sum / n / naive_mae),
                scaled_pinball: (s.count > 0 && mean > 0.0).then(|| s.pinball_sum / n / mean),
                coverage: (s.count > 0).then(|| s.covered as f64 / n),
                selected_share: (published > 0 && s.model != "published")
                    .then(|| s.selected as f64 / published as f64),
            }
        })
        .collect()
}

/// Writes `decisions.csv` (predictive when it ran, else the first policy),
/// `decisions_<policy>.csv` for the others, `summary.json` and `replay.svg` into `dir`.
///
/// # Errors
/// I/O errors, or a plot that cannot be drawn.
pub fn write_outputs(
    dir: &std::path::Path,
    result: &ReplayResult,
    title: &str,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let main = result
        .rows
        .iter()
        .position(|(p, _)| *p == PolicyName::Predictive)
        .unwrap_or(0);
    for (i, (name, rows)) in result.rows.iter().enumerate() {
        let file = if i == main {
            "decisions.csv".to_string()
        } else {
            format!("decisions_{}.csv", name.as_str())
        };
        write_decisions(&dir.join(file), rows)?;
    }
    write_summary(&dir.join("summary.json"), &result.summary)?;
    plot::write_plot(
        &dir.join("replay.svg"),
        title,
        result.summary.capacity,
        &result.rows,
    )
    .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(values: &[f64]) -> Trace {
        Trace {
            path: "test.csv".into(),
            timestamps: (0..values.len() as i64).map(|i| i * 300).collect(),
            values: values.to_vec(),
        }
    }

    fn config(startup: u64) -> ReplayConfig {
        ReplayConfig {
            capacity: 1.0,
            startup,
            min_replicas: 1,
            max_replicas: 100,
            hpa_target_utilization: 0.7,
            preset: ModelPreset::load("auto").expect("the auto preset"),
            headroom: Headroom::HpaParity,
            policies: vec![PolicyName::Foresight],
            score_from_row: 0,
        }
    }

    /// (unserved demand, replica-rows) of a fixed sequence of decisions.
    fn cost(t: &Trace, cfg: &ReplayConfig, decisions: &[u32]) -> (f64, u32) {
        let initial = needed_replicas(t.values[0], cfg);
        let rows = run_policy(t, cfg, initial, |i, _| scripted(decisions[i], "test", 0));
        (
            rows.iter().map(|r| r.unserved).sum(),
            rows.iter().map(|r| r.total_replicas).sum(),
        )
    }

    #[test]
    fn scores_match_a_replay_worked_by_hand() {
        // 300 s rows, capacity 1, 180 s startup, two pods ready at the start. Row 1 asks for
        // six: applied at row 2 (t = 600), ready at 780, so row 2 serves 2 of 6. Row 3 asks
        // for two: the four extra pods go at row 4 at once.
        let t = trace(&[2.0, 2.0, 6.0, 6.0, 1.0]);
        let cfg = config(180);
        let decisions = [2, 6, 6, 2, 2];
        let rows = run_policy(&t, &cfg, 2, |i, _| scripted(decisions[i], "test", 0));
        let ready: Vec<u32> = rows.iter().map(|r| r.ready_replicas).collect();
        let total: Vec<u32> = rows.iter().map(|r| r.total_replicas).collect();
        assert_eq!(ready, [2, 2, 2, 6, 2]);
        assert_eq!(total, [2, 2, 6, 6, 2]);
        let oracle = score(&oracle_rows(&t, cfg.capacity), 0, 300, 0.0);
        assert!((oracle.replica_hours - 17.0 * 300.0 / 3600.0).abs() < 1e-9);
        let s = score(&rows, 0, 300, oracle.replica_hours);
        assert!((s.unserved_fraction - 4.0 / 17.0).abs() < 1e-12);
        assert!((s.overloaded_time_fraction - 0.2).abs() < 1e-12);
        assert!((s.replica_hours - 18.0 * 300.0 / 3600.0).abs() < 1e-9);
        assert!((s.cost_vs_oracle.unwrap() - 18.0 / 17.0).abs() < 1e-12);
        assert_eq!((s.scored_rows, s.scale_changes), (5, 2));
        // Scoring from row 1 leaves row 0 out of every sum.
        let s = score(&rows, 1, 300, oracle.replica_hours);
        assert!((s.unserved_fraction - 4.0 / 15.0).abs() < 1e-12);
        assert!((s.overloaded_time_fraction - 0.25).abs() < 1e-12);
        assert!((s.replica_hours - 16.0 * 300.0 / 3600.0).abs() < 1e-9);
        assert_eq!((s.scored_rows, s.scale_changes), (4, 1));
    }

    #[test]
    fn a_sample_the_forecaster_refuses_holds_the_replicas() {
        // `Trace`'s fields are public: one built in code can break the parser's rules. A row
        // repeating the previous timestamp is refused by the engine and decides as missing
        // data does, whatever its demand says.
        let mut t = trace(&[20.0; 40]);
        t.timestamps.push(t.timestamps[39]);
        t.values.push(0.0);
        let cfg = ReplayConfig {
            policies: vec![PolicyName::Predictive],
            ..config(180)
        };
        let r = replay(&t, &cfg).unwrap();
        let rows = &r.rows[0].1;
        let (before, refused) = (&rows[39], &rows[40]);
        assert_ne!(before.term, Term::MissingData);
        assert_eq!(refused.term, Term::MissingData);
        assert!(refused.total_replicas >= 20, "{refused:?}");
        assert_eq!(
            refused.desired_replicas, refused.total_replicas,
            "{refused:?}"
        );
        assert_eq!(refused.forecast_upper, None);
    }

    #[test]
    fn foresight_asks_before_a_peak_for_the_rows_its_pods_cannot_reach_later() {
        // 300 s rows, 180 s startup: pods asked on row i are ready on row i+2, so row i keeps
        // what rows i+1 and i+2 need; the last row keeps its own need.
        let t = trace(&[1.0, 1.0, 5.0, 1.0, 1.0, 1.0]);
        assert_eq!(foresight_decisions(&t, &config(180)), [5, 5, 1, 1, 1, 1]);
        // A 400 s startup: ready on row i+3, so row i covers rows i+1 to i+3.
        assert_eq!(foresight_decisions(&t, &config(400)), [5, 5, 1, 1, 1, 1]);
        let t = trace(&[1.0, 1.0, 1.0, 5.0, 1.0, 1.0]);
        assert_eq!(foresight_decisions(&t, &config(400)), [5, 5, 5, 1, 1, 1]);
        assert_eq!(foresight_decisions(&t, &config(180)), [1, 5, 5, 1, 1, 1]);
    }

    #[test]
    fn no_sequence_of_decisions_serves_everything_for_less_than_foresight() {
        // Every sequence of decisions in 1..=4 over six rows, on a few traces: the cheapest
        // that leaves nothing unserved costs exactly what foresight costs, and foresight
        // leaves nothing unserved. Rows 1 and 2 need no more than row 0: no decision can
        // make pods ready there (at 400 s startup row 0's pods are ready on row 3), so a
        // trace rising sooner has no sequence that serves it all.
        let traces = [
            [3.0, 2.0, 1.0, 4.0, 2.0, 1.0],
            [2.0, 2.0, 1.0, 1.0, 4.0, 1.0],
            [2.0, 1.0, 1.0, 4.0, 4.0, 1.0],
            [4.0, 1.0, 2.0, 1.0, 3.0, 3.0],
            [1.0, 1.0, 1.0, 1.0, 1.0, 4.0],
        ];
        for startup in [180, 400] {
            let cfg = config(startup);
            for values in &traces {
                let t = trace(values);
                let f = cost(&t, &cfg, &foresight_decisions(&t, &cfg));
                assert_eq!(
                    f.0, 0.0,
                    "{values:?} startup {startup}: foresight left demand"
                );
                let mut best = u32::MAX;
                for code in 0..4u32.pow(6) {
                    let d: Vec<u32> = (0..6).map(|k| 1 + code / 4u32.pow(k) % 4).collect();
                    let (unserved, rows) = cost(&t, &cfg, &d);
                    if unserved == 0.0 {
                        best = best.min(rows);
                    }
                }
                assert_eq!(f.1, best, "{values:?} startup {startup}");
            }
        }
    }
}
