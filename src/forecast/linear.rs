//! Linear regression (linfa) on recent and seasonal lags, applied recursively.

use linfa::prelude::*;
use linfa_linear::LinearRegression;
use ndarray::{Array1, Array2};

use super::{FittedModel, ForecastError, Forecaster, SavedFit, SavedRepr, Window};

const NAME: &str = "linear";
/// Recent lags used as features.
const LAGS: usize = 3;
/// Length of the trailing mean used as a feature.
const MEAN_LEN: usize = 12;

/// One-step-ahead regression on lags 1..=3, a trailing mean, and for every detected period P
/// the values P and P+1 steps back (so "same as last season, moved by today's change" is
/// expressible).
#[derive(Debug, Clone)]
pub(super) struct LagRegression {
    pub(super) periods: Vec<usize>,
    pub(super) max_rows: usize,
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct FittedLag {
    periods: Vec<usize>,
    coef: Vec<f64>,
    intercept: f64,
    /// Forecasts are kept within [0, ceiling] so a recursion cannot run away.
    ceiling: f64,
}

impl FittedLag {
    /// Whether a saved fit can be taken up: periods of at least 1 step, one coefficient per
    /// feature, and finite numbers (a NaN ceiling would make the clamp in `predict` panic).
    pub(super) fn fits(&self) -> bool {
        !self.periods.contains(&0)
            && self.coef.len() == LAGS + 1 + 2 * self.periods.len()
            && self.coef.iter().all(|c| c.is_finite())
            && self.intercept.is_finite()
            && self.ceiling.is_finite()
            && self.ceiling >= 0.0
    }
}

fn lookback(periods: &[usize]) -> usize {
    periods
        .iter()
        .map(|p| p + 1)
        .max()
        .unwrap_or(0)
        .max(MEAN_LEN)
        .max(LAGS)
}

/// Features for predicting index `k` from `at(i)` for `i < k`.
fn features(periods: &[usize], k: usize, at: &impl Fn(usize) -> f64, out: &mut Vec<f64>) {
    out.clear();
    for l in 1..=LAGS {
        out.push(at(k - l));
    }
    out.push((1..=MEAN_LEN).map(|l| at(k - l)).sum::<f64>() / MEAN_LEN as f64);
    for &p in periods {
        out.push(at(k - p));
        out.push(at(k - p - 1));
    }
}

impl Forecaster for LagRegression {
    fn fit(&self, history: Window<'_>) -> Result<Box<dyn FittedModel>, ForecastError> {
        let y = history.values;
        let back = lookback(&self.periods);
        let n_feat = LAGS + 1 + 2 * self.periods.len();
        let need = back + 10 * (n_feat + 1);
        if y.len() < need {
            return Err(ForecastError::NotEnoughData {
                need,
                have: y.len(),
            });
        }
        let first = back.max(y.len().saturating_sub(self.max_rows));
        let rows = y.len() - first;
        let mut x = Array2::<f64>::zeros((rows, n_feat));
        let mut t = Array1::<f64>::zeros(rows);
        let at = |i: usize| y[i];
        let mut buf = Vec::with_capacity(n_feat);
        for (r, k) in (first..y.len()).enumerate() {
            features(&self.periods, k, &at, &mut buf);
            for (c, v) in buf.iter().enumerate() {
                x[[r, c]] = *v;
            }
            t[r] = y[k];
        }
        let fit = LinearRegression::new()
            .fit(&Dataset::new(x, t))
            .map_err(|e| ForecastError::Model {
                model: NAME,
                message: e.to_string(),
            })?;
        let coef: Vec<f64> = fit.params().to_vec();
        let intercept = fit.intercept();
        if !intercept.is_finite() || coef.iter().any(|c| !c.is_finite()) {
            return Err(ForecastError::Model {
                model: NAME,
                message: "non-finite coefficients".into(),
            });
        }
        let max = y.iter().copied().fold(0.0_f64, f64::max);
        Ok(Box::new(FittedLag {
            periods: self.periods.clone(),
            coef,
            intercept,
            ceiling: 3.0 * max.max(1e-9),
        }))
    }
}

impl FittedModel for FittedLag {
    fn predict(&self, context: Window<'_>, horizon: usize) -> Result<Vec<f64>, ForecastError> {
        let back = lookback(&self.periods);
        let y = context.values;
        if y.len() < back {
            return Err(ForecastError::NotEnoughData {
                need: back,
                have: y.len(),
            });
        }
        // Only the tail the features reach is copied; predictions are appended to it.
        let mut tail: Vec<f64> = y[y.len() - back..].to_vec();
        let mut out = Vec::with_capacity(horizon);
        let mut buf = Vec::with_capacity(self.coef.len());
        for _ in 0..horizon {
            let k = tail.len();
            features(&self.periods, k, &|i| tail[i], &mut buf);
            let v: f64 =
                self.intercept + buf.iter().zip(&self.coef).map(|(a, b)| a * b).sum::<f64>();
            let v = v.clamp(0.0, self.ceiling);
            out.push(v);
            tail.push(v);
        }
        Ok(out)
    }

    fn saved(&self) -> SavedFit {
        SavedFit(SavedRepr::Linear(self.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_learns_a_seasonal_series_with_a_trend() {
        let p = 20;
        let y: Vec<f64> = (0..600)
            .map(|i| 50.0 + 0.05 * i as f64 + 10.0 * ((i % p) as f64 / p as f64))
            .collect();
        let m = LagRegression {
            periods: vec![p],
            max_rows: 10_000,
        };
        let fitted = m
            .fit(Window {
                start: 0,
                values: &y[..500],
            })
            .unwrap();
        let f = fitted
            .predict(
                Window {
                    start: 0,
                    values: &y[..500],
                },
                40,
            )
            .unwrap();
        for (a, b) in f.iter().zip(&y[500..540]) {
            assert!((a - b).abs() < 0.5, "{a} vs {b}");
        }
    }

    #[test]
    fn a_saved_regression_with_damaged_numbers_is_refused() {
        let good = FittedLag {
            periods: vec![20],
            coef: vec![0.1; LAGS + 3],
            intercept: 1.0,
            ceiling: 30.0,
        };
        assert!(good.fits());
        let damaged: [fn(&mut FittedLag); 6] = [
            |m| m.periods = vec![20, 40],
            |m| m.periods = vec![0],
            |m| m.coef.pop().map(drop).unwrap_or(()),
            |m| m.coef[0] = f64::INFINITY,
            |m| m.ceiling = f64::NAN,
            |m| m.ceiling = -1.0,
        ];
        for (k, damage) in damaged.iter().enumerate() {
            let mut m = good.clone();
            damage(&mut m);
            assert!(!m.fits(), "damage {k} taken up");
        }
    }

    #[test]
    fn regression_on_too_little_data_is_an_error() {
        let y = vec![1.0; 30];
        let m = LagRegression {
            periods: vec![24],
            max_rows: 100,
        };
        assert_eq!(
            m.fit(Window {
                start: 0,
                values: &y
            })
            .err()
            .unwrap()
            .kind(),
            "not_enough_data"
        );
    }
}
