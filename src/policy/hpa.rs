//! The Kubernetes HPA algorithm (autoscaling/v2, no `behavior`): the reactive baseline.
//!
//! Follows the controller's rules for a pods metric with a utilisation target: tolerance band,
//! unready pods counted at 0% on scale-up, scale-down stabilisation over past recommendations,
//! and the legacy scale-up limit of max(2 × current, 4) per sync. Demand is the metric: ready
//! pods share it, each with `capacity` as its request.

use crate::domain::{Decision, Reason, Term, Timestamp};

use super::{Observation, ScalingPolicy};

/// What an [`HpaPolicy`] remembers between syncs, as plain data.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(super) struct HpaMemory {
    recommendations: Vec<(u32, Timestamp)>,
    seeded: bool,
}

/// HPA settings; defaults are the controller-manager's.
#[derive(Debug, Clone, PartialEq)]
pub struct HpaConfig {
    /// Demand one pod serves at 100% utilisation (its request).
    pub capacity: f64,
    /// Target utilisation as a fraction (0.7 = 70%).
    pub target_utilization: f64,
    /// Tolerance band around ratio 1.0 inside which nothing changes.
    pub tolerance: f64,
    /// Controller sync period, seconds.
    pub sync_period: u64,
    /// Downscale stabilisation window, seconds.
    pub downscale_stabilization: u64,
    /// `minReplicas`.
    pub min_replicas: u32,
    /// `maxReplicas`.
    pub max_replicas: u32,
}

impl HpaConfig {
    /// Defaults of the controller for the given capacity and bounds.
    pub fn new(capacity: f64, min_replicas: u32, max_replicas: u32) -> Self {
        Self {
            capacity,
            target_utilization: 0.7,
            tolerance: 0.1,
            sync_period: 15,
            downscale_stabilization: 300,
            min_replicas,
            max_replicas,
        }
    }
}

/// The HPA controller for one workload, with its recommendation memory.
#[derive(Debug, Clone)]
pub struct HpaPolicy {
    cfg: HpaConfig,
    /// (recommendation, time) pairs: the stabilisation memory.
    recommendations: Vec<(u32, Timestamp)>,
    seeded: bool,
    /// Length of a decision period: a decision runs the 15 s clock's syncs within it.
    period: u64,
}

impl HpaPolicy {
    /// A fresh controller; `period` is the decision period it runs syncs over.
    pub fn new(cfg: HpaConfig, period: u64) -> Self {
        Self {
            cfg,
            recommendations: Vec::new(),
            seeded: false,
            period: period.max(1),
        }
    }

    /// The controller's stabilisation memory, for a saved state.
    pub(super) fn memory(&self) -> HpaMemory {
        HpaMemory {
            recommendations: self.recommendations.clone(),
            seeded: self.seeded,
        }
    }

    /// Takes up a memory saved by [`HpaPolicy::memory`].
    pub(super) fn restore_memory(&mut self, m: HpaMemory) {
        self.recommendations = m.recommendations;
        self.seeded = m.seeded;
    }

    fn within_tolerance(&self, ratio: f64) -> bool {
        (1.0 - self.cfg.tolerance) <= ratio && ratio <= (1.0 + self.cfg.tolerance)
    }

    /// One controller sync. Returns the new `spec.replicas`.
    pub fn sync(&mut self, now: Timestamp, current: u32, ready: u32, demand: f64) -> u32 {
        let cfg = &self.cfg;
        if !self.seeded {
            self.recommendations.push((current, now));
            self.seeded = true;
        }
        if current == 0 && cfg.min_replicas != 0 {
            return current;
        }
        if current > cfg.max_replicas {
            return cfg.max_replicas;
        }
        if current < cfg.min_replicas {
            return cfg.min_replicas;
        }
        let ready = ready.min(current);
        let unready = current - ready;
        if ready == 0 {
            // No samples from ready pods: the metric errors and the HPA does not scale.
            return current;
        }
        let target_pct = cfg.target_utilization * 100.0;
        let util = (demand * 100.0 / (f64::from(ready) * cfg.capacity)).trunc();
        let ratio = util / target_pct;
        let proposal = if unready > 0 && ratio > 1.0 {
            // Unready pods are added back at 0% utilisation, which damps the scale-up.
            let all = f64::from(ready + unready);
            let util2 = (demand * 100.0 / (all * cfg.capacity)).trunc();
            let ratio2 = util2 / target_pct;
            if self.within_tolerance(ratio2) || ratio2 < 1.0 {
                current
            } else {
                let new = ceil_u32(ratio2 * all);
                if new < current { current } else { new }
            }
        } else if self.within_tolerance(ratio) {
            current
        } else {
            ceil_u32(ratio * f64::from(ready))
        };
        // Legacy normalisation: stabilise on the max of recent recommendations, then limit.
        let cutoff = now - self.cfg.downscale_stabilization as i64;
        self.recommendations.retain(|&(_, t)| t > cutoff);
        let stabilized = self
            .recommendations
            .iter()
            .map(|&(r, _)| r)
            .fold(proposal, u32::max);
        self.recommendations.push((proposal, now));
        let up_limit = (current.saturating_mul(2)).max(4);
        stabilized.clamp(
            self.cfg.min_replicas,
            self.cfg
                .max_replicas
                .min(up_limit)
                .max(self.cfg.min_replicas),
        )
    }
}

impl ScalingPolicy for HpaPolicy {
    fn recommend(&mut self, obs: &Observation<'_>) -> Decision {
        let mut replicas = obs.current_replicas;
        // The controller syncs on its own clock, every `sync_period` seconds: the syncs of this
        // decision period are those at multiples of it in [now, now + period). A period shorter
        // than a sync (10 s rows) then has a sync in two rows of three, not one in every row.
        // A row that comes sooner than a period after the last (jitter, a wall clock) starts
        // after the last sync the memory holds: no sync runs twice, which would double twice.
        // A last sync beyond this period is a clock that went back; it is not waited for.
        let every = self.cfg.sync_period.max(1) as i64;
        let end = obs.now.saturating_add(self.period as i64);
        let mut at = obs.now + (-obs.now).rem_euclid(every);
        if let Some(&(_, last)) = self.recommendations.last()
            && last < end
        {
            at = at.max(last - last.rem_euclid(every) + every);
        }
        while at < end {
            replicas = match obs.demand {
                Some(d) => self.sync(at, replicas, obs.ready_replicas, d),
                // A metric error: the HPA holds.
                None => replicas,
            };
            at += every;
        }
        let term = if obs.demand.is_none() {
            Term::MissingData
        } else {
            Term::Reactive
        };
        Decision {
            desired_replicas: replicas,
            reason: Reason {
                term,
                forecast_peak: 0.0,
                forecast_peak_at: None,
                forecast_point_peak: 0.0,
                model: "hpa",
                quantile: 0.0,
                headroom_scale: 1.0,
                lead_seconds: 0,
                raw_replicas: replicas,
            },
        }
    }
}

/// `ceil` for a non-negative ratio, saturating, with a small tolerance so that 3.0000000001
/// (float noise) stays 3.
pub(crate) fn ceil_u32(x: f64) -> u32 {
    if !x.is_finite() || x <= 0.0 {
        return 0;
    }
    let c = (x - 1e-9).ceil();
    if c >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        c as u32
    }
}

/// The fewest replicas of `per_replica` capacity whose sum covers `amount`. Unlike
/// [`ceil_u32`] it never lands one short: the replay scores `amount - n × per_replica` to the
/// last bit, so a ratio a hair above an integer needs the next replica.
pub(crate) fn replicas_for(amount: f64, per_replica: f64) -> u32 {
    let n = ceil_u32(amount / per_replica);
    if n < u32::MAX && f64::from(n) * per_replica < amount {
        n + 1
    } else {
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hpa() -> HpaPolicy {
        HpaPolicy::new(HpaConfig::new(10.0, 1, 100), 15)
    }

    #[test]
    fn scale_up_follows_ratio_times_ready_pods() {
        // 4 ready pods, demand 56 -> util 140% vs target 70% -> ratio 2.0 -> 8 pods.
        let mut h = hpa();
        assert_eq!(h.sync(0, 4, 4, 56.0), 8);
    }

    #[test]
    fn ratio_inside_tolerance_keeps_current() {
        // util = 30/(4*10) = 75% -> ratio 1.071 (inside 10%).
        let mut h = hpa();
        assert_eq!(h.sync(0, 4, 4, 30.0), 4);
        // util 78% -> ratio 1.114 -> ceil(1.114*4) = 5.
        let mut h = hpa();
        assert_eq!(h.sync(0, 4, 4, 31.2), 5);
    }

    #[test]
    fn scale_up_limit_is_twice_current_or_four() {
        // demand needs 100 pods at 70%, from 1 pod: limited to max(2,4) = 4.
        let mut h = hpa();
        assert_eq!(h.sync(0, 1, 1, 700.0), 4);
        // from 10 pods: limited to 20.
        let mut h = hpa();
        assert_eq!(h.sync(0, 10, 10, 700.0), 20);
    }

    #[test]
    fn unready_pods_count_as_zero_on_scale_up() {
        // 4 ready + 4 unready, demand 40: ready-only ratio = 100/70 = 1.43 (> 1) so the unready
        // pods are added back at 0: util over 8 pods = 50% -> ratio 0.714 < 1 -> direction
        // flipped -> keep 8.
        let mut h = hpa();
        assert_eq!(h.sync(0, 8, 4, 40.0), 8);
        // demand 80 -> util over 8 = 100% -> ratio 1.43 -> ceil(1.43*8) = 12.
        let mut h = hpa();
        assert_eq!(h.sync(0, 8, 4, 80.0), 12);
    }

    #[test]
    fn scale_down_waits_for_the_stabilization_window() {
        let mut h = hpa();
        assert_eq!(h.sync(0, 10, 10, 70.0), 10); // ratio 1.0
        // demand drops: proposal 2 but the recommendation 10 at t=0 is inside 300 s.
        assert_eq!(h.sync(15, 10, 10, 14.0), 10);
        assert_eq!(h.sync(299, 10, 10, 14.0), 10);
        // at t=300 the t=0 record is no longer after the cutoff; t=15 and t=299 proposed 2.
        assert_eq!(h.sync(300, 10, 10, 14.0), 2);
    }

    #[test]
    fn bounds_are_applied_and_missing_ready_pods_hold() {
        let mut h = HpaPolicy::new(HpaConfig::new(10.0, 2, 5), 15);
        assert_eq!(h.sync(0, 1, 1, 0.0), 2, "below min goes to min");
        assert_eq!(h.sync(15, 9, 9, 0.0), 5, "above max goes to max");
        assert_eq!(
            h.sync(30, 4, 0, 100.0),
            4,
            "no ready pod: metric errors, hold"
        );
        let mut h = HpaPolicy::new(HpaConfig::new(10.0, 2, 5), 15);
        assert_eq!(h.sync(0, 4, 4, 1000.0), 5, "scale-up capped at max");
    }

    #[test]
    fn recommend_runs_one_sync_per_15s_of_the_period() {
        // A 60 s period runs 4 syncs: 1 -> 4 -> 8 -> 16 -> 32 pods for a demand of 300
        // (needs 43) with all pods ready.
        let mut h = HpaPolicy::new(HpaConfig::new(10.0, 1, 100), 60);
        let obs = Observation {
            now: 0,
            demand: Some(300.0),
            current_replicas: 1,
            ready_replicas: 1,
            forecast: None,
        };
        // Ready stays 1 within the period: the new pods are unready, counted at 0%, yet the
        // ratio stays far above 1, so each sync doubles until the period ends.
        let d = h.recommend(&obs);
        assert_eq!(d.desired_replicas, 32);
        // Off the sync clock (now = 7), the period still holds four syncs (15, 30, 45, 60).
        let mut h = HpaPolicy::new(HpaConfig::new(10.0, 1, 100), 60);
        assert_eq!(
            h.recommend(&Observation { now: 7, ..obs }).desired_replicas,
            32
        );
        // 10 s rows: syncs at 0, 15 and 30 fall in the rows at 0, 10 and 30; the row at 20
        // has none and keeps what it has.
        let mut h = HpaPolicy::new(HpaConfig::new(10.0, 1, 100), 10);
        let mut current = 1;
        let mut seen = Vec::new();
        for now in [0, 10, 20, 30] {
            current = h
                .recommend(&Observation {
                    now,
                    current_replicas: current,
                    ..obs
                })
                .desired_replicas;
            seen.push(current);
        }
        assert_eq!(seen, [4, 8, 8, 16]);
        // A row 45 s after the last (a 60 s period): the sync at 45 already ran, so this row
        // runs those at 60, 75 and 90, doubling three times, not four.
        let mut h = HpaPolicy::new(HpaConfig::new(10.0, 1, 1000), 60);
        let far = Observation {
            demand: Some(30_000.0),
            ..obs
        };
        assert_eq!(h.recommend(&far).desired_replicas, 32);
        let early = Observation {
            now: 45,
            current_replicas: 32,
            ..far
        };
        assert_eq!(h.recommend(&early).desired_replicas, 256);
        // A clock gone back past the period is not waited for: the row runs its own syncs.
        let back = Observation {
            now: -600,
            current_replicas: 32,
            ..far
        };
        assert_eq!(h.clone().recommend(&back).desired_replicas, 512);
    }

    #[test]
    fn the_rules_the_other_cases_leave_out_worked_by_hand() {
        // First sight seeds the history with (current, now): a fresh HPA at 10 pods whose
        // proposal is 3 (util 21% -> ratio 0.3) keeps 10 for the window.
        let mut h = hpa();
        assert_eq!(h.sync(0, 10, 10, 21.0), 10);
        assert_eq!(
            h.sync(301, 10, 10, 21.0),
            3,
            "the seed and t=0 have left the window"
        );

        // Both tolerance bounds are inclusive: 63% (ratio 0.9) holds after the window, 62.99%
        // (read as 62%: 0.886) goes to ceil(8.86) = 9.
        let mut h = hpa();
        assert_eq!(h.sync(0, 10, 10, 63.0), 10, "ratio 0.9: inside");
        assert_eq!(h.sync(400, 10, 10, 63.0), 10);
        assert_eq!(h.sync(800, 10, 10, 62.99), 9);
        // Utilisation is truncated to a whole percent before the ratio: 77.9% reads 77%
        // (ratio 1.1, inside), where the exact 1.113 would ask for ceil(11.13) = 12.
        assert_eq!(hpa().sync(0, 10, 10, 77.9), 10);
        assert_eq!(hpa().sync(0, 10, 10, 78.0), 12);

        // Scaling down with unready pods: only ready pods carry the metric and the ratio is
        // applied to them (6 ready of 10, demand 21: util 35% -> ratio 0.5 -> 3).
        let mut h = hpa();
        h.sync(0, 10, 10, 70.0);
        assert_eq!(h.sync(400, 10, 6, 21.0), 3);

        // current == 0 with minReplicas != 0: scaling is disabled, nothing changes.
        assert_eq!(hpa().sync(0, 0, 0, 500.0), 0);

        // A metric error (no demand) holds through every sync of the period.
        let mut h = HpaPolicy::new(HpaConfig::new(10.0, 1, 100), 60);
        let d = h.recommend(&Observation {
            now: 0,
            demand: None,
            current_replicas: 7,
            ready_replicas: 7,
            forecast: None,
        });
        assert_eq!(d.desired_replicas, 7);
        assert_eq!(d.reason.term, Term::MissingData);
    }

    #[test]
    fn ceil_tolerates_float_noise() {
        assert_eq!(ceil_u32(3.000_000_000_1), 3);
        assert_eq!(ceil_u32(3.01), 4);
        assert_eq!(ceil_u32(0.0), 0);
        assert_eq!(ceil_u32(f64::NAN), 0);
        // 0.3 / 0.1 is 2.9999999999999996, 0.7 / 0.1 is 6.999999999999999; a share of a
        // replica below the tolerance still needs one.
        assert_eq!(replicas_for(0.3, 0.1), 3);
        assert_eq!(replicas_for(0.7, 0.1), 7);
        assert_eq!(replicas_for(1e-12, 10.0), 1);
        assert_eq!(replicas_for(10.0 + 1e-12, 10.0), 2);
        assert_eq!(replicas_for(0.0, 10.0), 0);
        assert_eq!(replicas_for(f64::NAN, 10.0), 0);
        for (amount, per) in [(3.0 * 0.1, 0.1), (20.0 * 1.7, 1.7), (1e6, 3.3)] {
            let n = replicas_for(amount, per);
            assert!(f64::from(n) * per >= amount && f64::from(n - 1) * per < amount);
        }
    }
}
