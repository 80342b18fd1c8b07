//! How a workload's pods respond to decisions (the replay contract's physics): a scale-down
//! removes pods at once, starting ones first; a scale-up's pods are ready after startup.

use crate::domain::Timestamp;

/// Pods of one workload, in groups that become (or became) ready at the same time, oldest
/// first: a few groups, however many pods (a workload of hundreds of replicas is replayed
/// beside every headroom rung, so one entry per pod would add up).
///
/// Queries come at or after the last decision's effective time (as the replay contract
/// steps): pods ready by then are ready for every later query and share one group.
#[derive(Debug, Clone)]
pub struct Pods {
    /// (ready time, pods), ready times strictly increasing.
    groups: Vec<(Timestamp, u32)>,
}

impl Pods {
    /// `n` pods that are ready from the start.
    pub fn ready(n: u32) -> Self {
        let mut groups = Vec::with_capacity(4);
        if n > 0 {
            groups.push((Timestamp::MIN, n));
        }
        Self { groups }
    }

    /// The pods as (ready time, pods) groups, for a saved state.
    pub(super) fn groups(&self) -> Vec<(Timestamp, u32)> {
        self.groups.clone()
    }

    /// Pods saved by [`Pods::groups`]; `None` unless the ready times increase strictly and
    /// every group holds a pod.
    pub(super) fn from_groups(groups: Vec<(Timestamp, u32)>) -> Option<Self> {
        let ordered = groups.windows(2).all(|w| w[0].0 < w[1].0);
        (ordered && groups.iter().all(|g| g.1 > 0)).then_some(Self { groups })
    }

    /// All pods, starting ones included.
    pub fn total(&self) -> u32 {
        self.ready_at(Timestamp::MAX)
    }

    /// Pods ready at `t`.
    pub fn ready_at(&self, t: Timestamp) -> u32 {
        self.groups
            .iter()
            .filter(|g| g.0 <= t)
            .fold(0_u32, |s, g| s.saturating_add(g.1))
    }

    /// Applies a decision effective at `effective`: a scale-down removes pods at once, those
    /// still starting first; a scale-up adds pods ready `startup` seconds after `effective`.
    pub fn apply(&mut self, desired: u32, effective: Timestamp, startup: u64) {
        let ready = self.ready_at(effective);
        if ready > 0 {
            self.groups.retain(|g| g.0 > effective);
            self.groups.insert(0, (Timestamp::MIN, ready));
        }
        let total = self.total();
        if desired < total {
            // Latest ready time first out: starting pods go before ready ones.
            let mut excess = total - desired;
            while excess > 0 {
                let Some(last) = self.groups.last_mut() else {
                    break;
                };
                let take = last.1.min(excess);
                last.1 -= take;
                excess -= take;
                if last.1 == 0 {
                    self.groups.pop();
                }
            }
        } else if desired > total {
            let at = effective + startup as i64;
            match self.groups.last_mut() {
                Some(last) if last.0 == at => last.1 += desired - total,
                _ => self.groups.push((at, desired - total)),
            }
        }
    }
}

/// Demand above what `ready` pods of `capacity` serve.
pub fn unserved(demand: f64, ready: u32, capacity: f64) -> f64 {
    (demand - f64::from(ready) * capacity).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_up_pods_become_ready_after_startup() {
        let mut p = Pods::ready(2);
        p.apply(5, 300, 180);
        assert_eq!(p.total(), 5);
        assert_eq!(p.ready_at(300), 2);
        assert_eq!(p.ready_at(479), 2);
        assert_eq!(p.ready_at(480), 5);
    }

    #[test]
    fn scale_down_removes_starting_pods_first() {
        let mut p = Pods::ready(2);
        p.apply(5, 300, 180);
        p.apply(3, 360, 180);
        assert_eq!(p.total(), 3);
        // The two ready pods survive; one starting pod remains.
        assert_eq!(p.ready_at(360), 2);
        assert_eq!(p.ready_at(480), 3);
        p.apply(1, 400, 180);
        assert_eq!(p.ready_at(400), 1);
    }

    #[test]
    fn groups_stay_few_over_a_long_run_and_match_one_entry_per_pod() {
        // The same decisions against a plain list of ready times.
        let mut p = Pods::ready(3);
        let mut each: Vec<Timestamp> = vec![Timestamp::MIN; 3];
        let mut seed = 7_u64;
        for step in 0..5_000_i64 {
            let now = step * 60;
            assert_eq!(p.total() as usize, each.len(), "step {step}");
            assert_eq!(
                p.ready_at(now) as usize,
                each.iter().filter(|&&r| r <= now).count(),
                "step {step}"
            );
            let desired = (crate::testutil::next_u64(&mut seed) >> 33) as u32 % 300;
            let effective = now + 60;
            p.apply(desired, effective, 180);
            if (desired as usize) < each.len() {
                each.sort_unstable();
                each.truncate(desired as usize);
            } else {
                each.resize(desired as usize, effective + 180);
            }
            assert!(p.groups.len() <= 5, "{} groups", p.groups.len());
        }
    }

    #[test]
    fn demand_above_ready_capacity_is_unserved() {
        assert_eq!(unserved(25.0, 2, 10.0), 5.0);
        assert_eq!(unserved(5.0, 2, 10.0), 0.0);
    }
}
