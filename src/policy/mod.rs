//! Scaling policies: forecast and current state in, desired replicas and the reason out.
//!
//! Pure and synchronous: no clocks (the caller passes `now`), no I/O. The same code runs in
//! `prescale replay` and in the live loop.

mod hpa;
mod pods;
mod predictive;
mod tuner;

pub use hpa::{HpaConfig, HpaPolicy};
pub use pods::{Pods, unserved};
pub use predictive::{
    Headroom, MAX_DURATION_SECONDS, PolicyConfig, PolicyConfigError, PolicyState,
    PolicyStateMismatch, PredictivePolicy,
};

use crate::domain::{Decision, Forecast, Timestamp};

/// What a policy sees when it decides.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    /// Decision time (the timestamp of the latest sample in replay).
    pub now: Timestamp,
    /// Latest demand; `None` when it is missing, stale or invalid.
    pub demand: Option<f64>,
    /// Replicas the workload has now (spec), starting pods included.
    pub current_replicas: u32,
    /// Replicas that are ready and serving.
    pub ready_replicas: u32,
    /// The latest calibrated forecast; `None` while warming up or when forecasting failed.
    pub forecast: Option<&'a Forecast>,
}

/// Turns an observation into desired replicas.
///
/// Deterministic: the same sequence of observations gives the same decisions. A policy may keep
/// memory of its own past recommendations (stabilisation windows), which is why it takes `&mut`.
pub trait ScalingPolicy: Send {
    /// Decide the desired replicas for the next decision period.
    fn recommend(&mut self, obs: &Observation<'_>) -> Decision;
}

/// The fewest replicas of `capacity` each that serve `demand` in full.
pub fn replicas_for(demand: f64, capacity: f64) -> u32 {
    hpa::replicas_for(demand, capacity)
}
