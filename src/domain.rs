//! Plain data shared by every stage: timestamps, forecasts and the decisions made from them.

use serde::Serialize;

/// Unix time in whole seconds (UTC). Every timestamp in prescale has this unit.
pub type Timestamp = i64;

/// A quantile forecast of demand for the steps after `origin`.
///
/// `point[k]` and `upper[k]` are the forecast for `origin + (k + 1) * step`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Forecast {
    /// Time of the last observation the forecast used.
    pub origin: Timestamp,
    /// Spacing between forecast steps, in seconds.
    pub step: u64,
    /// Point (median-like) forecast per step.
    pub point: Vec<f64>,
    /// Calibrated `quantile`-quantile of demand per step.
    pub upper: Vec<f64>,
    /// The quantile level of `upper`, for example 0.9.
    pub quantile: f64,
    /// Upper bands at the levels of [`BAND_LEVELS`], each as long as `point`: the policy
    /// chooses among them how much headroom to provision.
    pub bands: Vec<Band>,
    /// Name of the model that produced `point`.
    pub model: &'static str,
    /// True when the workload's models forecast worse than reacting would, so `point` comes from
    /// the reactive (persistence) forecast instead.
    pub demoted: bool,
    /// True when the recent coverage of `upper` is close to `quantile`; the policy only scales
    /// down on a confident forecast.
    pub confident: bool,
    /// The latest sample was above the highest band of the previous forecast: the series may
    /// have shifted faster than the models can follow.
    pub surprise: bool,
}

/// Quantile levels at which forecasts carry an upper band.
pub const BAND_LEVELS: [f64; 9] = [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995];

/// Forecast demand at one quantile level, per step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Band {
    /// Quantile level, e.g. 0.98.
    pub level: f64,
    /// Demand at that level per forecast step.
    pub values: Vec<f64>,
}

impl Forecast {
    /// Timestamp of step `k` (0-based).
    pub fn at(&self, k: usize) -> Timestamp {
        self.origin + (k as i64 + 1) * self.step as i64
    }
}

/// Which term of the scaling policy decided the replica count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Term {
    /// The upper quantile of forecast demand over the lead window.
    Forecast,
    /// Current demand (the reactive floor) asked for more than the forecast.
    ReactiveFloor,
    /// No usable forecast yet (warming up): current demand at a fixed target utilisation.
    Reactive,
    /// Scale-down held back by the stabilisation window or an unconfident forecast.
    Stabilization,
    /// The change was limited by the maximum step per decision.
    StepLimit,
    /// Clamped to the configured minimum.
    MinReplicas,
    /// Clamped to the configured maximum.
    MaxReplicas,
    /// Demand data is missing or invalid: replicas are held, never lowered.
    MissingData,
}

impl Term {
    /// Stable snake_case name, used in CSV, JSON and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Term::Forecast => "forecast",
            Term::ReactiveFloor => "reactive_floor",
            Term::Reactive => "reactive",
            Term::Stabilization => "stabilization",
            Term::StepLimit => "step_limit",
            Term::MinReplicas => "min_replicas",
            Term::MaxReplicas => "max_replicas",
            Term::MissingData => "missing_data",
        }
    }
}

/// Why a decision came out as it did: what a reviewer reads.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reason {
    /// The policy term that won.
    pub term: Term,
    /// Highest upper-quantile demand over the lead window (0 when there was no forecast).
    pub forecast_peak: f64,
    /// When that peak is expected.
    pub forecast_peak_at: Option<Timestamp>,
    /// Highest point forecast over the lead window.
    pub forecast_point_peak: f64,
    /// Model that produced the forecast (`none` when there was none).
    pub model: &'static str,
    /// Quantile level of the band provisioned for.
    pub quantile: f64,
    /// Multiplier applied on top of that band (1 unless the headroom rule needed more than
    /// the highest band).
    pub headroom_scale: f64,
    /// Lead window the decision covers, in seconds (startup plus one decision period).
    pub lead_seconds: u64,
    /// Replicas the winning term asked for before clamping and stabilisation.
    pub raw_replicas: u32,
}

/// One decision of a scaling policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// Replicas the policy wants from the next decision period on.
    pub desired_replicas: u32,
    /// Why.
    pub reason: Reason,
}

/// Sums over a sliding window of the latest `window` pushes, kept in a bounded number of
/// buckets so memory does not grow with the window (the window is exact to one bucket).
/// Buckets hold f32 sums and no count (every bucket but the newest is full): every workload
/// keeps a score of these windows. The totals are f64 and are summed again from the buckets
/// whenever one leaves, so rounding never accumulates.
#[derive(Debug, Clone, PartialEq)]
pub struct SlidingSums<const N: usize> {
    buckets: std::collections::VecDeque<[f32; N]>,
    /// Pushes in the newest bucket.
    open: u32,
    per_bucket: u32,
    max_buckets: usize,
    totals: [f64; N],
}

impl<const N: usize> SlidingSums<N> {
    /// Buckets used at most.
    const BUCKETS: usize = 64;

    /// Sums over about the latest `window` pushes.
    pub fn new(window: usize) -> Self {
        let per_bucket = window.div_ceil(Self::BUCKETS).max(1);
        let max_buckets = window.div_ceil(per_bucket).max(1);
        Self {
            // Exactly what the window needs: growing by doubling would reserve twice that,
            // for every window of every workload.
            buckets: std::collections::VecDeque::with_capacity(max_buckets + 1),
            open: 0,
            per_bucket: u32::try_from(per_bucket).unwrap_or(u32::MAX),
            max_buckets,
            totals: [0.0; N],
        }
    }

    /// Adds one observation of `N` values.
    pub fn push(&mut self, v: [f64; N]) {
        match self.buckets.back_mut() {
            Some(sums) if self.open < self.per_bucket => {
                sums.iter_mut().zip(v).for_each(|(s, x)| *s += x as f32);
                self.open += 1;
            }
            _ => {
                self.buckets.push_back(v.map(|x| x as f32));
                self.open = 1;
            }
        }
        self.totals.iter_mut().zip(v).for_each(|(t, x)| *t += x);
        if self.buckets.len() > self.max_buckets && self.buckets.pop_front().is_some() {
            self.totals = [0.0; N];
            for sums in &self.buckets {
                self.totals
                    .iter_mut()
                    .zip(sums)
                    .for_each(|(t, &x)| *t += f64::from(x));
            }
        }
    }

    /// Sums of the window.
    pub fn totals(&self) -> [f64; N] {
        self.totals
    }

    /// Observations in the window.
    pub fn count(&self) -> usize {
        // Every bucket but the newest is full.
        self.buckets.len().saturating_sub(1) * self.per_bucket as usize
            + if self.buckets.is_empty() {
                0
            } else {
                self.open as usize
            }
    }

    /// Everything, as plain data (for snapshots).
    pub fn to_saved(&self) -> SavedSums {
        SavedSums {
            sums: self.buckets.iter().flatten().copied().collect(),
            open: self.open,
            per_bucket: self.per_bucket,
            max_buckets: self.max_buckets,
            totals: self.totals.to_vec(),
        }
    }

    /// The sums saved by [`SlidingSums::to_saved`], for a window shaped like `like`; `None`
    /// when they have another width or shape, or are not finite.
    pub fn from_saved(s: SavedSums, like: &Self) -> Option<Self> {
        let n_buckets = s.sums.len() / N.max(1);
        if s.per_bucket != like.per_bucket
            || s.max_buckets != like.max_buckets
            || s.sums.len() != n_buckets * N
            || n_buckets > like.max_buckets
            // The newest bucket holds 1..=per_bucket pushes; an empty window, none.
            || (n_buckets == 0) != (s.open == 0)
            || s.open > like.per_bucket
            || s.sums.iter().any(|x| !x.is_finite())
        {
            return None;
        }
        let totals = <[f64; N]>::try_from(s.totals).ok()?;
        if totals.iter().any(|x| !x.is_finite()) {
            return None;
        }
        let mut buckets = std::collections::VecDeque::with_capacity(like.max_buckets + 1);
        for chunk in s.sums.chunks_exact(N.max(1)) {
            buckets.push_back(<[f32; N]>::try_from(chunk).ok()?);
        }
        Some(Self {
            buckets,
            open: s.open,
            per_bucket: like.per_bucket,
            max_buckets: like.max_buckets,
            totals,
        })
    }
}

/// [`SlidingSums`] as plain data: the buckets' sums end to end (every bucket but the newest
/// is full, so no counts), a few bytes per bucket in `models.bin`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct SavedSums {
    sums: Vec<f32>,
    open: u32,
    per_bucket: u32,
    max_buckets: usize,
    totals: Vec<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_sums_forget_old_buckets_and_stay_small() {
        let mut s = SlidingSums::<2>::new(640);
        for i in 0..10_000 {
            s.push([1.0, i as f64]);
        }
        // 64 buckets of 10: the window holds 640 observations.
        assert_eq!(s.count(), 640);
        assert_eq!(s.totals()[0], 640.0);
        let expected: f64 = (9360..10_000).map(|i| i as f64).sum();
        assert!((s.totals()[1] - expected).abs() < 1e-6);
        assert!(s.buckets.len() <= 64);
        let back = SlidingSums::<2>::from_saved(s.to_saved(), &SlidingSums::new(640)).unwrap();
        assert_eq!(back, s);
        let one = SlidingSums::<1>::new(640);
        assert!(
            SlidingSums::from_saved(s.to_saved(), &one).is_none(),
            "another width"
        );
        let other = SlidingSums::<2>::new(6400);
        assert!(
            SlidingSums::from_saved(s.to_saved(), &other).is_none(),
            "another window"
        );
    }

    #[test]
    fn sliding_sums_do_not_accumulate_rounding() {
        // 0.1 is not an f32: buckets round it. Once those pushes have left the window, the
        // totals are exactly what the buckets hold now (zero), not a remainder of the
        // rounding of every bucket that left.
        let mut s = SlidingSums::<1>::new(640);
        for _ in 0..100_000 {
            s.push([0.1]);
        }
        for _ in 0..700 {
            s.push([0.0]);
        }
        assert_eq!(s.totals(), [0.0]);
        assert_eq!(s.count(), 640);
    }

    #[test]
    fn saved_sums_that_do_not_fit_the_window_are_refused() {
        let mut s = SlidingSums::<2>::new(640);
        for _ in 0..35 {
            s.push([1.0, 2.0]);
        }
        let like = SlidingSums::<2>::new(640);
        let saved = s.to_saved();
        assert_eq!(SlidingSums::from_saved(saved.clone(), &like), Some(s));
        assert_eq!(
            SlidingSums::from_saved(SlidingSums::<2>::new(640).to_saved(), &like),
            Some(SlidingSums::new(640)),
            "an empty window"
        );
        type Damage = fn(&mut SavedSums);
        let cases: [(&str, Damage); 5] = [
            ("half a bucket", |s| {
                s.sums.pop();
            }),
            ("newest bucket empty", |s| s.open = 0),
            ("newest bucket overfull", |s| s.open = s.per_bucket + 1),
            ("not finite", |s| s.sums[0] = f32::NAN),
            ("totals of another width", |s| {
                s.totals.pop();
            }),
        ];
        for (what, damage) in cases {
            let mut bad = saved.clone();
            damage(&mut bad);
            assert!(SlidingSums::from_saved(bad, &like).is_none(), "{what}");
        }
    }
}
