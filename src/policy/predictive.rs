//! The predictive policy: replicas for the upper quantile of demand over the lead window.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::domain::{BAND_LEVELS, Decision, Forecast, Reason, Term, Timestamp};

use super::hpa::{HpaConfig, HpaPolicy, replicas_for};
use super::tuner::{Rung, Tuner, TunerState};
use super::{Observation, ScalingPolicy};

/// How much headroom above the point forecast the policy provisions for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Headroom {
    /// The forecast's calibrated upper quantile (the model preset's `quantile`).
    Quantile,
    /// Per workload, the cheapest headroom that would have been at least as reliable as the
    /// Kubernetes HPA (at `hpa_target_utilization`) over `tuning_window_seconds`, judged by
    /// replaying both on the workload's own recent demand with the pod startup physics.
    HpaParity,
}

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
    /// Reactive floor utilisation right after a surprise (demand above the forecast's highest
    /// band).
    pub surprise_floor_utilization: f64,
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
    /// Headroom rule.
    pub headroom: Headroom,
    /// Recent history the `hpa_parity` headroom rule compares over, seconds.
    pub tuning_window_seconds: u64,
    /// Target utilisation of the HPA the `hpa_parity` rule compares against.
    pub hpa_target_utilization: f64,
}

/// Longest startup, decision period or stabilisation window a policy accepts: 1 day.
pub const MAX_DURATION_SECONDS: u64 = 86_400;

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
    /// The HPA this policy is measured against (`hpa_target_utilization`, the same bounds
    /// and period), fresh.
    pub fn hpa(&self) -> HpaPolicy {
        HpaPolicy::new(
            HpaConfig {
                target_utilization: self.hpa_target_utilization,
                ..HpaConfig::new(self.capacity, self.min_replicas, self.max_replicas)
            },
            self.period_seconds,
        )
    }

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
            surprise_floor_utilization: 0.7,
            min_replicas,
            max_replicas,
            startup_seconds: startup,
            period_seconds: period,
            scale_down_stabilization_seconds: 300,
            max_step_up: None,
            max_step_down: None,
            headroom: Headroom::HpaParity,
            tuning_window_seconds: 7 * 86_400,
            hpa_target_utilization: 0.7,
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
            ("hpa_target_utilization", self.hpa_target_utilization),
            ("target_utilization", self.target_utilization),
            ("reactive_utilization", self.reactive_utilization),
            ("floor_utilization", self.floor_utilization),
            (
                "surprise_floor_utilization",
                self.surprise_floor_utilization,
            ),
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
        // Bounds far past any real workload keep the timestamp arithmetic of the lead window,
        // the pods' ready times and the tuner's window (rows it holds) in range.
        for (field, secs) in [
            ("startup_seconds", self.startup_seconds),
            ("period_seconds", self.period_seconds),
            (
                "scale_down_stabilization_seconds",
                self.scale_down_stabilization_seconds,
            ),
        ] {
            if secs > MAX_DURATION_SECONDS {
                return bad(field, "must be at most 1 day (86400 s)");
            }
        }
        if self.tuning_window_seconds > 90 * 86_400 {
            return bad("tuning_window_seconds", "must be at most 90 days");
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

/// What a [`PredictivePolicy`] remembers between decisions, as plain data (for
/// `models.bin`): its stabilisation window and the headroom tuner's shadow replays, so that
/// a restarted service decides as one that never stopped, instead of reacting until the
/// shadows have scored their decisions again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyState {
    /// The settings the state was made with (`None` in the tuner's shadows, whose settings
    /// follow from their policy's): replica counts and shadow scores mean something only at
    /// the capacity, lead time and targets they were counted with.
    settings: Option<PolicyConfig>,
    recent: Vec<(Timestamp, u32)>,
    /// Boxed: the tuner's state holds its shadows' states, of this type.
    tuner: Option<Box<TunerState>>,
}

/// A saved [`PolicyState`] that does not fit the policy as configured now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("saved policy state does not fit: {0}")]
pub struct PolicyStateMismatch(pub &'static str);

/// The predictive policy for one workload.
#[derive(Debug, Clone)]
pub struct PredictivePolicy {
    cfg: PolicyConfig,
    /// Raw recommendations of the stabilisation window: (time, replicas).
    recent: VecDeque<(Timestamp, u32)>,
    /// The headroom this policy provisions for when it is not tuned (shadows, `quantile`).
    fixed: Option<Rung>,
    /// The `hpa_parity` tuner (boxed: it holds shadow policies of this type).
    tuner: Option<Box<Tuner>>,
    /// The next decision is the first of a policy made fresh, or of one restored from a
    /// state older than the decisions made since (a kill -9 after the last save, a long
    /// stop): what the window held just before is not known, so the replicas in place stand
    /// for it, as the HPA's window starts.
    first: bool,
}

impl PredictivePolicy {
    /// A policy with validated settings.
    ///
    /// # Errors
    /// See [`PolicyConfig::validate`].
    pub fn new(cfg: PolicyConfig) -> Result<Self, PolicyConfigError> {
        cfg.validate()?;
        let tuner = (cfg.headroom == Headroom::HpaParity).then(|| Box::new(Tuner::new(&cfg)));
        Ok(Self {
            cfg,
            recent: VecDeque::new(),
            fixed: None,
            tuner,
            first: true,
        })
    }

    /// A policy that always provisions for `rung` (the tuner's shadows).
    pub(super) fn with_rung(cfg: PolicyConfig, rung: Rung) -> Self {
        Self {
            cfg,
            recent: VecDeque::new(),
            fixed: Some(rung),
            tuner: None,
            // A shadow replays its own replicas from the trace; nothing of it was lost.
            first: false,
        }
    }

    /// The settings.
    pub fn config(&self) -> &PolicyConfig {
        &self.cfg
    }

    /// Everything the policy remembers, as plain data.
    pub fn state(&self) -> PolicyState {
        PolicyState {
            settings: Some(self.cfg.clone()),
            ..self.memory()
        }
    }

    /// What a tuner's shadow saves: its memory without the settings.
    pub(super) fn memory(&self) -> PolicyState {
        PolicyState {
            settings: None,
            recent: self.recent.iter().copied().collect(),
            tuner: self.tuner.as_ref().map(|t| Box::new(t.state())),
        }
    }

    /// Takes up a state saved by [`PredictivePolicy::state`]. A state from other settings
    /// (capacity, lead time, targets, headroom rule, tuning window, any field of
    /// [`PolicyConfig`]) is refused and the policy is left as it was.
    ///
    /// # Errors
    /// [`PolicyStateMismatch`] naming what changed.
    pub fn restore(&mut self, s: PolicyState) -> Result<(), PolicyStateMismatch> {
        if s.settings.as_ref().is_some_and(|saved| *saved != self.cfg) {
            return Err(PolicyStateMismatch("policy settings changed"));
        }
        let tuner = match (self.tuner.as_deref(), s.tuner) {
            (Some(t), Some(saved)) => Some(Box::new(t.restored(*saved)?)),
            (None, None) => None,
            _ => return Err(PolicyStateMismatch("headroom rule changed")),
        };
        if !s.recent.windows(2).all(|w| w[0].0 <= w[1].0) {
            return Err(PolicyStateMismatch("stabilisation window out of order"));
        }
        self.recent = s.recent.into();
        self.tuner = tuner;
        // Exactly where it stopped, unless told of a gap (`resume_after_gap`).
        self.first = false;
        Ok(())
    }

    /// Says that decisions were made (or held) since the restored state was saved: the next
    /// decision's stabilisation window starts with the replicas then in place, so that a
    /// scale-down the lost window would have held is held.
    pub fn resume_after_gap(&mut self) {
        self.first = self.fixed.is_none();
    }

    /// Lets the headroom tuner's shadow replays score a past step (the tail of a backfill,
    /// replayed at a cold start), so that it can choose from the first live decision. The
    /// policy's own decisions and stabilisation window are not touched.
    pub fn warm(&mut self, obs: &Observation<'_>) {
        if let Some(t) = self.tuner.as_mut() {
            t.step(obs);
        }
    }

    /// The highest provisioned (and point) demand over the lead window for `rung`, or for the
    /// forecast's calibrated upper quantile when `rung` is `None`.
    fn window_peak(
        &self,
        f: &Forecast,
        now: Timestamp,
        rung: Option<Rung>,
    ) -> Option<(f64, f64, Timestamp)> {
        let (values, scale) = match rung {
            Some(Rung::Band(i)) => (f.bands.get(i).map_or(&f.upper, |b| &b.values), 1.0),
            Some(Rung::Scaled(m)) => (f.bands.last().map_or(&f.upper, |b| &b.values), m),
            None => (&f.upper, 1.0),
        };
        // Rows from the next decision until a pod asked for at the next decision is ready.
        let end = now + (2 * self.cfg.period_seconds + self.cfg.startup_seconds) as i64;
        let mut best: Option<(f64, f64, Timestamp)> = None;
        for (k, (&v, &p)) in values.iter().zip(&f.point).enumerate() {
            let at = f.at(k);
            if at >= end && best.is_some() {
                break;
            }
            if !(v.is_finite() && p.is_finite()) {
                return None;
            }
            let u = v * scale;
            best = match best {
                Some((bu, bp, bat)) => Some((bu.max(u), bp.max(p), if u > bu { at } else { bat })),
                None => Some((u, p, at)),
            };
        }
        best
    }
}

impl ScalingPolicy for PredictivePolicy {
    fn recommend(&mut self, obs: &Observation<'_>) -> Decision {
        // Until the shadow replays have scored enough decisions, no headroom has shown itself
        // as reliable as the HPA on this workload: decide as the reactive policy does.
        let (rung, tuned) = match self.tuner.as_mut() {
            Some(t) => {
                t.step(obs);
                let r = t.choose();
                (r, r.is_some())
            }
            None => (self.fixed, true),
        };
        let forecast = obs.forecast.filter(|_| tuned);
        let cfg = &self.cfg;
        let current = obs.current_replicas;
        let mut reason = Reason {
            term: Term::MissingData,
            forecast_peak: 0.0,
            forecast_peak_at: None,
            forecast_point_peak: 0.0,
            model: "none",
            quantile: 0.0,
            headroom_scale: 1.0,
            lead_seconds: cfg.lead_seconds(),
            raw_replicas: current,
        };
        let cutoff = obs.now - cfg.scale_down_stabilization_seconds as i64;
        while self.recent.front().is_some_and(|&(t, _)| t <= cutoff) {
            self.recent.pop_front();
        }
        // (Without a window there is nothing to stand for.)
        if std::mem::take(&mut self.first) && cfg.scale_down_stabilization_seconds > 0 {
            self.recent.push_back((obs.now, current));
        }
        let Some(demand) = obs.demand.filter(|d| d.is_finite() && *d >= 0.0) else {
            // Missing data never lowers replicas; it may still lift them to the minimum. The
            // replicas held stay in the window: the first sample after an outage longer
            // than the window must not drop them at once.
            let desired = current.max(cfg.min_replicas);
            self.recent.push_back((obs.now, desired));
            return Decision {
                desired_replicas: desired,
                reason,
            };
        };
        // Right after a surprise the models lag the new level: keep HPA-like headroom on
        // current demand until they catch up.
        let floor_utilization = if forecast.is_some_and(|f| f.surprise) {
            cfg.floor_utilization.min(cfg.surprise_floor_utilization)
        } else {
            cfg.floor_utilization
        };
        let floor = replicas_for(demand, cfg.capacity * floor_utilization);
        let peak = forecast.and_then(|f| self.window_peak(f, obs.now, rung).map(|p| (f, p)));
        let (raw, confident) = match peak {
            Some((f, (upper, point, at))) => {
                reason.forecast_peak = upper;
                reason.forecast_point_peak = point;
                reason.forecast_peak_at = Some(at);
                reason.model = f.model;
                (reason.quantile, reason.headroom_scale) = match rung {
                    Some(Rung::Band(i)) => (BAND_LEVELS.get(i).copied().unwrap_or(f.quantile), 1.0),
                    Some(Rung::Scaled(m)) => (BAND_LEVELS[BAND_LEVELS.len() - 1], m),
                    None => (f.quantile, 1.0),
                };
                let want = replicas_for(upper, cfg.capacity * cfg.target_utilization);
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
                let want = replicas_for(demand, cfg.capacity * cfg.reactive_utilization);
                // No forecast: HPA-like reactive scaling, scale-down stabilised below.
                (want.max(floor), true)
            }
        };
        reason.raw_replicas = raw;

        // Stabilise scale-down on the highest raw recommendation of the window.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Band;

    fn forecast(origin: Timestamp, point: f64, upper: f64) -> Forecast {
        Forecast {
            origin,
            step: 60,
            point: vec![point; 5],
            upper: vec![upper; 5],
            quantile: 0.9,
            bands: Vec::new(),
            model: "linear",
            demoted: false,
            confident: true,
            surprise: false,
        }
    }

    fn policy() -> PredictivePolicy {
        let mut cfg = PolicyConfig::new(10.0, 2, 30, 120, 60);
        cfg.scale_down_stabilization_seconds = 0;
        cfg.headroom = Headroom::Quantile;
        PredictivePolicy::new(cfg).unwrap()
    }

    fn obs(f: Option<&Forecast>, demand: Option<f64>, current: u32) -> Observation<'_> {
        Observation {
            now: 0,
            demand,
            current_replicas: current,
            ready_replicas: current,
            forecast: f,
        }
    }

    use crate::testutil::uniform as lcg;

    #[test]
    fn desired_stays_within_min_and_max_whatever_the_inputs() {
        let mut s = 1;
        for _ in 0..5000 {
            let mut p = policy();
            let upper = lcg(&mut s) * 1000.0;
            let f = forecast(0, upper * lcg(&mut s), upper);
            let demand = (lcg(&mut s) < 0.9).then(|| lcg(&mut s) * 800.0);
            let current = (lcg(&mut s) * 40.0) as u32;
            let with_forecast = lcg(&mut s) < 0.8;
            let d = p.recommend(&obs(with_forecast.then_some(&f), demand, current));
            let (min, max) = (2, 30);
            if demand.is_some() {
                assert!((min..=max).contains(&d.desired_replicas), "{d:?}");
            } else {
                // Missing data holds: never lower than now, never above max unless already.
                assert!(d.desired_replicas >= current, "{d:?}");
                assert!(d.desired_replicas <= max.max(current), "{d:?}");
            }
        }
    }

    #[test]
    fn missing_data_never_lowers_replicas() {
        for current in [0, 1, 5, 29, 30, 45] {
            let mut p = policy();
            let low = forecast(0, 0.0, 0.0);
            let d = p.recommend(&obs(Some(&low), None, current));
            assert!(d.desired_replicas >= current, "{current} -> {d:?}");
            assert_eq!(d.reason.term, Term::MissingData);
        }
    }

    #[test]
    fn desired_does_not_fall_when_the_forecast_rises() {
        let mut s = 7;
        for _ in 0..2000 {
            let demand = lcg(&mut s) * 200.0;
            let current = 2 + (lcg(&mut s) * 20.0) as u32;
            let u1 = lcg(&mut s) * 300.0;
            let u2 = u1 + lcg(&mut s) * 100.0;
            let (f1, f2) = (forecast(0, u1 * 0.8, u1), forecast(0, u2 * 0.8, u2));
            let d1 = policy().recommend(&obs(Some(&f1), Some(demand), current));
            let d2 = policy().recommend(&obs(Some(&f2), Some(demand), current));
            assert!(
                d2.desired_replicas >= d1.desired_replicas,
                "{u1} -> {d1:?}, {u2} -> {d2:?}"
            );
        }
    }

    /// A forecast carrying every band of [`BAND_LEVELS`], spread between `point` and a bit
    /// above `upper`, as the engine's forecasts do.
    fn banded(origin: Timestamp, point: f64, upper: f64) -> Forecast {
        let mut f = forecast(origin, point, upper);
        f.bands = BAND_LEVELS
            .iter()
            .map(|&level| Band {
                level,
                values: vec![point + (upper - point) * (level - 0.5) / 0.4; 5],
            })
            .collect();
        f
    }

    #[test]
    fn under_hpa_parity_desired_does_not_fall_when_the_forecast_rises() {
        // The default headroom rule: the tuner's choice reads only the shadows' past scores,
        // so from one remembered state a higher forecast never asks for fewer replicas.
        let mut tuned_rungs = std::collections::BTreeSet::new();
        let mut raised = 0;
        // Forecasts well above, close to and below the demand they precede.
        for (seed, low, spread) in [(3_u64, 1.0, 1.0), (5, 0.9, 0.2), (9, 0.5, 0.3)] {
            let mut p = PredictivePolicy::new(PolicyConfig::new(10.0, 1, 200, 120, 60)).unwrap();
            let mut s = seed;
            let mut current = 5;
            let rows = super::super::tuner::MIN_ROWS as i64 + 60;
            for i in 0..rows {
                let demand = 40.0 + 160.0 * lcg(&mut s).powi(3);
                let f = banded(
                    i * 60,
                    demand * low * 0.9,
                    demand * (low + spread * lcg(&mut s)),
                );
                current = p
                    .recommend(&Observation {
                        now: i * 60,
                        ..obs(Some(&f), Some(demand), current)
                    })
                    .desired_replicas;
            }
            for _ in 0..500 {
                let demand = lcg(&mut s) * 200.0;
                let now_replicas = 1 + (lcg(&mut s) * 40.0) as u32;
                let u1 = lcg(&mut s) * 300.0;
                let u2 = u1 + lcg(&mut s) * 100.0;
                let decide = |u: f64| {
                    p.clone().recommend(&Observation {
                        now: rows * 60,
                        ..obs(
                            Some(&banded(rows * 60, u * 0.8, u)),
                            Some(demand),
                            now_replicas,
                        )
                    })
                };
                let (d1, d2) = (decide(u1), decide(u2));
                assert!(
                    d2.desired_replicas >= d1.desired_replicas,
                    "seed {seed}: {u1} -> {d1:?}, {u2} -> {d2:?}"
                );
                // The tuner has chosen: the decision read a forecast band.
                assert!(d1.reason.forecast_peak_at.is_some(), "{d1:?}");
                assert!(d1.reason.quantile > 0.0, "{d1:?}");
                tuned_rungs.insert((
                    d1.reason.quantile.to_bits(),
                    d1.reason.headroom_scale.to_bits(),
                ));
                raised += usize::from(d2.desired_replicas > d1.desired_replicas);
            }
        }
        // Not vacuous: the higher forecasts did ask for more, and the seeds tuned differently.
        assert!(raised > 100, "{raised}");
        assert!(tuned_rungs.len() >= 3, "{tuned_rungs:?}");
    }

    #[test]
    fn the_lead_window_peak_decides_and_is_reported() {
        let mut p = policy();
        let mut f = forecast(0, 50.0, 60.0);
        // Steps at 60, 120, 180 are inside the window (2 periods + startup = 240 s); 240 is not.
        f.upper = vec![60.0, 60.0, 95.0, 400.0, 400.0];
        let d = p.recommend(&obs(Some(&f), Some(50.0), 5));
        assert_eq!(d.desired_replicas, 10);
        assert_eq!(d.reason.term, Term::Forecast);
        assert_eq!(d.reason.forecast_peak, 95.0);
        assert_eq!(d.reason.forecast_peak_at, Some(180));
        assert_eq!(d.reason.lead_seconds, 180);
    }

    #[test]
    fn hpa_parity_reacts_until_its_shadows_have_scored_enough_decisions() {
        // A forecast band far above demand (as persistence gives on intermittent demand):
        // it must not be provisioned for before the shadow replays have judged it.
        let mut p = PredictivePolicy::new(PolicyConfig::new(10.0, 1, 200, 120, 60)).unwrap();
        let mut current = 15;
        for i in 0..super::super::tuner::MIN_ROWS + 5 {
            let f = forecast(i as i64 * 60, 100.0, 1000.0);
            let d = p.recommend(&Observation {
                now: i as i64 * 60,
                ..obs(Some(&f), Some(100.0), current)
            });
            if i + 1 < super::super::tuner::MIN_ROWS {
                // 100 at 70% of capacity 10, as the HPA would.
                assert_eq!(d.reason.term, Term::Reactive, "row {i}");
                assert_eq!(d.desired_replicas, 15, "row {i}");
            } else {
                assert_eq!(d.reason.term, Term::Forecast, "row {i}");
            }
            current = d.desired_replicas;
        }
        assert_eq!(current, 100);
    }

    #[test]
    fn a_restored_state_decides_as_the_policy_that_never_stopped() {
        let cfg = PolicyConfig::new(10.0, 1, 200, 120, 60);
        let mut a = PredictivePolicy::new(cfg.clone()).unwrap();
        let mut s = 11_u64;
        let mut current = 5;
        let step = |p: &mut PredictivePolicy, i: i64, s: &mut u64, current: u32| {
            // Bursty demand, so shadows scale both ways and keep pods starting.
            let demand = 50.0 + 150.0 * lcg(s).powi(3);
            let f = forecast(i * 60, demand * 0.9, demand * 1.3);
            p.recommend(&Observation {
                now: i * 60,
                ..obs(Some(&f), Some(demand), current)
            })
        };
        for i in 0..400 {
            current = step(&mut a, i, &mut s, current).desired_replicas;
        }
        let saved = a.state();
        let mut b = PredictivePolicy::new(cfg.clone()).unwrap();
        b.restore(saved.clone()).unwrap();
        assert_eq!(b.state(), saved);
        for i in 400..700 {
            let mut s2 = s;
            let da = step(&mut a, i, &mut s, current);
            let db = step(&mut b, i, &mut s2, current);
            assert_eq!(da, db, "decision {i}");
            current = da.desired_replicas;
        }
        // Other settings refuse the state and leave the policy fresh.
        let refused = |cfg: PolicyConfig, what: &str| {
            let mut c = PredictivePolicy::new(cfg).unwrap();
            let fresh = c.state();
            assert!(c.restore(saved.clone()).is_err(), "{what}");
            assert_eq!(c.state(), fresh, "{what}");
        };
        refused(
            PolicyConfig {
                headroom: Headroom::Quantile,
                ..cfg.clone()
            },
            "another headroom rule",
        );
        refused(
            PolicyConfig {
                tuning_window_seconds: cfg.tuning_window_seconds * 2,
                ..cfg.clone()
            },
            "another tuning window",
        );
        // Replica counts and shadow scores were counted at the old capacity.
        refused(
            PolicyConfig {
                capacity: cfg.capacity * 2.0,
                ..cfg.clone()
            },
            "another capacity per replica",
        );
        refused(
            PolicyConfig {
                startup_seconds: cfg.startup_seconds + 60,
                ..cfg
            },
            "another startup time",
        );
    }

    #[test]
    fn current_demand_is_a_floor_under_a_low_forecast() {
        let mut p = policy();
        let f = forecast(0, 10.0, 20.0);
        let d = p.recommend(&obs(Some(&f), Some(120.0), 5));
        assert_eq!(d.desired_replicas, 12);
        assert_eq!(d.reason.term, Term::ReactiveFloor);
    }

    #[test]
    fn after_a_surprise_the_floor_keeps_hpa_like_headroom() {
        let mut p = policy();
        let mut f = forecast(0, 10.0, 20.0);
        assert_eq!(
            p.recommend(&obs(Some(&f), Some(70.0), 5)).desired_replicas,
            7
        );
        f.surprise = true;
        // 70 at 70% utilisation of capacity 10: 10 replicas.
        let d = p.recommend(&obs(Some(&f), Some(70.0), 5));
        assert_eq!(d.desired_replicas, 10);
        assert_eq!(d.reason.term, Term::ReactiveFloor);
    }

    #[test]
    fn an_unconfident_forecast_does_not_scale_down() {
        let mut p = policy();
        let mut f = forecast(0, 10.0, 20.0);
        f.confident = false;
        let d = p.recommend(&obs(Some(&f), Some(10.0), 20));
        assert_eq!(d.desired_replicas, 20);
        assert_eq!(d.reason.term, Term::Stabilization);
    }

    #[test]
    fn scale_down_is_stabilised_over_the_window() {
        let mut cfg = PolicyConfig::new(10.0, 1, 30, 120, 60);
        cfg.scale_down_stabilization_seconds = 300;
        cfg.headroom = Headroom::Quantile;
        let mut p = PredictivePolicy::new(cfg).unwrap();
        let high = forecast(0, 150.0, 200.0);
        let low = forecast(60, 10.0, 20.0);
        assert_eq!(
            p.recommend(&obs(Some(&high), Some(150.0), 5))
                .desired_replicas,
            20
        );
        let d = p.recommend(&Observation {
            now: 60,
            ..obs(Some(&low), Some(10.0), 20)
        });
        assert_eq!(d.desired_replicas, 20, "held by the 300 s window");
        let d = p.recommend(&Observation {
            now: 400,
            ..obs(Some(&low), Some(10.0), 20)
        });
        assert_eq!(d.desired_replicas, 2, "window passed");
    }

    /// A policy whose 300 s window is set, warmed at 20 replicas on high demand.
    fn windowed_at_20() -> PredictivePolicy {
        let mut cfg = PolicyConfig::new(10.0, 1, 30, 120, 60);
        cfg.scale_down_stabilization_seconds = 300;
        cfg.headroom = Headroom::Quantile;
        let mut p = PredictivePolicy::new(cfg).unwrap();
        let high = forecast(0, 150.0, 200.0);
        for t in [0, 60] {
            let d = p.recommend(&Observation {
                now: t,
                ..obs(Some(&high), Some(150.0), 20)
            });
            assert_eq!(d.desired_replicas, 20);
        }
        p
    }

    #[test]
    fn the_first_sample_after_an_outage_longer_than_the_window_does_not_drop_replicas() {
        let mut p = windowed_at_20();
        // Ten minutes without data (longer than the window), then a low sample.
        for t in (120..=720).step_by(60) {
            let d = p.recommend(&Observation {
                now: t,
                ..obs(None, None, 20)
            });
            assert_eq!(d.desired_replicas, 20, "held at {t}");
        }
        let low = forecast(780, 10.0, 20.0);
        let d = p.recommend(&Observation {
            now: 780,
            ..obs(Some(&low), Some(10.0), 20)
        });
        assert_eq!(d.desired_replicas, 20, "{d:?}");
        assert_eq!(d.reason.term, Term::Stabilization);
        // A window after the data came back, it goes down.
        let d = p.recommend(&Observation {
            now: 780 + 300,
            ..obs(Some(&low), Some(10.0), 20)
        });
        assert_eq!(d.desired_replicas, 2, "{d:?}");
    }

    #[test]
    fn a_fresh_or_gap_restored_policy_starts_its_window_at_the_replicas_in_place() {
        let low = |t| forecast(t, 10.0, 20.0);
        let decide = |p: &mut PredictivePolicy, t: i64| {
            let f = low(t);
            p.recommend(&Observation {
                now: t,
                ..obs(Some(&f), Some(10.0), 20)
            })
            .desired_replicas
        };
        // Made fresh: nothing is known of the window, the 20 in place stand for it.
        let mut fresh = windowed_at_20();
        fresh.first = true;
        fresh.recent.clear();
        assert_eq!(decide(&mut fresh, 2000), 20);
        assert_eq!(decide(&mut fresh, 2400), 2, "a window later");
        // Restored from a state saved long ago (its window has passed): told of the gap,
        // it holds as fresh; restored at once, it decides as the policy that saved it.
        let saved = windowed_at_20().state();
        let mut gap = windowed_at_20();
        gap.restore(saved.clone()).unwrap();
        gap.resume_after_gap();
        assert_eq!(decide(&mut gap, 2000), 20);
        let mut at_once = windowed_at_20();
        at_once.restore(saved).unwrap();
        let mut never_stopped = windowed_at_20();
        assert_eq!(decide(&mut at_once, 2000), decide(&mut never_stopped, 2000));
        assert_eq!(decide(&mut at_once, 2000), 2);
        // Without a window, a fresh policy's first decision may go down at once.
        let mut windowless = policy();
        assert!(decide(&mut windowless, 0) < 20);
    }

    #[test]
    fn invalid_settings_are_refused_by_field() {
        let mut cfg = PolicyConfig::new(10.0, 5, 3, 120, 60);
        assert!(
            PredictivePolicy::new(cfg.clone())
                .unwrap_err()
                .to_string()
                .contains("min_replicas")
        );
        cfg.min_replicas = 1;
        for (field, too_long) in [
            (
                "startup_seconds",
                PolicyConfig {
                    startup_seconds: u64::MAX,
                    ..cfg.clone()
                },
            ),
            (
                "period_seconds",
                PolicyConfig {
                    period_seconds: 86_401,
                    ..cfg.clone()
                },
            ),
            (
                "tuning_window_seconds",
                PolicyConfig {
                    tuning_window_seconds: 91 * 86_400,
                    ..cfg.clone()
                },
            ),
        ] {
            let err = PredictivePolicy::new(too_long).unwrap_err().to_string();
            assert!(err.starts_with(field), "{err}");
        }
        let day = PolicyConfig {
            startup_seconds: 86_400,
            ..cfg.clone()
        };
        assert!(PredictivePolicy::new(day).is_ok());
        cfg.capacity = 0.0;
        assert!(
            PredictivePolicy::new(cfg)
                .unwrap_err()
                .to_string()
                .contains("capacity")
        );
    }
}
