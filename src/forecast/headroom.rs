//! Per-workload headroom: which quantile level to provision for, chosen by backtest against
//! a reactive reference on the workload's own recent history.

use std::collections::VecDeque;

/// Quantile levels the tuner chooses from.
pub(super) const LADDER: [f64; 9] = [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995];
const N: usize = LADDER.len();
/// The reference: a reactive autoscaler holding this utilisation (the HPA default target)
/// on the highest demand of its downscale stabilisation window.
const REACTIVE_UTILIZATION: f64 = 0.7;
/// The reference's downscale stabilisation window, seconds (the HPA default).
pub(super) const REACTIVE_STABILIZATION_SECONDS: u64 = 300;
/// Scored forecast steps needed before the tuner overrides the preset quantile.
const MIN_SAMPLES: usize = 200;
/// Aim this much below the reference's unserved demand.
const MARGIN: f64 = 0.5;
/// Levels that would cost more than this share of the reference are not considered.
const MAX_COST_SHARE: f64 = 0.9;

#[derive(Debug, Clone, Copy, Default)]
struct Outcome {
    unserved: [f64; N],
    cost: [f64; N],
    ref_unserved: f64,
    ref_cost: f64,
}

impl Outcome {
    fn add(&mut self, o: &Outcome, sign: f64) {
        for i in 0..N {
            self.unserved[i] += sign * o.unserved[i];
            self.cost[i] += sign * o.cost[i];
        }
        self.ref_unserved += sign * o.ref_unserved;
        self.ref_cost += sign * o.ref_cost;
    }
}

/// Tracks, per ladder level, what provisioning for that level over the lead window would
/// have cost and left unserved, beside the reactive reference.
#[derive(Debug, Clone)]
pub(super) struct HeadroomTuner {
    /// (origin end, window peak per level, reference provision).
    pending: VecDeque<(usize, [f64; N], f64)>,
    window: VecDeque<Outcome>,
    sums: Outcome,
    cap: usize,
    lead: usize,
    /// Demand one replica serves, when known: provisions are then compared in whole replicas
    /// (at least one), as the policy will ask for them.
    unit: Option<f64>,
}

impl HeadroomTuner {
    pub(super) fn new(cap: usize, lead: usize) -> Self {
        Self {
            pending: VecDeque::new(),
            window: VecDeque::new(),
            sums: Outcome::default(),
            cap,
            lead,
            unit: None,
        }
    }

    /// Compares provisions in whole replicas of `capacity` demand each.
    pub(super) fn set_unit(&mut self, capacity: f64) {
        self.unit = (capacity.is_finite() && capacity > 0.0).then_some(capacity);
    }

    fn quantize(&self, provision: f64) -> f64 {
        match self.unit {
            Some(c) => ((provision / c - 1e-9).ceil().max(1.0)) * c,
            None => provision,
        }
    }

    /// Records what each level would provision for the window after `origin_end`, and what
    /// the reactive reference would, given the highest demand of its stabilisation window.
    pub(super) fn issue(&mut self, origin_end: usize, peaks: [f64; N], latest: f64) {
        if self.pending.back().is_some_and(|p| p.0 == origin_end) {
            return;
        }
        let peaks = peaks.map(|p| self.quantize(p));
        let reference = self.quantize(latest / REACTIVE_UTILIZATION);
        self.pending.push_back((origin_end, peaks, reference));
    }

    /// Scores the issued windows that contain grid index `idx` (actual `y`).
    pub(super) fn mature(&mut self, idx: usize, y: f64, scored: bool) {
        for &(o, peaks, reference) in &self.pending {
            if !scored || idx < o || idx >= o + self.lead {
                continue;
            }
            let out = Outcome {
                unserved: peaks.map(|p| (y - p).max(0.0)),
                cost: peaks,
                ref_unserved: (y - reference).max(0.0),
                ref_cost: reference,
            };
            self.sums.add(&out, 1.0);
            self.window.push_back(out);
        }
        while self.window.len() > self.cap {
            if let Some(old) = self.window.pop_front() {
                self.sums.add(&old, -1.0);
            }
        }
        while self
            .pending
            .front()
            .is_some_and(|p| p.0 + self.lead <= idx + 1)
        {
            self.pending.pop_front();
        }
    }

    /// The level to provision for. Among the levels that cost clearly less than the
    /// reference, the lowest whose unserved demand is clearly below the reference's; failing
    /// that, the highest affordable one. `default` until enough history has been scored.
    pub(super) fn level(&self, default: f64) -> f64 {
        if self.window.len() < MIN_SAMPLES {
            return default;
        }
        let s = &self.sums;
        let affordable = |i: usize| s.cost[i] <= MAX_COST_SHARE * s.ref_cost;
        let target = s.ref_unserved * (1.0 - MARGIN);
        if let Some(i) = (0..N).find(|&i| affordable(i) && s.unserved[i] <= target) {
            return LADDER[i];
        }
        (0..N)
            .rev()
            .find(|&i| affordable(i))
            .map_or(LADDER[0], |i| LADDER[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(
        t: &mut HeadroomTuner,
        steps: usize,
        y: impl Fn(usize) -> f64,
        peaks: impl Fn(usize) -> [f64; N],
    ) {
        for i in 0..steps {
            t.mature(i, y(i), true);
            t.issue(i + 1, peaks(i), y(i));
        }
    }

    const PEAKS: [f64; N] = [
        100.0, 110.0, 115.0, 120.0, 125.0, 128.0, 131.0, 133.0, 150.0,
    ];

    fn spiky(spike: f64) -> HeadroomTuner {
        let mut t = HeadroomTuner::new(1000, 1);
        feed(
            &mut t,
            500,
            |i| if i % 10 == 9 { spike } else { 100.0 },
            |_| PEAKS,
        );
        t
    }

    #[test]
    fn the_lowest_affordable_level_that_beats_reacting_is_chosen() {
        // Demand 100, spiking to 130 every 10th step. The reference provisions 143 (186 just
        // after a spike) and never misses; the level provisioning 131 does not miss either
        // and costs under 90% of the reference (133 would not), the lower ones miss.
        assert_eq!(spiky(130.0).level(0.9), LADDER[6]);
    }

    #[test]
    fn when_no_affordable_level_beats_reacting_the_highest_affordable_one_is_used() {
        // Spikes to 150: the reference misses 7 per spike. Only 150 (too expensive) would
        // miss less, so the highest level under 90% of the reference's cost is used.
        assert_eq!(spiky(150.0).level(0.9), LADDER[7]);
    }

    #[test]
    fn before_enough_history_the_default_level_is_used() {
        let t = HeadroomTuner::new(1000, 2);
        assert_eq!(t.level(0.9), 0.9);
    }
}
