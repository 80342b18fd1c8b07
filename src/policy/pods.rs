//! How a workload's pods respond to decisions (the replay contract's physics): a scale-down
//! removes pods at once, starting ones first; a scale-up's pods are ready after startup.

use crate::domain::Timestamp;

/// Pods of one workload, each with the time it becomes (or became) ready.
#[derive(Debug, Clone)]
pub struct Pods {
    ready_at: Vec<Timestamp>,
}

impl Pods {
    /// `n` pods that are ready from the start.
    pub fn ready(n: u32) -> Self {
        Self {
            ready_at: vec![Timestamp::MIN; n as usize],
        }
    }

    /// All pods, starting ones included.
    pub fn total(&self) -> u32 {
        u32::try_from(self.ready_at.len()).unwrap_or(u32::MAX)
    }

    /// Pods ready at `t`.
    pub fn ready_at(&self, t: Timestamp) -> u32 {
        u32::try_from(self.ready_at.iter().filter(|&&r| r <= t).count()).unwrap_or(u32::MAX)
    }

    /// Applies a decision effective at `effective`: a scale-down removes pods at once, those
    /// still starting first; a scale-up adds pods ready `startup` seconds after `effective`.
    pub fn apply(&mut self, desired: u32, effective: Timestamp, startup: u64) {
        let desired = desired as usize;
        if desired < self.ready_at.len() {
            // Latest ready time first out: starting pods go before ready ones.
            self.ready_at.sort_unstable();
            self.ready_at.truncate(desired);
        } else {
            let at = effective + startup as i64;
            self.ready_at.resize(desired, at);
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
    fn demand_above_ready_capacity_is_unserved() {
        assert_eq!(unserved(25.0, 2, 10.0), 5.0);
        assert_eq!(unserved(5.0, 2, 10.0), 0.0);
    }
}
