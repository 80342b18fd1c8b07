//! The predictive policy: replicas for the upper quantile of demand over the lead window.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::domain::{Decision, Forecast, Reason, Term, Timestamp};

use super::hpa::ceil_u32;
use super::{Observation, ScalingPolicy};

/// Settings of the predictive policy for one workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Demand one ready replica serves (same unit as the demand query).
    pub capacity: f64,
    /// Utilisation the upper-quantile forecast may reach, as a fraction of capacity. The
    /// quantile already carries the headroom, so this defaults to 1.0.
    pub target_utilization: f64,
    /// Utilisation used while no forecast is available yet (warm-up): like an HPA target.
    pub reactive_utilization: f64,
    /// Reactive floor: never plan for less than current demand at this utilisation.
    pub floor_utilization: f64,
    /// Lowest replica count ever asked for.
    pub min_replicas: u32,
    /// Highest replica count ever asked for.
    pub max_replicas: u32,
    /// Seconds from asking for a pod to it serving (the lead time).
    pub startup_seconds: u64,
    /// Seconds between decisions.
    pub period_seconds: u64,
    /// A scale-down goes no lower than the highest recommendation of this many past seconds.
    pub scale_down_stabilization_seconds: u64,
    /// Most replicas added by one decision (`None`: unlimited).
    pub max_step_up: Option<u32>,
    /// Most replicas removed by one decision (`None`: unlimited).
    pub max_step_down: Option<u32>,
}

/// A policy setting that cannot work.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PolicyConfigError {
    /// A field is out of range.
    #[error("{field}: {message}")]
    Invalid {
        /// The field name as written in config.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl PolicyConfig {
    /// Defaults for everything but capacity, bounds and timing.
    pub fn new(
        capacity: f64,
        min_replicas: u32,
        max_replicas: u32,
        startup: u64,
        period: u64,
    ) -> Self {
        Self {
            capacity,
            target_utilization: 1.0,
            reactive_utilization: 0.7,
            floor_utilization: 1.0,
            min_replicas,
            max_replicas,
            startup_seconds: startup,
            period_seconds: period,
            scale_down_stabilization_seconds: 300,
            max_step_up: None,
            max_step_down: None,
        }
    }

    /// Checks every field once.
    ///
    /// # Errors
    /// The first field that is out of range.
    pub fn validate(&self) -> Result<(), PolicyConfigError> {
        let bad = |field, message: &str| {
            Err(PolicyConfigError::Invalid {
                field,
                message: message.to_string(),
            })
        };
        if !(self.capacity.is_finite() && self.capacity > 0.0) {
            return bad("capacity", "must be a positive number");
        }
        for (field, u) in [
            ("target_utilization", self.target_utilization),
            ("reactive_utilization", self.reactive_utilization),
            ("floor_utilization", self.floor_utilization),
        ] {
            if !(u.is_finite() && u > 0.0 && u <= 2.0) {
                return bad(field, "must be in (0, 2]");
            }
        }
        if self.max_replicas == 0 {
            return bad("max_replicas", "must be at least 1");
        }
        if self.min_replicas > self.max_replicas {
            return bad("min_replicas", "must not exceed max_replicas");
        }
        if self.period_seconds == 0 {
            return bad("period_seconds", "must be positive");
        }
        if self.max_step_up == Some(0) || self.max_step_down == Some(0) {
            return bad(
                "max_step_up",
                "a step limit of 0 would freeze scaling; omit it instead",
            );
        }
        Ok(())
    }

    /// The lead window: startup plus one decision period, in seconds.
    pub fn lead_seconds(&self) -> u64 {
        self.startup_seconds + self.period_seconds
    }
}

/// The predictive policy for one workload.
#[derive(Debug, Clone)]
pub struct PredictivePolicy {
    cfg: PolicyConfig,
    /// Raw recommendations of the stabilisation window: (time, replicas).
    recent: VecDeque<(Timestamp, u32)>,
}

impl PredictivePolicy {
    /// A policy with validated settings.
    ///
    /// # Errors
    /// See [`PolicyConfig::validate`].
    pub fn new(cfg: PolicyConfig) -> Result<Self, PolicyConfigError> {
        cfg.validate()?;
        Ok(Self {
            cfg,
            recent: VecDeque::new(),
        })
    }

    /// The settings.
    pub fn config(&self) -> &PolicyConfig {
        &self.cfg
    }

    /// The highest upper-quantile (and point) demand over the lead window.
    fn window_peak(&self, f: &Forecast, now: Timestamp) -> Option<(f64, f64, Timestamp)> {
        // Rows from the next decision until a pod asked for at the next decision is ready.
        let end = now + (2 * self.cfg.period_seconds + self.cfg.startup_seconds) as i64;
        let mut best: Option<(f64, f64, Timestamp)> = None;
        for k in 0..f.upper.len() {
            let at = f.at(k);
            if at >= end && best.is_some() {
                break;
            }
            let (u, p) = (f.upper[k], f.point[k]);
            if !(u.is_finite() && p.is_finite()) {
                return None;
            }
            match best {
                Some((bu, bp, bat)) => {
                    best = Some((bu.max(u), bp.max(p), if u > bu { at } else { bat }))
                }
                None => best = Some((u, p, at)),
            }
        }
        best
    }
}

impl ScalingPolicy for PredictivePolicy {
    fn recommend(&mut self, obs: &Observation<'_>) -> Decision {
        let cfg = &self.cfg;
        let current = obs.current_replicas;
        let mut reason = Reason {
            term: Term::MissingData,
            forecast_peak: 0.0,
            forecast_peak_at: None,
            forecast_point_peak: 0.0,
            model: "none",
            quantile: 0.0,
            lead_seconds: cfg.lead_seconds(),
            raw_replicas: current,
        };
        let Some(demand) = obs.demand.filter(|d| d.is_finite() && *d >= 0.0) else {
            // Missing data never lowers replicas; it may still lift them to the minimum.
            let desired = current.clamp(cfg.min_replicas, cfg.max_replicas.max(current));
            return Decision {
                desired_replicas: desired.max(current),
                reason,
            };
        };
        let floor = ceil_u32(demand / (cfg.capacity * cfg.floor_utilization));
        let peak = obs
            .forecast
            .and_then(|f| self.window_peak(f, obs.now).map(|p| (f, p)));
        let (raw, confident) = match peak {
            Some((f, (upper, point, at))) => {
                reason.forecast_peak = upper;
                reason.forecast_point_peak = point;
                reason.forecast_peak_at = Some(at);
                reason.model = f.model;
                reason.quantile = f.quantile;
                let want = ceil_u32(upper / (cfg.capacity * cfg.target_utilization));
                if floor > want {
                    reason.term = Term::ReactiveFloor;
                    (floor, f.confident)
                } else {
                    reason.term = Term::Forecast;
                    (want, f.confident)
                }
            }
            None => {
                reason.term = Term::Reactive;
                let want = ceil_u32(demand / (cfg.capacity * cfg.reactive_utilization));
                // No forecast: HPA-like reactive scaling, scale-down stabilised below.
                (want.max(floor), true)
            }
        };
        reason.raw_replicas = raw;

        // Stabilise scale-down on the highest raw recommendation of the window.
        let cutoff = obs.now - cfg.scale_down_stabilization_seconds as i64;
        while self.recent.front().is_some_and(|&(t, _)| t <= cutoff) {
            self.recent.pop_front();
        }
        let stabilized = self.recent.iter().map(|&(_, r)| r).fold(raw, u32::max);
        self.recent.push_back((obs.now, raw));

        let mut desired = raw;
        if raw < current && !confident {
            desired = current;
            reason.term = Term::Stabilization;
        } else if raw < current {
            if stabilized > raw {
                desired = stabilized.min(current);
                reason.term = Term::Stabilization;
            }
            if let Some(step) = cfg.max_step_down
                && current - desired > step
            {
                desired = current - step;
                reason.term = Term::StepLimit;
            }
        } else if let Some(step) = cfg.max_step_up
            && desired - current > step
        {
            desired = current + step;
            reason.term = Term::StepLimit;
        }
        if desired < cfg.min_replicas {
            desired = cfg.min_replicas;
            reason.term = Term::MinReplicas;
        }
        if desired > cfg.max_replicas {
            desired = cfg.max_replicas;
            reason.term = Term::MaxReplicas;
        }
        Decision {
            desired_replicas: desired,
            reason,
        }
    }
}
