//! MSTL + AutoETS (augurs): seasonal profiles and a trend path, re-anchored on new data.

use augurs::ets::AutoETS;
use augurs::mstl::MSTLModel;
use augurs::prelude::*;

use super::path::Path;
use super::{FittedModel, ForecastError, Forecaster, Window, drift};

const NAME: &str = "mstl_ets";
/// Weight of the newest residual when re-anchoring the path on data after the fit.
const ANCHOR_ALPHA: f64 = 0.5;

/// MSTL on the detected periods, AutoETS on the deseasonalised trend.
#[derive(Debug, Clone)]
pub(super) struct MstlEts {
    pub(super) periods: Vec<usize>,
    pub(super) path_len: usize,
}

/// The fitted decomposition: one cycle of each seasonal component and the trend forecast.
struct FittedMstl {
    train_end: usize,
    /// (period, last cycle of the component) — index `(k - train_end) % period`. f32, like
    /// the trend: every workload holds them.
    seasons: Vec<(usize, Vec<f32>)>,
    trend: Path,
}

impl FittedMstl {
    fn season(&self, j: usize) -> f64 {
        self.seasons
            .iter()
            .map(|(p, cycle)| f64::from(cycle[j % p]))
            .sum()
    }

    fn base(&self, k: usize) -> f64 {
        let j = k.saturating_sub(self.train_end);
        self.trend.get(j) + self.season(j)
    }
}

impl Forecaster for MstlEts {
    fn fit(&self, history: Window<'_>) -> Result<Box<dyn FittedModel>, ForecastError> {
        let n = history.values.len();
        let longest = self.periods.iter().copied().max().unwrap_or(0);
        if self.periods.is_empty() || n < 2 * longest + 1 {
            return Err(ForecastError::NotEnoughData {
                need: 2 * longest + 1,
                have: n,
            });
        }
        let model = MSTLModel::new(
            self.periods.clone(),
            AutoETS::non_seasonal().into_trend_model(),
        );
        let fit = model
            .fit(history.values)
            .map_err(|e| ForecastError::Model {
                model: NAME,
                message: e.to_string(),
            })?;
        let seasons = self
            .periods
            .iter()
            .zip(fit.fit().seasonal())
            .map(|(&p, comp)| (p, comp[comp.len() - p..].to_vec()))
            .collect();
        // The trend path comes from the same fitted model, minus its seasonal part.
        let whole = fit
            .predict(self.path_len.max(1), None)
            .map_err(|e| ForecastError::Model {
                model: NAME,
                message: e.to_string(),
            })?;
        let mut fitted = FittedMstl {
            train_end: history.end(),
            seasons,
            trend: Path::Values(Vec::new()),
        };
        let trend: Vec<f64> = whole
            .point
            .iter()
            .enumerate()
            .map(|(j, &w)| w - fitted.season(j))
            .collect();
        fitted.trend = Path::new(&trend);
        if trend.iter().any(|v| !v.is_finite()) {
            return Err(ForecastError::Model {
                model: NAME,
                message: "non-finite trend forecast".into(),
            });
        }
        Ok(Box::new(fitted))
    }
}

impl FittedModel for FittedMstl {
    fn predict(&self, context: Window<'_>, horizon: usize) -> Result<Vec<f64>, ForecastError> {
        let end = context.end();
        let from = self.train_end.max(context.start);
        let j0 = from - self.train_end;
        let path = (j0..)
            .zip(self.trend.values_from(j0))
            .map(|(j, t)| t + self.season(j));
        let c = drift(context, from, ANCHOR_ALPHA, path);
        Ok((0..horizon).map(|j| self.base(end + j) + c).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mstl_forecasts_a_clean_seasonal_series_closely() {
        let p = 24;
        let y: Vec<f64> = (0..24 * 10)
            .map(|i| 100.0 + 20.0 * (2.0 * std::f64::consts::PI * i as f64 / p as f64).sin())
            .collect();
        let m = MstlEts {
            periods: vec![p],
            path_len: 48,
        };
        let fitted = m
            .fit(Window {
                start: 0,
                values: &y[..24 * 8],
            })
            .unwrap();
        let f = fitted
            .predict(
                Window {
                    start: 0,
                    values: &y[..24 * 8],
                },
                48,
            )
            .unwrap();
        for (a, b) in f.iter().zip(&y[24 * 8..]) {
            assert!((a - b).abs() < 1.0, "{a} vs {b}");
        }
        // Re-anchored on newer data it still follows the cycle.
        let f2 = fitted
            .predict(
                Window {
                    start: 0,
                    values: &y[..24 * 9],
                },
                24,
            )
            .unwrap();
        for (a, b) in f2.iter().zip(&y[24 * 9..]) {
            assert!((a - b).abs() < 1.0, "{a} vs {b}");
        }
    }

    #[test]
    fn mstl_needs_two_full_periods() {
        let y = vec![1.0; 30];
        let err = MstlEts {
            periods: vec![24],
            path_len: 10,
        }
        .fit(Window {
            start: 0,
            values: &y,
        })
        .err()
        .unwrap();
        assert_eq!(err.kind(), "not_enough_data");
    }
}
