//! A fitted model's forecast from its training end to the next refit, held compactly.
//!
//! The exponential-smoothing forecasts the path models compute (flat, linear, damped or
//! geometric trends) are all `p(j) = p(0) + d · (1 + r + … + r^(j-1))`: three numbers instead
//! of one value per step until the next refit, for every workload. A path of another shape is
//! kept value by value.

/// Largest error tolerated when a path is held as its three numbers, relative to the path's
/// largest magnitude (f32 storage, the alternative, is accurate to 6e-8).
const TOLERANCE: f64 = 1e-6;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(super) enum Path {
    /// `first + delta * (1 - ratio^j) / (1 - ratio)` (`delta * j` when `ratio` is 1), for
    /// `j < len`; the last value after that.
    Geometric {
        first: f64,
        delta: f64,
        ratio: f64,
        len: usize,
    },
    /// One value per step; the last one after the end.
    Values(Vec<f32>),
}

fn pow(ratio: f64, j: usize) -> f64 {
    ratio.powi(i32::try_from(j).unwrap_or(i32::MAX))
}

fn geometric(first: f64, delta: f64, ratio: f64, j: usize) -> f64 {
    if (1.0 - ratio).abs() < 1e-12 {
        first + delta * j as f64
    } else {
        first + delta * (1.0 - pow(ratio, j)) / (1.0 - ratio)
    }
}

impl Path {
    /// The compact form of `p` when it has one, else its values (f32). Empty or non-finite
    /// input gives an empty path, read as 0.
    pub(super) fn new(p: &[f64]) -> Self {
        if p.len() >= 3 && p.iter().all(|v| v.is_finite()) {
            let scale = p.iter().fold(0.0_f64, |m, v| m.max(v.abs()));
            let tol = TOLERANCE * scale + 1e-12;
            let (d1, d2) = (p[1] - p[0], p[2] - p[1]);
            let ratio = if d1.abs() <= tol { 1.0 } else { d2 / d1 };
            let delta = if d1.abs() <= tol { 0.0 } else { d1 };
            let fits = ratio.is_finite()
                && (0.0..=1.5).contains(&ratio)
                && p.iter()
                    .enumerate()
                    .all(|(j, &v)| (geometric(p[0], delta, ratio, j) - v).abs() <= tol);
            if fits {
                return Self::Geometric {
                    first: p[0],
                    delta,
                    ratio,
                    len: p.len(),
                };
            }
        }
        Self::Values(p.iter().map(|&v| v as f32).collect())
    }

    /// The forecast from `j` steps after the training end on, step by step (what
    /// [`Path::get`] gives, without a power per step).
    /// Whether every number it holds is finite (a saved path read back is checked).
    pub(super) fn is_finite(&self) -> bool {
        match self {
            Self::Geometric {
                first,
                delta,
                ratio,
                ..
            } => first.is_finite() && delta.is_finite() && ratio.is_finite(),
            Self::Values(v) => v.iter().all(|x| x.is_finite()),
        }
    }

    pub(super) fn values_from(&self, j: usize) -> impl Iterator<Item = f64> + '_ {
        let (mut k, mut value) = (j, self.get(j));
        // The step from value `k` to `k + 1` of a geometric path: `delta * ratio^k`.
        let mut term = match self {
            Self::Geometric { delta, ratio, .. } => delta * pow(*ratio, j),
            Self::Values(_) => 0.0,
        };
        std::iter::from_fn(move || {
            let out = match self {
                Self::Geometric { ratio, len, .. } => {
                    let out = value;
                    if k + 1 < *len {
                        value += term;
                        term *= ratio;
                    }
                    out
                }
                Self::Values(_) => self.get(k),
            };
            k += 1;
            Some(out)
        })
    }

    /// The forecast `j` steps after the training end (the last value past the path's end).
    pub(super) fn get(&self, j: usize) -> f64 {
        match self {
            Self::Geometric {
                first,
                delta,
                ratio,
                len,
            } => geometric(*first, *delta, *ratio, j.min(len.saturating_sub(1))),
            Self::Values(v) => v.get(j).or(v.last()).map_or(0.0, |&x| f64::from(x)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trend_shapes_are_held_as_three_numbers_and_read_back() {
        let damped: Vec<f64> = (1..=500)
            .map(|h| 100.0 + 2.0 * (1..=h).map(|i| 0.9_f64.powi(i)).sum::<f64>())
            .collect();
        let linear: Vec<f64> = (0..500).map(|j| 10.0 + 0.5 * j as f64).collect();
        let flat = vec![42.0; 500];
        let geometric: Vec<f64> = (0..500).map(|j| 5.0 * 1.001_f64.powi(j)).collect();
        for p in [damped, linear, flat, geometric] {
            let path = Path::new(&p);
            assert!(matches!(path, Path::Geometric { .. }), "{path:?}");
            for (j, &v) in p.iter().enumerate() {
                assert!((path.get(j) - v).abs() <= 1e-6 * v.abs(), "{j}");
            }
            assert_eq!(path.get(10_000), path.get(p.len() - 1));
            for (j, v) in path.values_from(3).take(600).enumerate() {
                let exact = path.get(j + 3);
                assert!(
                    (v - exact).abs() <= 1e-9 * exact.abs(),
                    "{j}: {v} vs {exact}"
                );
            }
        }
    }

    #[test]
    fn other_shapes_are_kept_value_by_value() {
        let wave: Vec<f64> = (0..300).map(|j| 50.0 + (j as f64 / 9.0).sin()).collect();
        let path = Path::new(&wave);
        assert!(matches!(path, Path::Values(_)));
        assert!((path.get(17) - wave[17]).abs() < 1e-4);
        assert!((path.get(999) - wave[299]).abs() < 1e-4);
        let from: Vec<f64> = path.values_from(298).take(3).collect();
        assert_eq!(from, vec![path.get(298), path.get(299), path.get(299)]);
        assert_eq!(Path::new(&[]).get(3), 0.0);
        assert_eq!(Path::new(&[1.0, 2.0]).get(5), 2.0);
    }
}
