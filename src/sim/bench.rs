//! `prescale bench-forecast`: prescale's models at fixed origins of every suite trace, the
//! same protocol as `bench/statsforecast_peer.py`, for a side-by-side comparison.

use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::forecast::{Engine, FitSettings, ModelKind, ModelPreset, Window};

use super::{Suite, Trace};

/// One model on one trace.
#[derive(Debug, Clone, Serialize)]
pub struct ForecastBenchRow {
    /// Trace file.
    pub trace: String,
    /// Model (`auto` is the full engine started cold on the training window: detection,
    /// refits, online backtest, selection; `auto_refit_cost` times one scheduled refit of it).
    pub model: String,
    /// Origins scored.
    pub origins: usize,
    /// Steps ahead scored (the lead horizon).
    pub lead_steps: usize,
    /// MASE at the lead horizon.
    pub mase: Option<f64>,
    /// Fit and forecast time summed over the origins, seconds.
    pub fit_predict_seconds_per_series: f64,
    /// Mean fit and forecast time per origin, milliseconds.
    pub fit_predict_ms_mean: Option<f64>,
}

/// Lead steps, training window and origins of the protocol (see the peer script).
pub fn protocol(
    n: usize,
    cadence: u64,
    startup: u64,
    score_from: usize,
    k: usize,
) -> (usize, usize, Vec<usize>) {
    let h = (cadence + startup).div_ceil(cadence) as usize;
    let w = (7 * 86_400 / cadence) as usize;
    let (lo, hi) = (score_from.max(w), n.saturating_sub(h));
    if hi <= lo || k < 2 {
        return (h, w, Vec::new());
    }
    (h, w, (0..k).map(|i| lo + (hi - lo) * i / (k - 1)).collect())
}

/// Runs the protocol over every trace of the suite.
///
/// # Errors
/// An unreadable suite or trace.
pub fn forecast_bench(suite_path: &Path, origins: usize) -> anyhow::Result<Vec<ForecastBenchRow>> {
    let text =
        std::fs::read_to_string(suite_path).with_context(|| format!("{}", suite_path.display()))?;
    let suite: Suite = serde_json::from_str(&text).context("not a suite file")?;
    let dir = suite_path.parent().unwrap_or(Path::new("."));
    let preset = ModelPreset::load("auto")?;
    let mut out = Vec::new();
    for entry in &suite.traces {
        let trace = Trace::read(&dir.join(&entry.trace))?;
        let y = &trace.values;
        let cadence = trace.cadence();
        let (h, w, origins) = protocol(
            y.len(),
            cadence,
            entry.startup_s,
            entry.score_from_row,
            origins,
        );
        let tail = &y[entry.score_from_row.min(y.len())..];
        let scale = tail.windows(2).map(|p| (p[1] - p[0]).abs()).sum::<f64>()
            / (tail.len().max(2) - 1) as f64;
        let m = (86_400 % cadence == 0 && 2 * (86_400 / cadence) as usize <= w)
            .then_some((86_400 / cadence) as usize);
        let periods: Vec<usize> = m.into_iter().collect();
        let fit = FitSettings {
            path_len: 4 * h + 64,
            max_regression_rows: 20_000,
            max_trend_points: 2_000,
        };
        let mut score = |name: &str, f: &mut dyn FnMut(&[f64]) -> Option<f64>| {
            let mut errs = Vec::new();
            let mut secs = Vec::new();
            for &o in &origins {
                let clock = std::time::Instant::now();
                let pred = f(&y[o - w..o]);
                secs.push(clock.elapsed().as_secs_f64());
                if let Some(p) = pred {
                    errs.push((y[o + h - 1] - p).abs());
                }
            }
            out.push(ForecastBenchRow {
                trace: entry.trace.clone(),
                model: name.to_string(),
                origins: errs.len(),
                lead_steps: h,
                mase: (!errs.is_empty() && scale > 0.0)
                    .then(|| errs.iter().sum::<f64>() / errs.len() as f64 / scale),
                fit_predict_seconds_per_series: secs.iter().sum(),
                fit_predict_ms_mean: (!secs.is_empty())
                    .then(|| 1000.0 * secs.iter().sum::<f64>() / secs.len() as f64),
            });
        };
        for kind in [
            ModelKind::SeasonalNaive,
            ModelKind::MstlEts,
            ModelKind::Linear,
            ModelKind::DampedTrend,
        ] {
            if periods.is_empty() && matches!(kind, ModelKind::MstlEts) {
                continue;
            }
            score(kind.as_str(), &mut |train| {
                let window = Window {
                    start: 0,
                    values: train,
                };
                let fitted = kind.build(&periods, &fit).fit(window).ok()?;
                fitted.predict(window, h).ok()?.get(h - 1).copied()
            });
        }
        // What one scheduled refit of `auto` costs: detect seasons, fit every candidate,
        // forecast. (The online backtest between refits costs microseconds per step.)
        score("auto_refit_cost", &mut |train| {
            let window = Window {
                start: 0,
                values: train,
            };
            let found = crate::forecast::detect_periods(train, cadence, preset.max_periods);
            for kind in &preset.candidates {
                if let Ok(fitted) = kind.build(&found, &fit).fit(window) {
                    let _ = fitted.predict(window, h);
                }
            }
            None
        });
        score("auto", &mut |train| {
            let mut engine = Engine::new(preset.clone(), cadence, h);
            let mut last = None;
            for (k, &v) in train.iter().enumerate() {
                engine.observe(k as i64 * cadence as i64, v).ok()?;
                last = engine.forecast(h).ok();
            }
            last.map(|f| f.point[h - 1])
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_spaces_origins_after_warm_up_and_training_window() {
        // 5-minute rows, 180 s startup: lead 2 steps; 7 days = 2016 rows of training.
        let (h, w, o) = protocol(4032, 300, 180, 806, 5);
        assert_eq!((h, w), (2, 2016));
        assert_eq!(o, vec![2016, 2519, 3023, 3526, 4030]);
        assert!(o.iter().all(|&x| x >= w && x + h <= 4032));
        // Too short for a training window: no origins.
        assert!(protocol(1000, 300, 180, 200, 5).2.is_empty());
    }
}
