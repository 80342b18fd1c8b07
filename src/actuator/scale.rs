//! The direct actuator: reads and writes the `/scale` subresource of Deployments and
//! StatefulSets (kube), only in `auto` mode, only from the Lease holder, never over another
//! autoscaler.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v1::Scale;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams};
use rand::Rng;

use super::{ActuateError, Actuator, Applied, LeaseElector, Limits, Target};
use crate::config::WorkloadKind;

/// First retry delay of an API request, ms; doubles on each retry, plus up to
/// `JITTER_MS` of jitter.
const BACKOFF_MS: u64 = 200;
const JITTER_MS: u64 = 100;

/// The longest time slept between the attempts of one request that fails `retries + 1`
/// times.
pub fn retry_backoff_max(retries: u32) -> Duration {
    let doubling = BACKOFF_MS.saturating_mul(2_u64.saturating_pow(retries).saturating_sub(1));
    Duration::from_millis(doubling.saturating_add(JITTER_MS.saturating_mul(u64::from(retries))))
}

/// Attempts of read-decide-write when the write meets a newer resourceVersion.
const CONFLICT_ATTEMPTS: u32 = 4;
/// How long the "is another autoscaler driving this?" answer is reused.
const MANAGED_TTL: Duration = Duration::from_secs(60);

/// Maps a kube error to the stage error (shared with the Lease).
pub(crate) fn map_kube_error(e: kube::Error, name: &str) -> ActuateError {
    match e {
        kube::Error::Api(s) => match s.code {
            403 => ActuateError::Forbidden(s.message),
            404 => ActuateError::TargetGone(name.to_string()),
            409 => ActuateError::Conflict(1),
            429 => ActuateError::Throttled {
                retry_after: Duration::from_secs(u64::from(
                    s.details
                        .as_ref()
                        .map_or(0, |d| d.retry_after_seconds)
                        .max(1),
                )),
            },
            500..=599 => ActuateError::Unavailable(format!("{} {}", s.code, s.message)),
            code => ActuateError::Rejected(format!("{code} {}", s.message)),
        },
        kube::Error::HyperError(e) => ActuateError::Unavailable(e.to_string()),
        kube::Error::Service(e) => ActuateError::Unavailable(e.to_string()),
        other => ActuateError::Rejected(other.to_string()),
    }
}

/// Writes `/scale` with a resourceVersion precondition.
pub struct ScaleActuator {
    client: kube::Client,
    leader: Option<Arc<LeaseElector>>,
    timeout: Duration,
    retries: u32,
    managed: Mutex<HashMap<String, (Instant, Option<String>)>>,
    throttled_until: Mutex<Option<Instant>>,
}

impl ScaleActuator {
    /// An actuator on `client`. With `leader`, only writes while it holds the Lease.
    /// `timeout` bounds each request; 5xx and timeouts are retried `retries` times.
    pub fn new(
        client: kube::Client,
        leader: Option<Arc<LeaseElector>>,
        timeout: Duration,
        retries: u32,
    ) -> Self {
        Self {
            client,
            leader,
            timeout,
            retries,
            managed: Mutex::new(HashMap::new()),
            throttled_until: Mutex::new(None),
        }
    }

    fn may_act(&self) -> Result<(), ActuateError> {
        if self.leader.as_ref().is_some_and(|l| !l.is_leader()) {
            return Err(ActuateError::NotLeader);
        }
        Ok(())
    }

    /// One request with the timeout, retried with backoff on 5xx and timeouts; a 429 makes
    /// every later request wait until its Retry-After has passed.
    async fn call<T, F, Fut>(&self, name: &str, f: F) -> Result<T, ActuateError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, kube::Error>>,
    {
        self.call_noting(name, f, &mut false).await
    }

    /// As [`Self::call`], setting `unsure` when an attempt timed out or got a 5xx and was
    /// retried: for a write, that attempt may have landed all the same.
    async fn call_noting<T, F, Fut>(
        &self,
        name: &str,
        f: F,
        unsure: &mut bool,
    ) -> Result<T, ActuateError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, kube::Error>>,
    {
        let mut attempt = 0;
        loop {
            // A retry may come seconds after the first try: the Lease may have been lost
            // meanwhile, and a write from a former holder is what the Lease exists to stop.
            if attempt > 0 {
                self.may_act()?;
            }
            if let Some(until) = self.throttled_until.lock().ok().and_then(|t| *t) {
                let now = Instant::now();
                if until > now {
                    return Err(ActuateError::Throttled {
                        retry_after: until - now,
                    });
                }
            }
            let r = match tokio::time::timeout(self.timeout, f()).await {
                Ok(r) => r.map_err(|e| map_kube_error(e, name)),
                Err(_) => Err(ActuateError::Unavailable(format!(
                    "no answer within {:?}",
                    self.timeout
                ))),
            };
            match r {
                Err(ActuateError::Throttled { retry_after }) => {
                    if let Ok(mut t) = self.throttled_until.lock() {
                        *t = Some(Instant::now() + retry_after);
                    }
                    return Err(ActuateError::Throttled { retry_after });
                }
                Err(ActuateError::Unavailable(_)) if attempt < self.retries => {
                    *unsure = true;
                    attempt += 1;
                    let backoff =
                        BACKOFF_MS * 2u64.pow(attempt - 1) + rand::rng().random_range(0..JITTER_MS);
                    tokio::time::sleep(Duration::from_millis(backoff)).await;
                }
                other => return other,
            }
        }
    }

    /// Refuses targets an HPA (KEDA's included) or a ScaledObject already drives.
    async fn check_not_managed(&self, target: &Target) -> Result<(), ActuateError> {
        let key = format!("{}/{}", target.namespace, target.name);
        if let Some((at, owner)) = self.managed.lock().ok().and_then(|m| m.get(&key).cloned())
            && at.elapsed() < MANAGED_TTL
        {
            return owner.map_or(Ok(()), |o| Err(ActuateError::ManagedByHpa(o)));
        }
        let kind = kind_name(target.kind);
        let hpas: Api<HorizontalPodAutoscaler> =
            Api::namespaced(self.client.clone(), &target.namespace);
        let lp = ListParams::default();
        let list = self.call(&target.name, || hpas.list(&lp)).await?;
        let mut owner = list.items.iter().find_map(|h| {
            let r = &h.spec.as_ref()?.scale_target_ref;
            (r.kind == kind && r.name == target.name).then(|| {
                format!(
                    "HorizontalPodAutoscaler {}/{}",
                    target.namespace,
                    h.metadata.name.as_deref().unwrap_or("?")
                )
            })
        });
        if owner.is_none() {
            let gvk = GroupVersionKind::gvk("keda.sh", "v1alpha1", "ScaledObject");
            let ar = ApiResource::from_gvk_with_plural(&gvk, "scaledobjects");
            let sos: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), &target.namespace, &ar);
            match self.call(&target.name, || sos.list(&lp)).await {
                Ok(list) => {
                    owner = list.items.iter().find_map(|so| {
                        let r = so.data.get("spec")?.get("scaleTargetRef")?;
                        let so_kind = r
                            .get("kind")
                            .and_then(|k| k.as_str())
                            .unwrap_or("Deployment");
                        (so_kind == kind && r.get("name")?.as_str()? == target.name).then(|| {
                            format!(
                                "ScaledObject {}/{}",
                                target.namespace,
                                so.metadata.name.as_deref().unwrap_or("?")
                            )
                        })
                    });
                }
                // KEDA is not installed: nothing can drive the target through it.
                Err(ActuateError::TargetGone(_)) => {}
                Err(e) => return Err(e),
            }
        }
        if let Ok(mut m) = self.managed.lock() {
            m.insert(key, (Instant::now(), owner.clone()));
        }
        owner.map_or(Ok(()), |o| Err(ActuateError::ManagedByHpa(o)))
    }

    async fn get_scale(&self, target: &Target) -> Result<Scale, ActuateError> {
        let name = target.name.as_str();
        match target.kind {
            WorkloadKind::Deployment => {
                let api: Api<Deployment> = Api::namespaced(self.client.clone(), &target.namespace);
                self.call(name, || api.get_scale(name)).await
            }
            WorkloadKind::StatefulSet => {
                let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), &target.namespace);
                self.call(name, || api.get_scale(name)).await
            }
        }
    }

    /// Writes `body`; `unsure` as in [`Self::call_noting`].
    async fn replace_scale(
        &self,
        target: &Target,
        body: &Scale,
        unsure: &mut bool,
    ) -> Result<Scale, ActuateError> {
        let name = target.name.as_str();
        let pp = PostParams::default();
        match target.kind {
            WorkloadKind::Deployment => {
                let api: Api<Deployment> = Api::namespaced(self.client.clone(), &target.namespace);
                self.call_noting(name, || api.replace_scale(name, &pp, body), unsure)
                    .await
            }
            WorkloadKind::StatefulSet => {
                let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), &target.namespace);
                self.call_noting(name, || api.replace_scale(name, &pp, body), unsure)
                    .await
            }
        }
    }
}

fn kind_name(kind: WorkloadKind) -> &'static str {
    match kind {
        WorkloadKind::Deployment => "Deployment",
        WorkloadKind::StatefulSet => "StatefulSet",
    }
}

#[async_trait::async_trait]
impl Actuator for ScaleActuator {
    async fn apply(
        &self,
        target: &Target,
        desired: u32,
        limits: Limits,
        expect: Option<u32>,
    ) -> Result<Applied, ActuateError> {
        self.may_act()?;
        self.check_not_managed(target).await?;
        // A write that may have landed unanswered: (replicas written, replicas it replaced).
        let mut maybe_landed = None;
        for attempt in 1..=CONFLICT_ATTEMPTS {
            let scale = self.get_scale(target).await?;
            let observed = scale
                .spec
                .as_ref()
                .and_then(|s| s.replicas)
                .and_then(|r| u32::try_from(r).ok())
                .unwrap_or(0);
            if observed == 0 {
                // Someone scaled it to zero on purpose (HPA and KEDA treat this as paused).
                return Err(ActuateError::Paused(format!(
                    "{}/{} is at 0 replicas",
                    target.namespace, target.name
                )));
            }
            if let Some(expected) = expect
                && observed != expected
                && observed != desired
            {
                return Err(ActuateError::Stale { observed, expected });
            }
            // Re-decide against what is really there.
            let want = limits.clamp(desired, observed);
            if want == observed {
                // A write whose answer was lost (a timeout or 5xx, then a 409 on its retry,
                // since it had changed the resourceVersion) is ours: reported as written,
                // from the replicas it changed, so the change is counted and audited.
                let landed = maybe_landed.filter(|&(wrote, _)| wrote == observed);
                return Ok(Applied {
                    previous: landed.map_or(observed, |(_, from)| from),
                    replicas: observed,
                    written: landed.is_some(),
                });
            }
            self.may_act()?;
            let replicas = i32::try_from(want)
                .map_err(|_| ActuateError::Rejected(format!("{want} replicas is out of range")))?;
            let mut body = scale;
            body.status = None;
            body.spec.get_or_insert_with(Default::default).replicas = Some(replicas);
            let mut unsure = false;
            match self.replace_scale(target, &body, &mut unsure).await {
                Ok(_) => {
                    return Ok(Applied {
                        previous: observed,
                        replicas: want,
                        written: true,
                    });
                }
                Err(ActuateError::Conflict(_)) if attempt < CONFLICT_ATTEMPTS => {
                    maybe_landed = unsure.then_some((want, observed));
                    let jitter = rand::rng().random_range(10..50) * u64::from(attempt);
                    tokio::time::sleep(Duration::from_millis(jitter)).await;
                }
                Err(ActuateError::Conflict(_)) => return Err(ActuateError::Conflict(attempt)),
                Err(e) => return Err(e),
            }
        }
        Err(ActuateError::Conflict(CONFLICT_ATTEMPTS))
    }
}
