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
