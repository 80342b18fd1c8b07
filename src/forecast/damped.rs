//! Damped-trend exponential smoothing (augurs ETS): for series with no seasonality.

use augurs::ets::AutoETS;
use augurs::prelude::*;

use super::path::Path;
use super::{FittedModel, ForecastError, Forecaster, SavedFit, SavedRepr, Window, drift};

const NAME: &str = "damped_trend";
/// Weight of the newest residual when re-anchoring the path on data after the fit.
const ANCHOR_ALPHA: f64 = 0.5;

/// AutoETS restricted to damped additive trend, no season.
#[derive(Debug, Clone)]
pub(super) struct DampedTrend {
    pub(super) path_len: usize,
    pub(super) max_points: usize,
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct FittedDamped {
    train_end: usize,
    /// The forecast from the fit to the next refit.
    path: Path,
}

impl FittedDamped {
    /// Whether a saved fit can be taken up on a grid ending at `end`.
    pub(super) fn fits(&self, end: usize) -> bool {
        self.train_end <= end && self.path.is_finite()
    }

    fn base(&self, k: usize) -> f64 {
        self.path.get(k.saturating_sub(self.train_end))
    }
}

impl Forecaster for DampedTrend {
    fn fit(&self, history: Window<'_>) -> Result<Box<dyn FittedModel>, ForecastError> {
        let n = history.values.len();
        if n < 20 {
            return Err(ForecastError::NotEnoughData { need: 20, have: n });
        }
        let y = &history.values[n.saturating_sub(self.max_points)..];
        let err = |e: &dyn std::fmt::Display| ForecastError::Model {
            model: NAME,
            message: e.to_string(),
        };
        let model = AutoETS::new(1, "ZAN")
            .and_then(|m| m.damped(true))
            .map_err(|e| err(&e))?;
        let fit = model.fit(y).map_err(|e| err(&e))?;
        let path = fit
            .predict(self.path_len.max(1), None)
            .map_err(|e| err(&e))?
            .point;
        if path.iter().any(|v| !v.is_finite()) {
            return Err(err(&"non-finite forecast"));
        }
        Ok(Box::new(FittedDamped {
            train_end: history.end(),
            path: Path::new(&path),
        }))
    }
}

impl FittedModel for FittedDamped {
    fn predict(&self, context: Window<'_>, horizon: usize) -> Result<Vec<f64>, ForecastError> {
        let end = context.end();
        let c = drift(context, self.train_end, ANCHOR_ALPHA, |j| {
            self.path.values_from(j)
        });
        Ok((0..horizon).map(|j| self.base(end + j) + c).collect())
    }

    fn saved(&self) -> SavedFit {
        SavedFit(SavedRepr::Damped(self.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damped_trend_continues_a_ramp_but_flattens() {
        let y: Vec<f64> = (0..200).map(|i| 50.0 + 0.5 * i as f64).collect();
        let m = DampedTrend {
            path_len: 400,
            max_points: 1000,
        };
        let fitted = m
            .fit(Window {
                start: 0,
                values: &y,
            })
            .unwrap();
        let f = fitted
            .predict(
                Window {
                    start: 0,
                    values: &y,
                },
                400,
            )
            .unwrap();
        // Rising at first, close to the ramp one step ahead...
        assert!((f[0] - 150.0).abs() < 2.0, "{}", f[0]);
        assert!(f[10] > f[0]);
        // ...and damped: far less than the undamped ramp 400 steps out (349.5).
        assert!(f[399] < 340.0, "{}", f[399]);
    }
}
