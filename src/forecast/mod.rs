//! Forecasting: demand history in, calibrated quantile forecasts out.
//!
//! Pure and synchronous (no clocks, no I/O, no async): `prescale replay` and the live loop run
//! this same code. A workload's [`Engine`] keeps its history on a regular grid, refits its
//! candidate models on a schedule, scores every candidate online at the lead horizon
//! (a rolling-origin backtest with an origin at every step), picks the best by an asymmetric
//! loss, and calibrates the upper quantile on the chosen model's own recent residuals.
//!
//! # How to add a forecaster
//! 1. Write a type implementing [`Forecaster`] (fit on a [`Window`] of history) whose fitted
//!    value implements [`FittedModel`] (predict `horizon` steps after the end of a context
//!    window that may extend past the training data: models are refit on a schedule but
//!    predict at every step), and whose `saved` form is a new `SavedRepr` variant (checked
//!    in [`SavedFit`]'s `model` before a restart takes it up).
//! 2. Add a variant to [`ModelKind`] with its stable snake_case name and build it in
//!    [`ModelKind::build`].
//! 3. Add it to a preset under `models/` and document it in `models/README.md`.
//! 4. Give it a test with a synthetic series whose answer is known.

mod damped;
mod engine;
mod grid;
mod history;
mod linear;
mod mstl;
mod naive;
mod path;
mod preset;
mod season;

pub use engine::{CandidateStats, Engine, EngineState, EngineStatus, StateMismatch};
pub use history::{clip_outliers, level_shift_start};
pub use preset::{ModelPreset, PresetError, ResidualScale};
pub use season::detect_periods;

use serde::{Deserialize, Serialize};

/// A stretch of a workload's history grid: `values[k]` is grid step `start + k`.
#[derive(Debug, Clone, Copy)]
pub struct Window<'a> {
    /// Grid index of `values[0]`.
    pub start: usize,
    /// Demand per grid step, gaps already filled.
    pub values: &'a [f64],
}

impl Window<'_> {
    /// Grid index one past the last value.
    pub fn end(&self) -> usize {
        self.start + self.values.len()
    }

    /// Value at absolute grid index `k`, if inside the window.
    pub fn get(&self, k: usize) -> Option<f64> {
        k.checked_sub(self.start)
            .and_then(|i| self.values.get(i).copied())
    }
}

/// Why forecasting failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ForecastError {
    /// Too little history for this model or for calibration.
    #[error("not enough history: need {need} samples, have {have}")]
    NotEnoughData {
        /// Samples needed.
        need: usize,
        /// Samples available.
        have: usize,
    },
    /// A sample was not usable (NaN, infinite, negative) and was refused.
    #[error("invalid sample {value} at {at}")]
    InvalidSample {
        /// The offending value.
        value: f64,
        /// Its timestamp.
        at: i64,
    },
    /// A sample's timestamp is not after the previous one.
    #[error("sample at {at} is not after the previous sample at {last}")]
    OutOfOrder {
        /// The sample's timestamp.
        at: i64,
        /// The previous sample's timestamp.
        last: i64,
    },
    /// The underlying model failed to fit or predict.
    #[error("model {model} failed: {message}")]
    Model {
        /// Model name.
        model: &'static str,
        /// The model's message.
        message: String,
    },
}

impl ForecastError {
    /// Every value `kind()` can return.
    pub const KINDS: [&'static str; 4] =
        ["not_enough_data", "invalid_sample", "out_of_order", "model"];

    /// Bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ForecastError::NotEnoughData { .. } => "not_enough_data",
            ForecastError::InvalidSample { .. } => "invalid_sample",
            ForecastError::OutOfOrder { .. } => "out_of_order",
            ForecastError::Model { .. } => "model",
        }
    }
}

/// An unfitted model: learns from a window of history.
pub trait Forecaster: Send + Sync {
    /// Fit on `history`.
    ///
    /// # Errors
    /// [`ForecastError::NotEnoughData`] or [`ForecastError::Model`].
    fn fit(&self, history: Window<'_>) -> Result<Box<dyn FittedModel>, ForecastError>;
}

/// A fitted model.
pub trait FittedModel: Send + Sync {
    /// Point forecast for the `horizon` grid steps after `context.end()`. `context` starts at or
    /// before the training window's end and may run past it.
    ///
    /// # Errors
    /// [`ForecastError::Model`] when the context does not fit the model.
    fn predict(&self, context: Window<'_>, horizon: usize) -> Result<Vec<f64>, ForecastError>;

    /// The fit as the model state saves it, so a restart takes it up instead of refitting.
    fn saved(&self) -> SavedFit;
}

/// A fitted model as saved in the model state (opaque: only the engine reads it back).
#[derive(Clone, Serialize, Deserialize)]
pub struct SavedFit(SavedRepr);

#[derive(Clone, Serialize, Deserialize)]
enum SavedRepr {
    Naive(naive::SeasonalNaive),
    Mstl(mstl::FittedMstl),
    Linear(linear::FittedLag),
    Damped(damped::FittedDamped),
}

impl SavedFit {
    /// The fitted model again, when it is one of `kind`, whole (its numbers agree with each
    /// other and are finite) and trained no later than grid index `end`; None for anything
    /// else (a damaged or foreign state). Its periods are its own: a fit kept through a
    /// failed refit may hold other periods than the engine's latest detection.
    fn model(self, kind: ModelKind, end: usize) -> Option<Box<dyn FittedModel>> {
        let ok = match (&self.0, kind) {
            (SavedRepr::Naive(m), ModelKind::Persistence) => m.period.is_none(),
            (SavedRepr::Naive(m), ModelKind::SeasonalNaive) => m.period != Some(0),
            (SavedRepr::Mstl(m), ModelKind::MstlEts) => m.fits(end),
            (SavedRepr::Linear(m), ModelKind::Linear) => m.fits(),
            (SavedRepr::Damped(m), ModelKind::DampedTrend) => m.fits(end),
            _ => false,
        };
        if !ok {
            return None;
        }
        Some(match self.0 {
            SavedRepr::Naive(m) => Box::new(m),
            SavedRepr::Mstl(m) => Box::new(m),
            SavedRepr::Linear(m) => Box::new(m),
            SavedRepr::Damped(m) => Box::new(m),
        })
    }
}

/// The models prescale can fit. Names are stable: they appear in presets, CSV, JSON and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Last value carried forward: what a purely reactive autoscaler assumes.
    Persistence,
    /// The value one season ago (the strongest detected period); persistence when none.
    SeasonalNaive,
    /// MSTL decomposition on the detected periods with AutoETS on the trend (augurs).
    MstlEts,
    /// Linear regression (linfa) on recent lags and seasonal lags, applied recursively.
    Linear,
    /// Damped additive-trend exponential smoothing (augurs ETS, AAdN/MAdN).
    DampedTrend,
}

impl ModelKind {
    /// Stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Persistence => "persistence",
            ModelKind::SeasonalNaive => "seasonal_naive",
            ModelKind::MstlEts => "mstl_ets",
            ModelKind::Linear => "linear",
            ModelKind::DampedTrend => "damped_trend",
        }
    }

    /// Builds the forecaster for the periods detected in this workload's history.
    pub fn build(self, periods: &[usize], fit: &FitSettings) -> Box<dyn Forecaster> {
        match self {
            ModelKind::Persistence => Box::new(naive::SeasonalNaive { period: None }),
            ModelKind::SeasonalNaive => Box::new(naive::SeasonalNaive {
                period: periods.first().copied(),
            }),
            ModelKind::MstlEts => Box::new(mstl::MstlEts {
                periods: periods.to_vec(),
                path_len: fit.path_len,
            }),
            ModelKind::Linear => Box::new(linear::LagRegression {
                periods: periods.to_vec(),
                max_rows: fit.max_regression_rows,
            }),
            ModelKind::DampedTrend => Box::new(damped::DampedTrend {
                path_len: fit.path_len,
                max_points: fit.max_trend_points,
            }),
        }
    }
}

/// Settings shared by model fits.
#[derive(Debug, Clone)]
pub struct FitSettings {
    /// Steps a path model precomputes past its training end (refit interval plus horizon).
    pub path_len: usize,
    /// Most rows a regression is fitted on.
    pub max_regression_rows: usize,
    /// Most (latest) points the damped trend is fitted on.
    pub max_trend_points: usize,
}

/// Exponentially weighted mean of the residuals of `context` against a model's path since
/// its training end `train_end`: how far the series has drifted from the path since the
/// model was fitted. `path(j)` yields the path's values from `j` steps after the training end
/// on, step by step (the steps before the window's start are skipped).
fn drift<I: Iterator<Item = f64>>(
    context: Window<'_>,
    train_end: usize,
    alpha: f64,
    path: impl FnOnce(usize) -> I,
) -> f64 {
    let from = train_end.max(context.start);
    let mut c = 0.0;
    for (k, b) in (from..context.end()).zip(path(from - train_end)) {
        if let Some(y) = context.get(k) {
            c += alpha * ((y - b) - c);
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_fit_predicts_as_the_fit_it_was_saved_from_and_only_for_its_own_model() {
        let p = 24;
        let y: Vec<f64> = (0..24 * 10)
            .map(|i| 100.0 + 20.0 * (i as f64 * std::f64::consts::TAU / p as f64).sin())
            .collect();
        let history = Window {
            start: 0,
            values: &y[..24 * 8],
        };
        let context = Window {
            start: 0,
            values: &y[..24 * 9],
        };
        let fit = FitSettings {
            path_len: 100,
            max_regression_rows: 1000,
            max_trend_points: 1000,
        };
        let kinds = [
            ModelKind::Persistence,
            ModelKind::SeasonalNaive,
            ModelKind::MstlEts,
            ModelKind::Linear,
            ModelKind::DampedTrend,
        ];
        for kind in kinds {
            let fitted = kind.build(&[p], &fit).fit(history).unwrap();
            let bytes = bincode::serialize(&fitted.saved()).unwrap();
            let saved: SavedFit = bincode::deserialize(&bytes).unwrap();
            let back = saved.clone().model(kind, history.end()).unwrap();
            assert_eq!(
                back.predict(context, 30).unwrap(),
                fitted.predict(context, 30).unwrap(),
                "{kind:?}"
            );
            // Persistence is the seasonal naive model of a series without a season.
            let alike =
                |a, b| a == ModelKind::Persistence && b == ModelKind::SeasonalNaive || a == b;
            for other in kinds.into_iter().filter(|&k| !alike(kind, k)) {
                assert!(
                    saved.clone().model(other, history.end()).is_none(),
                    "{kind:?} taken up as {other:?}"
                );
            }
            // A fit made after the end of the grid it is restored on.
            if matches!(kind, ModelKind::MstlEts | ModelKind::DampedTrend) {
                assert!(saved.model(kind, history.end() - 1).is_none());
            }
        }
        // A seasonal naive model with a period of 0 would divide by it.
        let zero = SavedFit(SavedRepr::Naive(naive::SeasonalNaive { period: Some(0) }));
        assert!(zero.model(ModelKind::SeasonalNaive, 0).is_none());
        let none = SavedFit(SavedRepr::Naive(naive::SeasonalNaive { period: None }));
        assert!(
            none.model(ModelKind::SeasonalNaive, 0).is_some(),
            "no season found"
        );
    }
}
