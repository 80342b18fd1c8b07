//! The `hpa_parity` headroom rule: shadow replays of the policy at every headroom rung and of
//! the HPA, on the workload's own demand, to pick the cheapest rung at least as reliable.

use serde::{Deserialize, Serialize};

use crate::domain::{BAND_LEVELS, SavedSums, SlidingSums, Timestamp};

use super::hpa::{HpaMemory, HpaPolicy};
use super::pods::{Pods, unserved};
use super::predictive::{
    Headroom, PolicyConfig, PolicyState, PolicyStateMismatch, PredictivePolicy,
};
use super::{Observation, ScalingPolicy};

/// A headroom rung: a forecast band, or the highest band scaled up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Rung {
    /// `Forecast::bands[i]`.
    Band(usize),
    /// The highest band times this factor.
    Scaled(f64),
}

/// Multipliers on the highest band, for workloads that need more than its headroom.
const SCALES: [f64; 4] = [1.1, 1.2, 1.35, 1.5];
/// A rung must cost at most this share of the HPA's replica-hours...
const COST_SHARE: f64 = 0.97;
/// ...and leave at most this share of its unserved demand.
const RELIABILITY_SHARE: f64 = 0.5;
/// Decisions scored before the tuner chooses (until then the policy reacts to current demand).
pub(super) const MIN_ROWS: usize = 288;

fn rungs() -> Vec<Rung> {
    (0..BAND_LEVELS.len())
        .map(Rung::Band)
        .chain(SCALES.iter().map(|&m| Rung::Scaled(m)))
        .collect()
}

#[derive(Debug, Clone)]
enum ShadowPolicy {
    Predictive(PredictivePolicy),
    Hpa(HpaPolicy),
}

/// One policy replayed beside the real one, with its own pods.
#[derive(Debug, Clone)]
struct Shadow {
    policy: ShadowPolicy,
    pods: Option<Pods>,
    /// (unserved demand, replicas) summed over the recent decisions.
    window: SlidingSums<2>,
}

impl Shadow {
    fn unserved(&self) -> f64 {
        self.window.totals()[0]
    }

    fn replicas(&self) -> f64 {
        self.window.totals()[1]
    }

    fn new(policy: ShadowPolicy, cap: usize) -> Self {
        Self {
            policy,
            pods: None,
            window: SlidingSums::new(cap),
        }
    }
}

/// A shadow's memory as plain data: its policy's, its pods, its scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ShadowState {
    policy: ShadowMemory,
    pods: Option<Vec<(Timestamp, u32)>>,
    window: SavedSums,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum ShadowMemory {
    Predictive(PolicyState),
    Hpa(HpaMemory),
}

impl Shadow {
    fn state(&self) -> ShadowState {
        ShadowState {
            policy: match &self.policy {
                ShadowPolicy::Predictive(p) => ShadowMemory::Predictive(p.memory()),
                ShadowPolicy::Hpa(h) => ShadowMemory::Hpa(h.memory()),
            },
            pods: self.pods.as_ref().map(Pods::groups),
            window: self.window.to_saved(),
        }
    }

    /// This shadow with a saved state taken up.
    fn restored(&self, s: ShadowState) -> Result<Self, PolicyStateMismatch> {
        let window = SlidingSums::from_saved(s.window, &self.window)
            .ok_or(PolicyStateMismatch("tuning window changed"))?;
        let pods = match s.pods {
            Some(g) => Some(Pods::from_groups(g).ok_or(PolicyStateMismatch("shadow pods"))?),
            None => None,
        };
        let mut policy = self.policy.clone();
        match (&mut policy, s.policy) {
            (ShadowPolicy::Predictive(p), ShadowMemory::Predictive(m)) => p.restore(m)?,
            (ShadowPolicy::Hpa(h), ShadowMemory::Hpa(m)) => h.restore_memory(m),
            _ => return Err(PolicyStateMismatch("shadow policies changed")),
        }
        Ok(Self {
            policy,
            pods,
            window,
        })
    }
}

/// The tuner's shadows as plain data (see [`PolicyState`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct TunerState {
    shadows: Vec<ShadowState>,
    hpa: ShadowState,
}

/// Shadow replays and the choice they support.
#[derive(Debug, Clone)]
pub(super) struct Tuner {
    rungs: Vec<Rung>,
    shadows: Vec<Shadow>,
    hpa: Shadow,
    cap: usize,
    capacity: f64,
    period: u64,
    startup: u64,
}

impl Tuner {
    pub(super) fn new(cfg: &PolicyConfig) -> Self {
        let fixed = PolicyConfig {
            headroom: Headroom::Quantile,
            ..cfg.clone()
        };
        let rungs = rungs();
        let cap = ((cfg.tuning_window_seconds / cfg.period_seconds.max(1)) as usize).max(MIN_ROWS);
        let shadows = rungs
            .iter()
            .map(|&r| {
                Shadow::new(
                    ShadowPolicy::Predictive(PredictivePolicy::with_rung(fixed.clone(), r)),
                    cap,
                )
            })
            .collect();
        let hpa = cfg.hpa();
        Self {
            rungs,
            shadows,
            hpa: Shadow::new(ShadowPolicy::Hpa(hpa), cap),
            cap,
            capacity: cfg.capacity,
            period: cfg.period_seconds,
            startup: cfg.startup_seconds,
        }
    }

    pub(super) fn state(&self) -> TunerState {
        TunerState {
            shadows: self.shadows.iter().map(Shadow::state).collect(),
            hpa: self.hpa.state(),
        }
    }

    /// This tuner with a saved state taken up.
    pub(super) fn restored(&self, s: TunerState) -> Result<Self, PolicyStateMismatch> {
        if s.shadows.len() != self.shadows.len() {
            return Err(PolicyStateMismatch("headroom rungs changed"));
        }
        let shadows = self
            .shadows
            .iter()
            .zip(s.shadows)
            .map(|(shadow, saved)| shadow.restored(saved))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            shadows,
            hpa: self.hpa.restored(s.hpa)?,
            rungs: self.rungs.clone(),
            cap: self.cap,
            capacity: self.capacity,
            period: self.period,
            startup: self.startup,
        })
    }

    /// Scores the shadows' pods against the demand now, then lets each decide with what the
    /// real policy sees. Missing demand skips the step (nothing to score, nothing to learn).
    pub(super) fn step(&mut self, obs: &Observation<'_>) {
        let Some(demand) = obs.demand else {
            return;
        };
        let (capacity, effective, startup) =
            (self.capacity, obs.now + self.period as i64, self.startup);
        for s in self
            .shadows
            .iter_mut()
            .chain(std::iter::once(&mut self.hpa))
        {
            let pods = s
                .pods
                .get_or_insert_with(|| Pods::ready(obs.current_replicas));
            let (ready, total) = (pods.ready_at(obs.now), pods.total());
            let u = unserved(demand, ready, capacity);
            s.window.push([u, f64::from(total)]);
            let view = Observation {
                current_replicas: total,
                ready_replicas: ready,
                ..*obs
            };
            let desired = match &mut s.policy {
                ShadowPolicy::Predictive(p) => p.recommend(&view),
                ShadowPolicy::Hpa(h) => h.recommend(&view),
            }
            .desired_replicas;
            pods.apply(desired, effective, startup);
        }
    }

    /// The cheapest rung that cost less than the HPA and left clearly less demand unserved
    /// over the window; failing that, the affordable rung that left the least unserved; when
    /// none was affordable, the cheapest. `None` until enough decisions were scored (the
    /// policy then reacts to current demand).
    pub(super) fn choose(&self) -> Option<Rung> {
        if self.hpa.window.count() < MIN_ROWS.min(self.cap) {
            return None;
        }
        let [hu, hr] = self.hpa.window.totals();
        let affordable: Vec<usize> = (0..self.shadows.len())
            .filter(|&i| self.shadows[i].replicas() <= COST_SHARE * hr)
            .collect();
        let reliable = |i: &usize| {
            let u = self.shadows[*i].unserved();
            if hu <= 0.0 {
                u <= 0.0
            } else {
                u <= RELIABILITY_SHARE * hu
            }
        };
        let by = |key: fn(&Shadow) -> f64| {
            move |a: &usize, b: &usize| key(&self.shadows[*a]).total_cmp(&key(&self.shadows[*b]))
        };
        let pick = affordable
            .iter()
            .copied()
            .filter(reliable)
            .min_by(by(Shadow::replicas))
            .or_else(|| affordable.iter().copied().min_by(by(Shadow::unserved)))
            .or_else(|| (0..self.shadows.len()).min_by(by(Shadow::replicas)))?;
        self.rungs.get(pick).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Band, Forecast};

    /// A forecast whose bands are flat: band `i` is `100 + 5 i` at every step.
    fn forecast(now: i64) -> Forecast {
        let bands: Vec<Band> = BAND_LEVELS
            .iter()
            .enumerate()
            .map(|(i, &level)| Band {
                level,
                values: vec![100.0 + 5.0 * i as f64; 4],
            })
            .collect();
        Forecast {
            origin: now,
            step: 300,
            point: vec![100.0; 4],
            upper: bands[4].values.clone(),
            quantile: 0.9,
            bands,
            model: "linear",
            demoted: false,
            confident: true,
            surprise: false,
        }
    }

    fn run(rows: usize) -> (Tuner, PredictivePolicy) {
        // Capacity 5: band i needs 20 + i replicas; the HPA at 70% keeps ceil(100/3.5) = 29.
        let cfg = PolicyConfig::new(5.0, 1, 100, 180, 300);
        let mut tuner = Tuner::new(&cfg);
        let mut policy = PredictivePolicy::new(cfg).unwrap();
        let mut current = 20;
        for i in 0..rows {
            let now = i as i64 * 300;
            // Demand 100 with a spike to 130 (26 replicas' worth) every 10th row.
            let demand = if i % 10 == 9 { 130.0 } else { 100.0 };
            let f = forecast(now);
            let obs = Observation {
                now,
                demand: Some(demand),
                current_replicas: current,
                ready_replicas: current,
                forecast: Some(&f),
            };
            tuner.step(&obs);
            current = policy.recommend(&obs).desired_replicas;
        }
        (tuner, policy)
    }

    #[test]
    fn no_choice_before_enough_decisions_are_scored() {
        let (tuner, _) = run(MIN_ROWS - 1);
        assert_eq!(tuner.choose(), None);
    }

    #[test]
    fn the_cheapest_rung_that_serves_what_the_hpa_serves_is_chosen() {
        let (tuner, mut policy) = run(600);
        // Bands below 130 leave every spike partly unserved while the HPA (145 of capacity)
        // serves them all; band 6 (130, 26 replicas) serves them and costs less than 29.
        assert_eq!(tuner.choose(), Some(Rung::Band(6)));
        let hpa = &tuner.hpa;
        let chosen = &tuner.shadows[6];
        assert_eq!(hpa.unserved(), 0.0);
        assert_eq!(chosen.unserved(), 0.0);
        assert!(chosen.replicas() < hpa.replicas());
        assert!(tuner.shadows[5].unserved() > 0.0);
        // The real policy provisions for it too, and says so.
        let f = forecast(600 * 300);
        let d = policy.recommend(&Observation {
            now: 600 * 300,
            demand: Some(100.0),
            current_replicas: 26,
            ready_replicas: 26,
            forecast: Some(&f),
        });
        assert_eq!(d.reason.quantile, BAND_LEVELS[6]);
        assert_eq!(d.desired_replicas, 26);
    }
}
