//! Leader election on a `coordination.k8s.io/v1` Lease: with several replicas of prescale,
//! only the holder patches `/scale`.
//!
//! Follows client-go's rule: expiry is judged on *locally observed* time (when this replica
//! last saw the record change), never by comparing clocks with the holder; every write carries
//! the resourceVersion it read, so two candidates cannot both win one round.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio_util::sync::CancellationToken;

use super::ActuateError;
use super::scale::map_kube_error;

/// Where the Lease is and who we are.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// How long a holder keeps the Lease without renewing.
    pub duration: Duration,
}

impl LeaseConfig {
    /// Renew this often (a third of the duration).
    pub fn renew_every(&self) -> Duration {
        self.duration / 3
    }
    /// Stop acting this long after the last successful renewal (two thirds of the
    /// duration), before any other candidate can consider the Lease expired.
    fn act_for(&self) -> Duration {
        self.duration * 2 / 3
    }
}

#[derive(Debug, Default)]
struct Seen {
    /// (holder, renew time, transitions) as last read.
    record: Option<(String, Option<MicroTime>, i32)>,
    /// When that record was first seen, locally.
    at: Option<Instant>,
    /// We lead until then.
    leader_until: Option<Instant>,
}

/// One candidate.
pub struct LeaseElector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    seen: Mutex<Seen>,
}

impl LeaseElector {
    /// A candidate using `client`.
    pub fn new(client: kube::Client, cfg: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            seen: Mutex::new(Seen::default()),
        }
    }

    /// Whether this replica may act now.
    pub fn is_leader(&self) -> bool {
        self.seen
            .lock()
            .ok()
            .and_then(|s| s.leader_until)
            .is_some_and(|t| Instant::now() < t)
    }

    fn set_leader(&self, until: Option<Instant>) {
        if let Ok(mut s) = self.seen.lock() {
            s.leader_until = until;
        }
    }

    /// One round: create the Lease, renew ours, or take an expired one. Returns whether we
    /// lead afterwards.
    ///
    /// # Errors
    /// API errors other than losing the race (a 409 is just "not leader").
    pub async fn try_acquire_or_renew(&self) -> Result<bool, ActuateError> {
        let started = Instant::now();
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let seconds = i32::try_from(self.cfg.duration.as_secs().max(1)).unwrap_or(i32::MAX);
        let current = match self.api.get_opt(&self.cfg.name).await {
            Ok(l) => l,
            Err(e) => {
                self.expire_if_late();
                return Err(map_kube_error(e, &self.cfg.name));
            }
        };
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.cfg.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => {
                    self.set_leader(Some(started + self.cfg.act_for()));
                    Ok(true)
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(map_kube_error(e, &self.cfg.name)),
            };
        };
        // Another holder's record is timed when its answer arrived, not when we asked: the
        // later instant, so a slow GET can never make someone else's Lease look expired early.
        let observed = Instant::now();
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let record = (
            holder.clone(),
            spec.renew_time.clone(),
            spec.lease_transitions.unwrap_or(0),
        );
        let their_duration = Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(seconds)).unwrap_or(1),
        );
        let expired = {
            let Ok(mut s) = self.seen.lock() else {
                return Ok(false);
            };
            if s.record.as_ref() != Some(&record) {
                s.record = Some(record);
                s.at = Some(observed);
            }
            s.at.is_some_and(|at| observed.duration_since(at) > their_duration)
        };
        let ours = holder == self.cfg.identity;
        if !ours && !holder.is_empty() && !expired {
            self.set_leader(None);
            return Ok(false);
        }
        let mut next = spec;
        if !ours {
            next.acquire_time = Some(now.clone());
            next.lease_transitions = Some(next.lease_transitions.unwrap_or(0) + 1);
        }
        next.holder_identity = Some(self.cfg.identity.clone());
        next.renew_time = Some(now);
        next.lease_duration_seconds = Some(seconds);
        lease.spec = Some(next);
        // `lease.metadata.resource_version` is what we read: a concurrent write makes this 409.
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                self.set_leader(Some(started + self.cfg.act_for()));
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                self.set_leader(None);
                Ok(false)
            }
            Err(e) => {
                self.expire_if_late();
                Err(map_kube_error(e, &self.cfg.name))
            }
        }
    }

    /// Leadership is only ever kept by successful renewals; a failed round does not extend it
    /// (`leader_until` already bounds it), this just drops it once it has passed.
    fn expire_if_late(&self) {
        if !self.is_leader() {
            self.set_leader(None);
        }
    }

    /// Gives the Lease up (at shutdown) so another replica takes over at once.
    pub async fn release(&self) {
        if !self.is_leader() {
            return;
        }
        self.set_leader(None);
        let Ok(Some(mut lease)) = self.api.get_opt(&self.cfg.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
        if let Err(e) = self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            tracing::warn!(error = %e, "Could not release the Lease");
        }
    }

    /// Campaigns until `shutdown`, then releases the Lease.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut was = false;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(now) if now != was => {
                    tracing::info!(identity = %self.cfg.identity, leader = now, "Leadership changed");
                    was = now;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "Lease round failed"),
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(self.cfg.renew_every()) => {}
            }
        }
        self.release().await;
    }
}
