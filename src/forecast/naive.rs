//! Seasonal naive and persistence: the baselines every other model must beat.

use super::{FittedModel, ForecastError, Forecaster, SavedFit, SavedRepr, Window};

/// The value one `period` ago; the last value when `period` is `None`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct SeasonalNaive {
    pub(super) period: Option<usize>,
}

impl Forecaster for SeasonalNaive {
    fn fit(&self, history: Window<'_>) -> Result<Box<dyn FittedModel>, ForecastError> {
        let need = self.period.unwrap_or(1);
        if history.values.len() < need {
            return Err(ForecastError::NotEnoughData {
                need,
                have: history.values.len(),
            });
        }
        Ok(Box::new(self.clone()))
    }
}

impl FittedModel for SeasonalNaive {
    fn predict(&self, context: Window<'_>, horizon: usize) -> Result<Vec<f64>, ForecastError> {
        let n = context.values.len();
        let p = self.period.unwrap_or(1);
        if n < p || n == 0 {
            return Err(ForecastError::NotEnoughData {
                need: p.max(1),
                have: n,
            });
        }
        // Step j (1-based) repeats the value at n + j - p * ceil(j / p).
        Ok((1..=horizon)
            .map(|j| {
                let back = p * j.div_ceil(p);
                context.values[n + j - back - 1]
            })
            .collect())
    }

    fn saved(&self) -> SavedFit {
        SavedFit(SavedRepr::Naive(self.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seasonal_naive_has_zero_error_on_an_exactly_periodic_series() {
        let p = 7;
        let y: Vec<f64> = (0..70).map(|i| ((i % p) * (i % p)) as f64).collect();
        let m = SeasonalNaive { period: Some(p) };
        let fitted = m
            .fit(Window {
                start: 0,
                values: &y[..50],
            })
            .unwrap();
        let f = fitted
            .predict(
                Window {
                    start: 0,
                    values: &y[..50],
                },
                20,
            )
            .unwrap();
        assert_eq!(f, y[50..70].to_vec());
    }

    #[test]
    fn persistence_repeats_the_last_value() {
        let y = [1.0, 5.0, 3.0];
        let f = SeasonalNaive { period: None }
            .predict(
                Window {
                    start: 0,
                    values: &y,
                },
                4,
            )
            .unwrap();
        assert_eq!(f, vec![3.0; 4]);
    }

    #[test]
    fn too_short_for_the_period_is_an_error() {
        let y = [1.0, 2.0];
        let err = SeasonalNaive { period: Some(5) }
            .fit(Window {
                start: 0,
                values: &y,
            })
            .err()
            .unwrap();
        assert_eq!(err.kind(), "not_enough_data");
    }
}
