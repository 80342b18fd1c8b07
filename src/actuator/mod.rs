//! Actuators: how desired replicas reach the cluster. Published for KEDA (the gRPC external
//! scaler and the metrics-api JSON read the [`Board`]) or written to the `/scale` subresource
//! by [`ScaleActuator`] in `auto` mode.

pub mod keda;
pub mod lease;
pub mod scale;

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::{Mode, WorkloadKind};
use crate::domain::Timestamp;

pub use lease::{LeaseConfig, LeaseElector};
pub use scale::{ScaleActuator, retry_backoff_max};

/// The scale target of a workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Namespace.
    pub namespace: String,
    /// Deployment or StatefulSet name.
    pub name: String,
    /// Which of the two.
    pub kind: WorkloadKind,
}

/// Bounds every write honours, re-applied against the replicas observed at write time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Lowest replicas ever written.
    pub min_replicas: u32,
    /// Highest replicas ever written.
    pub max_replicas: u32,
    /// Largest increase in one write.
    pub max_step_up: Option<u32>,
    /// Largest decrease in one write.
    pub max_step_down: Option<u32>,
    /// Never write fewer replicas than observed: set when the decision was made without
    /// knowing the real replicas (a fresh start, a new Lease holder) or while scale-downs are
    /// unsafe, so a guess can raise a workload but never lower it.
    pub no_decrease: bool,
    /// Never write more replicas than observed: with `no_decrease`, a read that writes
    /// nothing (how prescale learns the replicas of a workload it only recommends for).
    pub no_increase: bool,
    /// The replicas the decision was made against, when it was made against a belief:
    /// if the workload has something else now (someone scaled it, a Lease changed hands),
    /// the decision's scale-down guards judged the wrong number, so the write may raise
    /// but not lower.
    pub decided_from: Option<u32>,
}

impl Limits {
    /// What to write when the workload has `observed` replicas and the policy wants
    /// `desired`: min/max first, then at most one step away from what is really there.
    pub fn clamp(&self, desired: u32, observed: u32) -> u32 {
        let mut want = desired.clamp(self.min_replicas, self.max_replicas.max(self.min_replicas));
        if let Some(up) = self.max_step_up {
            want = want.min(observed.saturating_add(up.max(1)));
        }
        if let Some(down) = self.max_step_down {
            want = want.max(observed.saturating_sub(down.max(1)));
        }
        if self.no_decrease || self.decided_from.is_some_and(|d| d != observed) {
            want = want.max(observed);
        }
        if self.no_increase {
            want = want.min(observed);
        }
        want
    }

    /// These limits, with no write at all: [`Actuator::apply`] then only reads.
    pub fn read_only(self) -> Self {
        Self {
            no_decrease: true,
            no_increase: true,
            ..self
        }
    }
}

/// The outcome of one [`Actuator::apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Replicas the workload had (spec) when it was read.
    pub previous: u32,
    /// Replicas it has now.
    pub replicas: u32,
    /// Whether a write happened.
    pub written: bool,
}

/// Why a change could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ActuateError {
    /// RBAC denies the read or write (403): not retried.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The Deployment or StatefulSet does not exist (404).
    #[error("target not found: {0}")]
    TargetGone(String),
    /// Every attempt met a newer resourceVersion (409).
    #[error("conflict: the scale subresource kept changing under us ({0} attempts)")]
    Conflict(u32),
    /// The API server throttles us (429); nothing is sent before `retry_after`.
    #[error("throttled by the API server; retry after {retry_after:?}")]
    Throttled {
        /// How long the server asked us to wait.
        retry_after: Duration,
    },
    /// 5xx answers or timeouts after every retry.
    #[error("API server unavailable: {0}")]
    Unavailable(String),
    /// An HPA (possibly KEDA's) already scales this target: prescale refuses to fight it.
    #[error("managed by {0}; prescale does not patch a target another autoscaler drives")]
    ManagedByHpa(String),
    /// The target is at 0 replicas or paused: left alone, as HPA and KEDA do.
    #[error("target paused: {0}")]
    Paused(String),
    /// This replica of prescale does not hold the Lease.
    #[error("not the leader; the Lease holder applies")]
    NotLeader,
    /// The target's replicas changed since the approved recommendation was made.
    #[error("stale: the target has {observed} replicas, the recommendation was made at {expected}")]
    Stale {
        /// Replicas found.
        observed: u32,
        /// Replicas the recommendation started from.
        expected: u32,
    },
    /// A request or answer we could not use (4xx other than the above, bad JSON).
    #[error("rejected: {0}")]
    Rejected(String),
}

impl ActuateError {
    /// Every kind, for pre-created metric series.
    pub const KINDS: [&'static str; 10] = [
        "stale",
        "forbidden",
        "target_gone",
        "conflict",
        "throttled",
        "unavailable",
        "managed_by_hpa",
        "paused",
        "not_leader",
        "rejected",
    ];

    /// Bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ActuateError::Forbidden(_) => "forbidden",
            ActuateError::TargetGone(_) => "target_gone",
            ActuateError::Conflict(_) => "conflict",
            ActuateError::Throttled { .. } => "throttled",
            ActuateError::Unavailable(_) => "unavailable",
            ActuateError::ManagedByHpa(_) => "managed_by_hpa",
            ActuateError::Paused(_) => "paused",
            ActuateError::NotLeader => "not_leader",
            ActuateError::Stale { .. } => "stale",
            ActuateError::Rejected(_) => "rejected",
        }
    }
}

/// Moves a workload to its desired replicas.
#[async_trait::async_trait]
pub trait Actuator: Send + Sync {
    /// Reads the target's replicas, re-decides `desired` against them with `limits`, and
    /// writes the result if it differs. Never writes without a fresh read. With `expect`
    /// (an approved change made when the target had that many replicas), a target that has
    /// moved to something else since is [`ActuateError::Stale`]: not forced.
    async fn apply(
        &self,
        target: &Target,
        desired: u32,
        limits: Limits,
        expect: Option<u32>,
    ) -> Result<Applied, ActuateError>;
}

/// What prescale publishes for one workload: the answer of the KEDA endpoints.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Publication {
    /// The workload's mode: `auto` workloads publish what they decide, `recommend` ones what
    /// was last approved and applied; `observe` ones are not published.
    pub mode: Mode,
    /// Replicas prescale asks for.
    pub desired_replicas: u32,
    /// Latest demand.
    pub demand: Option<f64>,
    /// Highest upper-quantile demand over the lead window.
    pub forecast_peak: Option<f64>,
    /// When that peak is expected.
    pub forecast_peak_at: Option<Timestamp>,
    /// Quantile of the forecast.
    pub quantile: Option<f64>,
    /// Time of the latest sample behind this publication.
    pub sample_at: Option<Timestamp>,
    /// Why the publication must not be used (the workload is degraded), if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
    /// When the loop last refreshed this entry (monotonic).
    #[serde(skip)]
    pub refreshed: Option<Instant>,
}

impl Publication {
    /// A publication with only a mode and replicas, never refreshed (so not served yet).
    pub fn new(mode: Mode, desired_replicas: u32) -> Self {
        Self {
            mode,
            desired_replicas,
            demand: None,
            forecast_peak: None,
            forecast_peak_at: None,
            quantile: None,
            sample_at: None,
            unavailable: None,
            refreshed: None,
        }
    }
}

/// Why a publication cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unpublished {
    /// No such workload in the config.
    #[error("no workload {0} is configured")]
    Unknown(String),
    /// The workload is in `observe` mode.
    #[error("workload {key} is in {} mode; only `auto` and `recommend` workloads are published", mode.as_str())]
    NotAuto {
        /// The workload.
        key: String,
        /// Its mode.
        mode: Mode,
    },
    /// Missing, failing or stale data: the caller must not scale on it.
    #[error("workload {key} has no current recommendation: {why}")]
    Unavailable {
        /// The workload.
        key: String,
        /// Why.
        why: String,
    },
}

/// The latest publication of every workload, read by the RPC and HTTP paths without any
/// Prometheus call, and a version counter that wakes streams when something changes.
pub struct Board {
    entries: RwLock<HashMap<String, Publication>>,
    version: tokio::sync::watch::Sender<u64>,
    stale_after: Duration,
}

impl Board {
    /// An empty board whose entries go stale `stale_after` after their last refresh.
    pub fn new(stale_after: Duration) -> Self {
        Self {
            entries: RwLock::new(HashMap::new()),
            version: tokio::sync::watch::Sender::new(0),
            stale_after,
        }
    }

    /// Replaces every entry (one loop's results) and wakes the streams.
    pub fn publish(&self, entries: HashMap<String, Publication>) {
        if let Ok(mut e) = self.entries.write() {
            *e = entries;
        }
        self.version.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// A receiver that sees every [`Board::publish`].
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// The usable publication of `namespace/name`.
    ///
    /// # Errors
    /// Unknown workload, `observe` mode, degraded, nothing approved yet (recommend mode), or
    /// not refreshed for `stale_after`.
    pub fn get(&self, key: &str) -> Result<Publication, Unpublished> {
        let entries = self.entries.read().map_err(|_| Unpublished::Unavailable {
            key: key.to_string(),
            why: "internal lock poisoned".to_string(),
        })?;
        let p = entries
            .get(key)
            .ok_or_else(|| Unpublished::Unknown(key.to_string()))?;
        if p.mode == Mode::Observe {
            return Err(Unpublished::NotAuto {
                key: key.to_string(),
                mode: p.mode,
            });
        }
        let unavailable = |why: String| Unpublished::Unavailable {
            key: key.to_string(),
            why,
        };
        if let Some(why) = &p.unavailable {
            return Err(unavailable(why.clone()));
        }
        match p.refreshed {
            None => Err(unavailable("not computed yet".to_string())),
            Some(t) if t.elapsed() > self.stale_after => Err(unavailable(format!(
                "last refreshed {:.0} s ago (stale after {} s)",
                t.elapsed().as_secs_f64(),
                self.stale_after.as_secs()
            ))),
            Some(_) => Ok(p.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publication(
        mode: Mode,
        unavailable: Option<&str>,
        refreshed: Option<Instant>,
    ) -> Publication {
        Publication {
            unavailable: unavailable.map(str::to_string),
            refreshed,
            ..Publication::new(mode, 7)
        }
    }

    #[test]
    fn limits_clamp_against_observed_replicas() {
        let l = Limits {
            min_replicas: 2,
            max_replicas: 20,
            max_step_up: Some(4),
            max_step_down: Some(1),
            no_decrease: false,
            no_increase: false,
            decided_from: None,
        };
        assert_eq!(l.clamp(50, 10), 14, "step up bounded");
        assert_eq!(l.clamp(1, 10), 9, "step down bounded");
        assert_eq!(l.clamp(1, 2), 2, "min honoured");
        assert_eq!(l.clamp(30, 19), 20, "max honoured");
        assert_eq!(l.clamp(12, 10), 12);
        let up_only = Limits {
            no_decrease: true,
            ..l
        };
        assert_eq!(up_only.clamp(3, 10), 10, "a guess never lowers");
        assert_eq!(up_only.clamp(12, 10), 12, "but may raise");
        let believed = Limits {
            decided_from: Some(12),
            ..l
        };
        assert_eq!(
            believed.clamp(9, 10),
            10,
            "decided against 12, finds 10: no lower"
        );
        assert_eq!(believed.clamp(11, 10), 11);
        assert_eq!(
            believed.clamp(11, 12),
            11,
            "as believed: the decision stands"
        );
        let read = l.read_only();
        assert_eq!(read.clamp(12, 10), 10);
        assert_eq!(read.clamp(3, 10), 10);
        assert_eq!(read.clamp(3, 1), 1, "a read writes nothing, even below min");
    }

    #[test]
    fn board_serves_only_fresh_auto_entries() {
        let board = Board::new(Duration::from_secs(60));
        let now = Instant::now();
        let mut m = HashMap::new();
        m.insert("a/ok".to_string(), publication(Mode::Auto, None, Some(now)));
        m.insert(
            "a/obs".to_string(),
            publication(Mode::Observe, None, Some(now)),
        );
        m.insert(
            "a/bad".to_string(),
            publication(Mode::Auto, Some("empty"), Some(now)),
        );
        m.insert("a/new".to_string(), publication(Mode::Auto, None, None));
        let old = now.checked_sub(Duration::from_secs(120));
        m.insert("a/old".to_string(), publication(Mode::Auto, None, old));
        let rx = board.subscribe();
        board.publish(m);
        assert!(rx.has_changed().unwrap());
        assert_eq!(board.get("a/ok").unwrap().desired_replicas, 7);
        assert!(matches!(
            board.get("a/obs"),
            Err(Unpublished::NotAuto { .. })
        ));
        assert!(matches!(
            board.get("a/bad"),
            Err(Unpublished::Unavailable { .. })
        ));
        assert!(matches!(
            board.get("a/new"),
            Err(Unpublished::Unavailable { .. })
        ));
        if old.is_some() {
            assert!(matches!(
                board.get("a/old"),
                Err(Unpublished::Unavailable { .. })
            ));
        }
        assert!(matches!(board.get("a/none"), Err(Unpublished::Unknown(_))));
    }
}
