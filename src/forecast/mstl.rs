//! MSTL + AutoETS (augurs): seasonal profiles and a trend path, re-anchored on new data.

use augurs::ets::AutoETS;
use augurs::mstl::MSTLModel;
use augurs::prelude::*;

use super::path::Path;
use super::{FittedModel, ForecastError, Forecaster, SavedFit, SavedRepr, Window, drift};

const NAME: &str = "mstl_ets";
/// Weight of the newest residual when re-anchoring the path on data after the fit.
const ANCHOR_ALPHA: f64 = 0.5;

/// MSTL on the detected periods, AutoETS on the deseasonalised trend.
#[derive(Debug, Clone)]
pub(super) struct MstlEts {
    pub(super) periods: Vec<usize>,
    pub(super) path_len: usize,
}

/// The last cycle of a seasonal component, index `(k - train_end) % period`, as 16-bit
/// codes over its largest magnitude (every workload holds a day of these; a code is within
/// 1/65,534 of the component's amplitude).
#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Cycle {
    scale: f64,
    codes: Vec<i16>,
}

impl Cycle {
    fn new(values: &[f32]) -> Self {
        let top = values
            .iter()
            .fold(0.0_f64, |m, &v| m.max(f64::from(v).abs()));
        let scale = if top > 0.0 {
            top / f64::from(i16::MAX)
        } else {
            1.0
        };
        Self {
            scale,
            codes: values
                .iter()
                .map(|&v| (f64::from(v) / scale).round().clamp(-32767.0, 32767.0) as i16)
                .collect(),
        }
    }

    fn get(&self, j: usize) -> f64 {
        self.codes
            .get(j % self.codes.len().max(1))
            .map_or(0.0, |&c| f64::from(c) * self.scale)
    }
}

/// The fitted decomposition: one cycle of each seasonal component and the trend forecast.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct FittedMstl {
    train_end: usize,
    seasons: Vec<Cycle>,
    trend: Path,
}

impl FittedMstl {
    /// Whether a saved fit can be taken up on a grid ending at `end`.
    pub(super) fn fits(&self, end: usize) -> bool {
        self.train_end <= end
            && self.trend.is_finite()
            && !self.seasons.is_empty()
            && self
                .seasons
                .iter()
                .all(|c| !c.codes.is_empty() && c.scale.is_finite())
    }

    fn season(&self, j: usize) -> f64 {
        self.seasons.iter().map(|c| c.get(j)).sum()
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
        let cycles: Vec<&[f32]> = self
            .periods
            .iter()
            .zip(fit.fit().seasonal())
            .map(|(&p, comp)| &comp[comp.len().saturating_sub(p)..])
            .collect();
        // The trend path comes from the same fitted model, minus its exact seasonal part (a
        // trend that is an ETS forecast then keeps its three-number form).
        let whole = fit
            .predict(self.path_len.max(1), None)
            .map_err(|e| ForecastError::Model {
                model: NAME,
                message: e.to_string(),
            })?;
        let trend: Vec<f64> = whole
            .point
            .iter()
            .enumerate()
            .map(|(j, &w)| {
                let season: f64 = cycles
                    .iter()
                    .map(|c| c.get(j % c.len().max(1)).map_or(0.0, |&v| f64::from(v)))
                    .sum();
                w - season
            })
            .collect();
        if trend.iter().any(|v| !v.is_finite()) {
            return Err(ForecastError::Model {
                model: NAME,
                message: "non-finite trend forecast".into(),
            });
        }
        let fitted = FittedMstl {
            train_end: history.end(),
            seasons: cycles.iter().map(|c| Cycle::new(c)).collect(),
            trend: Path::new(&trend),
        };
        Ok(Box::new(fitted))
    }
}

impl FittedModel for FittedMstl {
    fn predict(&self, context: Window<'_>, horizon: usize) -> Result<Vec<f64>, ForecastError> {
        let end = context.end();
        let c = drift(context, self.train_end, ANCHOR_ALPHA, |j0| {
            (j0..)
                .zip(self.trend.values_from(j0))
                .map(|(j, t)| t + self.season(j))
        });
        Ok((0..horizon).map(|j| self.base(end + j) + c).collect())
    }

    fn saved(&self) -> SavedFit {
        SavedFit(SavedRepr::Mstl(self.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seasonal_cycle_reads_back_within_its_amplitude_over_65534() {
        let v: Vec<f32> = (0..1440)
            .map(|i| 250.0 * (i as f32 / 229.0).sin() - 3.0)
            .collect();
        let c = Cycle::new(&v);
        let amp = 253.0;
        for (j, &x) in v.iter().enumerate() {
            assert!(
                (c.get(j) - f64::from(x)).abs() <= amp / 65534.0 + 1e-9,
                "{j}"
            );
            assert_eq!(c.get(j + 1440), c.get(j), "the cycle repeats");
        }
        assert!(Cycle::new(&[0.0; 4]).get(2) == 0.0);
    }

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
