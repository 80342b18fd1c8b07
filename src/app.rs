//! The service wiring (`prescale serve`): the only module that knows every concrete type.
//! It builds the stages from the config, runs the loop, serves HTTP, snapshots state, and
//! shuts down on SIGTERM.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::actuator::{ActuateError, Actuator, Applied, Board, Limits, Publication, Target};
use crate::collector::{CollectError, MetricSource, Sample, TimeWindow};
use crate::config::{ActuatorKind, Config, Mode, WorkloadConfig};
use crate::domain::{Decision, Forecast, Term, Timestamp};
use crate::forecast::{Engine, ForecastError, ModelKind, ModelPreset};
use crate::metrics::{
    ActuationLabels, ErrorLabels, ForecastLabels, HORIZONS, Metrics, ModelLabels, StateLabels,
    TermLabels, WorkloadLabels,
};
use crate::policy::{HpaPolicy, Observation, PolicyConfig, PredictivePolicy, ScalingPolicy};
use crate::store::{
    Controls, Override, RecState, Recommendation, RecommendationReason, Store, StoreError, new_id,
};

/// Who approved a change that `auto_approve_scale_up_percent` let through.
pub const AUTONOMY: &str = "prescale:autonomy";
/// Why a `recommend` workload is not published before its first applied recommendation.
const NOTHING_APPLIED: &str = "no recommendation approved and applied yet";
/// A workload's reason while its warm-up waits for a loop's budget.
const WARM_UP_QUEUED: &str = "warm_up_queued";
/// A workload that started over after a panic in its step (a bug, counted as
/// `prescale_errors_total{stage="loop",kind="panic"}`).
const INTERNAL_ERROR: &str = "internal_error";

/// Who applied a change in `auto` mode.
pub const AUTO: &str = "prescale:auto";

/// A batch of samples longer than this is a warm-up (its tail is replayed through the
/// backtests and the tuner) and waits when the loop's warm-up budget is spent; shorter ones,
/// such as a restart's gap of an hour at a 1-minute step, are processed at once.
const WARMUP_MIN_STEPS: usize = 64;

/// What every workload's pass of one loop shares.
struct LoopPass {
    /// The loop's time.
    now: Timestamp,
    /// Whether scale-downs are safe (few workloads failing).
    safe_to_act: bool,
    /// Cold warm-ups start before this (the first of the loop starts anyway).
    deadline: std::time::Instant,
    started: std::sync::atomic::AtomicBool,
    /// Workloads whose warm-up still waits after their pass.
    waiting: std::sync::atomic::AtomicUsize,
}

impl LoopPass {
    /// Admits a cold warm-up: the loop's first always, the others within its budget.
    fn admit_warm_up(&self) -> bool {
        let first = !self.started.swap(true, std::sync::atomic::Ordering::SeqCst);
        first || std::time::Instant::now() < self.deadline
    }
}

/// What one workload's pass asks the async part of the loop to do.
#[derive(Default)]
struct Step {
    /// A `/scale` write: target, desired replicas, limits.
    apply: Option<(Target, u32, Limits)>,
    /// A recommendation to record.
    propose: Option<Recommendation>,
}

/// A workload's visible state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkloadState {
    /// Collecting history; no calibrated forecast yet (reactive policy).
    WarmingUp,
    /// Forecasting normally.
    Healthy,
    /// The latest fetch failed: replicas are held, never lowered.
    Degraded,
    /// Forecasts are worse than reacting would be: the reactive forecast is used.
    Demoted,
    /// Restored from the snapshot at start, not yet refreshed.
    Restored,
}

impl WorkloadState {
    /// Every state, for one-hot metrics.
    pub const ALL: [&'static str; 5] = ["warming_up", "healthy", "degraded", "demoted", "restored"];

    /// Stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadState::WarmingUp => "warming_up",
            WorkloadState::Healthy => "healthy",
            WorkloadState::Degraded => "degraded",
            WorkloadState::Demoted => "demoted",
            WorkloadState::Restored => "restored",
        }
    }
}

/// What the API shows of a workload (also what is snapshotted).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkloadView {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Mode.
    pub mode: Mode,
    /// State.
    pub state: WorkloadState,
    /// Why the state is what it is (the error kind when degraded; `warm_up_queued` while
    /// its warm-up waits for a loop's budget).
    pub reason: Option<String>,
    /// The last error, if any, in words.
    pub last_error: Option<String>,
    /// Latest demand sample time.
    pub last_sample_at: Option<Timestamp>,
    /// Latest demand.
    pub demand: Option<f64>,
    /// Replicas prescale wants.
    pub desired_replicas: Option<u32>,
    /// Replicas the workload has, when known (the dry-run actuator assumes `desired`).
    pub current_replicas: Option<u32>,
    /// Term of the policy that decided.
    pub term: Option<String>,
    /// Model in use.
    pub model: Option<String>,
    /// The latest forecast (points after the latest sample).
    // Shared by the loop's view and the API's copy: it is most of a view's size.
    pub forecast: Option<Arc<ForecastView>>,
    /// How recommendations reach the cluster.
    #[serde(default)]
    pub actuator: ActuatorKind,
    /// The last `/scale` actuator failure, if the last attempt failed.
    #[serde(default)]
    pub actuator_error: Option<String>,
    /// Paused through the API: nothing is proposed or applied.
    #[serde(default)]
    pub paused: bool,
}

/// A forecast as the API and the snapshot carry it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ForecastView {
    /// Time of the last sample used.
    pub origin: Timestamp,
    /// Seconds between points.
    pub step: u64,
    /// Point forecast per step.
    // Single precision: six hours of steps are held per workload for the API and the page.
    pub point: Vec<f32>,
    /// Upper quantile per step.
    pub upper: Vec<f32>,
    /// Quantile level of `upper`.
    pub quantile: f64,
}

impl From<&Forecast> for ForecastView {
    fn from(f: &Forecast) -> Self {
        Self {
            origin: f.origin,
            step: f.step,
            point: f.point.iter().map(|&v| v as f32).collect(),
            upper: f.upper.iter().map(|&v| v as f32).collect(),
            quantile: f.quantile,
        }
    }
}

/// Where time comes from.
#[derive(Debug)]
pub enum Timeline {
    /// The wall clock.
    Wall,
    /// A virtual clock that advances `per_tick` seconds at every loop tick (the demo).
    Virtual {
        /// Current virtual time.
        now: std::sync::atomic::AtomicI64,
        /// Seconds added per tick.
        per_tick: i64,
    },
}

/// The wall clock, in Unix seconds.
fn wall_now() -> Timestamp {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Timeline {
    /// Now, without advancing a virtual clock.
    fn peek(&self) -> Timestamp {
        match self {
            Timeline::Wall => wall_now(),
            Timeline::Virtual { now, .. } => now.load(std::sync::atomic::Ordering::SeqCst),
        }
    }

    fn tick(&self) -> Timestamp {
        match self {
            Timeline::Wall => wall_now(),
            Timeline::Virtual { now, per_tick } => {
                now.fetch_add(*per_tick, std::sync::atomic::Ordering::SeqCst) + per_tick
            }
        }
    }
}

/// One workload's forecasting and policy state.
struct Runtime {
    cfg: WorkloadConfig,
    query: String,
    labels: WorkloadLabels,
    engine: Engine,
    /// The engine's preset, to start over with.
    preset: ModelPreset,
    policy: PredictivePolicy,
    lead_steps: usize,
    /// Steps at the end of a backfill replayed through the online backtest.
    replay_steps: usize,
    last_sample: Option<Timestamp>,
    current: Option<u32>,
    view: WorkloadView,
    publication: Publication,
    /// No `/scale` attempt before this (after 403, 404, 429, or another autoscaler).
    next_attempt: Option<std::time::Instant>,
    /// When `/scale` was last read successfully.
    last_read: Option<std::time::Instant>,
    /// Replicas of the last recommendation made (recommend mode), so one wish is proposed once.
    proposed: Option<u32>,
    /// The engine's refit count already added to `prescale_model_refits_total`.
    refits_counted: usize,
    /// Samples fetched for a warm-up that waits for a later loop's budget (the tail the
    /// warm-up replays; older ones are already in the engine), oldest first.
    backlog: Vec<Sample>,
    /// Decides, as the HPA would, while the warm-up waits (the predictive policy's tuner
    /// must see the replayed tail before any live step).
    interim: Option<HpaPolicy>,
}

/// The last `n` observed values of a workload and the time of the first.
pub type RecentFn = Box<dyn Fn(&str, usize) -> Option<(Timestamp, Vec<f64>)> + Send + Sync>;

/// Forecasts `steps` ahead for a workload (`namespace/name`), on demand.
pub type ForecastFn = Box<dyn Fn(&str, usize) -> Option<Forecast> + Send + Sync>;

/// State shared by the loop and the HTTP server.
pub struct Shared {
    /// Metrics.
    pub metrics: Metrics,
    /// Workload views, by `namespace/name`.
    pub views: RwLock<BTreeMap<String, WorkloadView>>,
    /// True once the first loop finished.
    pub ready: std::sync::atomic::AtomicBool,
    /// When the latest loop finished (the start, before the first): `/healthz` fails once
    /// it is older than `stall_after`.
    heartbeat: Mutex<std::time::Instant>,
    /// `loop.stall_after`.
    stall_after: Duration,
    /// What the KEDA endpoints serve.
    pub board: Arc<Board>,
    /// The review store, once attached.
    pub store: std::sync::OnceLock<Store>,
    /// Pause and pin per workload (`namespace/name`), mirrored from the store.
    pub controls: RwLock<std::collections::HashMap<String, Controls>>,
    /// Bumped by every change of `controls` made through this replica's API, so a mirror of
    /// the store read before that change does not undo it.
    controls_version: std::sync::atomic::AtomicU64,
    /// The time of the latest loop (Unix seconds; virtual in the demo): decisions made through
    /// the API are timed on the loop's clock, so expiry compares like with like.
    pub loop_now: std::sync::atomic::AtomicI64,
    /// Scheduled overrides per workload, mirrored from the store.
    pub overrides: RwLock<std::collections::HashMap<String, Vec<Override>>>,
    /// False while too many workloads fail at once (more than half, two loops running): then
    /// no workload is scaled down anywhere, since the data that looks fine may be partial.
    pub safe_to_act: std::sync::atomic::AtomicBool,
    /// Forecasts on demand for the API: (`namespace/name`, steps) to the forecast.
    pub forecaster: std::sync::OnceLock<ForecastFn>,
    /// Recent observed demand, for the review page's charts.
    pub recent: std::sync::OnceLock<RecentFn>,
    /// Woken by an approval, so the loop applies it without waiting for its next tick.
    pub approvals: tokio::sync::Notify,
}

impl Shared {
    /// How long no loop has finished, when that is longer than `loop.stall_after`.
    pub fn stalled(&self) -> Option<Duration> {
        let since = self
            .heartbeat
            .lock()
            .map(|h| h.elapsed())
            .unwrap_or(Duration::MAX);
        (since > self.stall_after).then_some(since)
    }

    /// Records a workload's controls as the store now has them (after a change through the
    /// API).
    pub fn set_controls(&self, key: String, c: Controls) {
        if let Ok(mut m) = self.controls.write() {
            m.insert(key, c);
            self.controls_version
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// A workload's controls (defaults when none were set).
    pub fn controls_of(&self, key: &str) -> Controls {
        self.controls
            .read()
            .ok()
            .and_then(|c| c.get(key).cloned())
            .unwrap_or_default()
    }

    /// Now on the loop's clock (the wall clock before the first loop).
    pub fn now(&self) -> Timestamp {
        match self.loop_now.load(std::sync::atomic::Ordering::SeqCst) {
            0 => wall_now(),
            t => t,
        }
    }

    /// The highest minimum of a workload's overrides open at `now`.
    pub fn scheduled_minimum(&self, key: &str, now: Timestamp) -> Option<u32> {
        let o = self.overrides.read().ok()?;
        o.get(key)?
            .iter()
            .filter(|o| o.is_open(now))
            .map(|o| o.min_replicas)
            .max()
    }
}

/// The service.
pub struct Service {
    cfg: Config,
    source: Arc<dyn MetricSource>,
    runtimes: Vec<Arc<Mutex<Runtime>>>,
    shared: Arc<Shared>,
    timeline: Timeline,
    step: u64,
    tick: Duration,
    last_snapshot: Mutex<Option<std::time::Instant>>,
    /// When the model state was last written (and whether a write is under way).
    last_models: Mutex<Option<std::time::Instant>>,
    writing_models: Arc<std::sync::atomic::AtomicBool>,
    actuator: Option<Arc<dyn Actuator>>,
    /// Consecutive loops with more than half of the workloads failing.
    failing_loops: std::sync::atomic::AtomicU32,
    /// Consecutive loops without (the way back to safe: a flapping source keeps it unsafe).
    healthy_loops: std::sync::atomic::AtomicU32,
    /// Loop time of the last prune of the review store.
    last_prune: std::sync::atomic::AtomicI64,
    /// Loop time of the first look at the approved recommendations (after a restart, the
    /// grace of one still live when the service stopped runs again from here).
    started: std::sync::OnceLock<Timestamp>,
    /// About when the previous run stopped: the newest sample of the restored views (0: not
    /// known, nothing restored).
    stopped_at: std::sync::atomic::AtomicI64,
}

/// Share of failing workloads above which a loop counts as unhealthy.
const UNSAFE_FAILING_SHARE: f64 = 0.5;
/// Unhealthy loops in a row before scale-downs stop everywhere.
const UNSAFE_LOOPS: u32 = 2;
/// Healthy loops in a row before they may start again: one good loop between failing ones is
/// not a recovery.
const SAFE_AGAIN_LOOPS: u32 = 3;

/// How long a workload is left alone after the actuator was refused for a reason that a
/// retry next loop would not fix (403, 404, another autoscaler, paused).
const REFUSED_BACKOFF: Duration = Duration::from_secs(300);

/// While the desired replicas equal the last replicas read, `/scale` is re-read only this
/// often (to notice someone else's change) rather than every loop: API server load.
const RESYNC_EVERY: Duration = Duration::from_secs(300);

/// How often the review store is pruned of what `store.retention` made old.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Most recommendations (and most audit entries) deleted by one loop's prune: the first
/// prune of a long history is spread over loops instead of holding the write lock for long.
const PRUNE_BATCH: u32 = 10_000;

/// Loops after its approval within which an approved recommendation must be applied once
/// past its `valid_until`; later it fails as expired. One still live when the service
/// stopped has them again after the restart (the stop does not count), if the stop was
/// shorter than the workload's `recommendation_ttl`, and never past its deadline plus that.
const APPLY_GRACE_STEPS: i64 = 3;

/// Least time between two writes of the model state while running (it is written after
/// the first loop, then at this pace, and at shutdown): tens of KB per workload.
const MODELS_EVERY: Duration = Duration::from_secs(900);

/// Format of `models.bin`; a file of another format is not read (workloads start cold).
/// 4: each entry holds the policy's state too (stabilisation, headroom tuner).
/// 5: the forecasting state holds each candidate's fitted model (no refit at restart).
/// 6: the policy's state holds the settings it was made with (refused when they changed).
/// 7: the forecasting state holds the share of zero samples (the `auto` residual scale).
const MODELS_FORMAT: u32 = 7;

/// How `models.bin` is encoded (bincode, fixed-width integers), written and read alike.
fn models_codec() -> impl bincode::Options + Copy {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
}

/// One workload's entry in `models.bin`.
type ModelsEntry = (
    String,
    crate::forecast::EngineState,
    crate::policy::PolicyState,
);

/// Clears a flag when dropped.
struct ClearOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The head of `models.bin`: then `count` entries of (`namespace/name`, forecasting state,
/// policy state).
#[derive(Serialize, Deserialize)]
struct ModelsHeader {
    format: u32,
    count: u64,
}

/// What [`Service::restore`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// Workloads whose last views were restored.
    pub views: usize,
    /// Workloads whose forecasting state was restored.
    pub models: usize,
}

/// Least time between two snapshots while running.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(30);

const MODELS: [ModelKind; 5] = [
    ModelKind::Persistence,
    ModelKind::SeasonalNaive,
    ModelKind::MstlEts,
    ModelKind::Linear,
    ModelKind::DampedTrend,
];
const TERMS: [Term; 8] = [
    Term::Forecast,
    Term::ReactiveFloor,
    Term::Reactive,
    Term::Stabilization,
    Term::StepLimit,
    Term::MinReplicas,
    Term::MaxReplicas,
    Term::MissingData,
];

impl Service {
    /// Builds the service: one engine and policy per workload.
    ///
    /// # Errors
    /// A model preset or policy setting that cannot be used.
    pub fn new(
        cfg: Config,
        source: Arc<dyn MetricSource>,
        timeline: Timeline,
        step: u64,
        tick: Duration,
    ) -> anyhow::Result<Self> {
        Self::with_actuator(cfg, source, timeline, step, tick, None)
    }

    /// As [`Service::new`], with the `/scale` actuator used by `actuator: scale` workloads in
    /// `auto` mode (without one, they are held and their state says why).
    ///
    /// # Errors
    /// A model preset or policy setting that cannot be used.
    pub fn with_actuator(
        cfg: Config,
        source: Arc<dyn MetricSource>,
        timeline: Timeline,
        step: u64,
        tick: Duration,
        actuator: Option<Arc<dyn Actuator>>,
    ) -> anyhow::Result<Self> {
        let shared = Arc::new(Shared {
            metrics: Metrics::new(),
            views: RwLock::new(BTreeMap::new()),
            ready: std::sync::atomic::AtomicBool::new(false),
            heartbeat: Mutex::new(std::time::Instant::now()),
            stall_after: cfg.loop_.stall_after(),
            board: Arc::new(Board::new(
                cfg.keda.stale_after(cfg.loop_.interval.max(tick)),
            )),
            store: std::sync::OnceLock::new(),
            controls: RwLock::new(std::collections::HashMap::new()),
            controls_version: std::sync::atomic::AtomicU64::new(0),
            overrides: RwLock::new(std::collections::HashMap::new()),
            loop_now: std::sync::atomic::AtomicI64::new(0),
            safe_to_act: std::sync::atomic::AtomicBool::new(true),
            forecaster: std::sync::OnceLock::new(),
            recent: std::sync::OnceLock::new(),
            approvals: tokio::sync::Notify::new(),
        });
        shared
            .metrics
            .workloads
            .set(i64::try_from(cfg.workloads.len()).unwrap_or(i64::MAX));
        // Every error series exists from the start at 0, so rates and dashboards see them.
        let kinds = CollectError::KINDS
            .iter()
            .map(|k| ("collector", *k))
            .chain(ForecastError::KINDS.iter().map(|k| ("forecast", *k)))
            .chain(ActuateError::KINDS.iter().map(|k| ("actuator", *k)))
            .chain(StoreError::KINDS.iter().map(|k| ("store", *k)))
            .chain(std::iter::once(("store", "snapshot")));
        for (stage, kind) in kinds {
            let _ = shared
                .metrics
                .errors
                .get_or_create(&ErrorLabels { stage, kind });
        }
        let mut runtimes = Vec::new();
        for w in &cfg.workloads {
            let mut preset = ModelPreset::load(&w.model)?;
            if let Some(q) = w.quantile {
                preset.quantile = q;
            }
            // Keep no more history than the loop backfills.
            preset.history = preset.history.min(cfg.loop_.history);
            let mut pc = PolicyConfig::new(
                w.capacity_per_replica,
                w.min_replicas,
                w.max_replicas,
                w.startup.as_secs(),
                step,
            );
            pc.target_utilization = w.target_utilization;
            let lead_steps = pc.lead_seconds().div_ceil(step) as usize;
            let view = WorkloadView {
                namespace: w.namespace.clone(),
                name: w.name.clone(),
                mode: w.mode,
                state: WorkloadState::WarmingUp,
                reason: None,
                last_error: None,
                last_sample_at: None,
                demand: None,
                desired_replicas: None,
                current_replicas: None,
                term: None,
                model: None,
                forecast: None,
                actuator: w.actuator,
                actuator_error: None,
                paused: false,
            };
            let publication = Publication {
                unavailable: Some("no data yet".to_string()),
                ..Publication::new(w.mode, w.min_replicas)
            };
            runtimes.push(Arc::new(Mutex::new(Runtime {
                query: w.render_query(),
                // Shared by every series of the workload, not copied into each.
                labels: WorkloadLabels {
                    namespace: w.namespace.as_str().into(),
                    workload: w.name.as_str().into(),
                },
                engine: new_engine(preset.clone(), step, lead_steps, &w.key()),
                preset,
                policy: PredictivePolicy::new(pc)
                    .with_context(|| format!("workload {}", w.key()))?,
                lead_steps,
                replay_steps: (2 * 86_400 / step.max(1)) as usize,
                last_sample: None,
                current: None,
                view,
                publication,
                next_attempt: None,
                last_read: None,
                proposed: None,
                refits_counted: 0,
                backlog: Vec::new(),
                interim: None,
                cfg: w.clone(),
            })));
        }
        let by_key: std::collections::HashMap<String, Arc<Mutex<Runtime>>> = runtimes
            .iter()
            .filter_map(|rt| rt.lock().ok().map(|r| (r.cfg.key(), rt.clone())))
            .collect();
        let by_key2 = by_key.clone();
        let _ = shared
            .forecaster
            .set(Box::new(move |key: &str, steps: usize| {
                let rt = by_key.get(key)?;
                let mut rt = rt.lock().ok()?;
                // Only once the loop has forecast from the latest sample: a first forecast
                // at an origin refits and feeds the backtest and calibration, and decisions
                // must not depend on whether someone looked.
                rt.engine
                    .forecast_is_current()
                    .then(|| rt.engine.forecast(steps).ok())
                    .flatten()
            }));
        let _ = shared.recent.set(Box::new(move |key: &str, n: usize| {
            let rt = by_key2.get(key)?;
            let rt = rt.lock().ok()?;
            rt.last_sample?;
            Some(rt.engine.recent(n))
        }));
        Ok(Self {
            cfg,
            source,
            runtimes,
            shared,
            timeline,
            step,
            tick,
            last_snapshot: Mutex::new(None),
            last_models: Mutex::new(None),
            writing_models: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            actuator,
            failing_loops: std::sync::atomic::AtomicU32::new(0),
            healthy_loops: std::sync::atomic::AtomicU32::new(0),
            last_prune: std::sync::atomic::AtomicI64::new(i64::MIN),
            started: std::sync::OnceLock::new(),
            stopped_at: std::sync::atomic::AtomicI64::new(0),
        })
    }

    /// State shared with the HTTP server.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    fn snapshot_path(&self) -> PathBuf {
        self.cfg.data_dir.join("snapshot.json")
    }

    fn models_path(&self) -> PathBuf {
        self.cfg.data_dir.join("models.bin")
    }

    /// Loads the last snapshots: the views (forecasts, decisions), marked restored, and each
    /// workload's forecasting state, so it goes on from where it stopped instead of
    /// backfilling and replaying days of history. A model state that cannot be used (a
    /// damaged file, other settings, older than the history window) is skipped with a
    /// warning: that workload starts cold.
    ///
    /// # Errors
    /// A view snapshot that exists but cannot be read or parsed.
    pub fn restore(&self) -> anyhow::Result<Restored> {
        let views = self.restore_views()?;
        let (models, error) = self.restore_models();
        if let Some(e) = error {
            tracing::warn!(error = %e, restored = models, "Model state not all restored; the rest start cold");
            count(&self.shared.metrics, "store", "snapshot");
        }
        Ok(Restored { views, models })
    }

    /// Restores what `models.bin` holds; the count restored, and the error that stopped the
    /// reading early, if one did.
    fn restore_models(&self) -> (usize, Option<anyhow::Error>) {
        let mut n = 0;
        let error = self.read_models(&mut n).err();
        (n, error)
    }

    fn read_models(&self, n: &mut usize) -> anyhow::Result<()> {
        use bincode::Options;
        let path = self.models_path();
        if !path.exists() {
            return Ok(());
        }
        let file = std::fs::File::open(&path).with_context(|| format!("{}", path.display()))?;
        // No length read from the file may ask for more than the file holds (a damaged
        // length would otherwise be an allocation of exabytes).
        let limit = file.metadata()?.len();
        let codec = || models_codec().with_limit(limit);
        let mut r = std::io::BufReader::new(file);
        let header: ModelsHeader = codec()
            .deserialize_from(&mut r)
            .with_context(|| format!("{}", path.display()))?;
        if header.format != MODELS_FORMAT {
            anyhow::bail!(
                "{}: format {} (this build reads {MODELS_FORMAT})",
                path.display(),
                header.format
            );
        }
        let now = self.timeline.peek();
        let history = self.cfg.loop_.history.as_secs() as i64;
        for _ in 0..header.count {
            let (key, state, policy): ModelsEntry = codec()
                .deserialize_from(&mut r)
                .with_context(|| format!("{}", path.display()))?;
            let Some(rt) = self.runtime(&key) else {
                continue;
            };
            let Ok(mut rt) = rt.lock() else { continue };
            // Only a state from the past, and recent enough that the gap since can be
            // fetched: else the history window is better refetched whole.
            if !state
                .last_sample()
                .is_some_and(|t| t <= now && now - t < history)
            {
                continue;
            }
            // Restored before the first loop, so onto the engine as built; a refused state
            // leaves it unchanged (cold).
            let saved_at = state.last_sample();
            match rt.engine.restore(state) {
                Ok(()) => {
                    rt.last_sample = rt.engine.last_sample();
                    rt.refits_counted = rt.engine.status().refits;
                    *n += 1;
                    // A policy state that does not fit leaves the policy fresh: it reacts
                    // until its headroom tuner has scored enough decisions again.
                    if let Err(e) = rt.policy.restore(policy) {
                        tracing::warn!(workload = %key, error = %e, "Policy starts fresh");
                    } else if saved_at.is_some_and(|t| now - t > self.step as i64) {
                        // Saved more than a loop ago (every 900 s while running, so a kill -9
                        // loses up to that much of the window).
                        rt.policy.resume_after_gap();
                    }
                }
                Err(e) => tracing::warn!(workload = %key, error = %e, "Starting cold"),
            }
        }
        Ok(())
    }

    fn restore_views(&self) -> anyhow::Result<usize> {
        let path = self.snapshot_path();
        if !path.exists() {
            return Ok(0);
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
        let saved: BTreeMap<String, WorkloadView> =
            serde_json::from_str(&text).with_context(|| format!("{}", path.display()))?;
        if let Some(t) = saved.values().filter_map(|v| v.last_sample_at).max() {
            self.stopped_at
                .store(t, std::sync::atomic::Ordering::SeqCst);
        }
        let mut n = 0;
        for rt in &self.runtimes {
            let Ok(mut rt) = rt.lock() else { continue };
            if let Some(v) = saved.get(&rt.cfg.key()) {
                rt.view = WorkloadView {
                    state: WorkloadState::Restored,
                    mode: rt.cfg.mode,
                    ..v.clone()
                };
                // Where the truth is `/scale`, replicas from a snapshot are only a guess: the
                // workload is read again before anything is decided from them.
                if !rt.reads_scale() {
                    rt.current = v.current_replicas;
                }
                n += 1;
            }
        }
        self.publish_views();
        Ok(n)
    }

    fn publish_views(&self) {
        let mut views = BTreeMap::new();
        let mut board = std::collections::HashMap::new();
        for rt in &self.runtimes {
            if let Ok(rt) = rt.lock() {
                views.insert(rt.cfg.key(), rt.view.clone());
                board.insert(rt.cfg.key(), rt.publication.clone());
            }
        }
        if let Ok(mut v) = self.shared.views.write() {
            *v = views;
        }
        self.shared.board.publish(board);
    }

    /// Writes the views to the data directory: a temporary file, fsync, then rename, so a
    /// crash leaves either the old or the new snapshot, never a torn one.
    fn write_snapshot(&self) -> anyhow::Result<()> {
        let views = self
            .shared
            .views
            .read()
            .map_err(|_| anyhow::anyhow!("views lock poisoned"))?
            .clone();
        write_atomic(
            &self.snapshot_path(),
            serde_json::to_string(&views)?.as_bytes(),
        )
    }

    /// One pass over every workload at time `now`.
    pub async fn run_once(&self, now: Timestamp) {
        let clock = std::time::Instant::now();
        self.shared
            .loop_now
            .store(now, std::sync::atomic::Ordering::SeqCst);
        if let Some(store) = self.shared.store.get()
            && let Err(e) = self.sync_from_store(store).await
        {
            tracing::warn!(error = %e, "Could not read the store");
            count(&self.shared.metrics, "store", e.kind());
        }
        let end = now.div_euclid(self.step as i64) * self.step as i64;
        let history = self.cfg.loop_.history.as_secs() as i64;
        // Read once: the loop's own failures update it after the loop.
        let pass = Arc::new(LoopPass {
            now,
            safe_to_act: self
                .shared
                .safe_to_act
                .load(std::sync::atomic::Ordering::SeqCst),
            deadline: clock + self.cfg.loop_.warmup_budget(),
            started: std::sync::atomic::AtomicBool::new(false),
            waiting: std::sync::atomic::AtomicUsize::new(0),
        });
        let jobs: Vec<_> = self
            .runtimes
            .iter()
            .cloned()
            .map(|rt| {
                let pass = pass.clone();
                let source = self.source.clone();
                let shared = self.shared.clone();
                let actuator = self.actuator.clone();
                let step = self.step;
                async move {
                    let (query, last) = {
                        let r = lock_or_start_over(&rt, &shared.metrics);
                        (r.query.clone(), r.newest_sample())
                    };
                    let start = last.map_or(end - history, |l| l + step as i64);
                    let fetched = if start > end {
                        Ok(Vec::new())
                    } else {
                        let t = std::time::Instant::now();
                        let r = source.fetch(&query, TimeWindow { start, end, step }).await;
                        shared
                            .metrics
                            .collector_duration
                            .observe(t.elapsed().as_secs_f64());
                        r
                    };
                    // Fitting is CPU-bound: keep it off the async workers.
                    let rt2 = rt.clone();
                    let shared2 = shared.clone();
                    let step = tokio::task::spawn_blocking(move || {
                        let Ok(mut r) = rt2.lock() else {
                            return Step::default();
                        };
                        let key = r.cfg.key();
                        let controls = shared2.controls_of(&key);
                        let floor = shared2.scheduled_minimum(&key, now);
                        r.process(fetched, &pass, &shared2.metrics, &controls, floor)
                    })
                    .await
                    .unwrap_or_else(|e| {
                        // A bug, not data: the workload starts over now (and is counted),
                        // rather than drop out of every later loop behind a poisoned lock.
                        tracing::error!(error = %e, "Workload step panicked; starting it over");
                        drop(lock_or_start_over(&rt, &shared.metrics));
                        Step::default()
                    });
                    if let Some(rec) = step.propose {
                        propose(&rt, &shared, &rec).await;
                    }
                    if let Some((target, desired, limits)) = step.apply {
                        let outcome = match &actuator {
                            Some(a) => a.apply(&target, desired, limits, None).await,
                            None => Err(no_kube()),
                        };
                        let applied = outcome.as_ref().ok().copied();
                        let reason = rt.lock().ok().map(|mut r| {
                            r.record_apply(outcome, &shared.metrics);
                            r.publication.clone()
                        });
                        // auto mode records what it applied, like an approved recommendation.
                        if let (Some(a), Some(store), Some(p)) =
                            (applied.filter(|a| a.written), shared.store.get(), reason)
                        {
                            let rec = applied_record(&target, a, &p, now);
                            if let Err(e) = store.create(&rec, AUTO).await {
                                tracing::warn!(error = %e, "Could not record an applied change");
                                count(&shared.metrics, "store", e.kind());
                            }
                        }
                    }
                }
            })
            .collect();
        futures::stream::iter(jobs)
            .buffer_unordered(self.cfg.loop_.concurrency)
            .collect::<Vec<()>>()
            .await;
        let waiting = pass.waiting.load(std::sync::atomic::Ordering::SeqCst);
        self.shared.metrics.warmups_pending.set(waiting as i64);
        self.apply_approved(now).await;
        self.update_safety();
        self.publish_views();
        self.snapshot(false);
        self.prune_store(now).await;
        // Off the loop: it is awaited only at shutdown (`save`).
        drop(self.snapshot_models(false));
        // The loop's fits freed their scratch; hand the pages back before the next one
        // (after the approved changes, which should not wait for it).
        drop(tokio::task::spawn_blocking(release_free_heap).await);
        self.shared
            .metrics
            .loop_duration
            .observe(clock.elapsed().as_secs_f64());
        if let Ok(mut h) = self.shared.heartbeat.lock() {
            *h = std::time::Instant::now();
        }
        self.shared
            .ready
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Attaches the review store: loads every workload's controls and, for `recommend`
    /// workloads, what was last applied (so a restart publishes it again).
    ///
    /// # Errors
    /// The store cannot be read.
    pub async fn attach_store(&self, store: Store) -> anyhow::Result<()> {
        self.sync_from_store(&store).await?;
        let _ = self.shared.store.set(store);
        Ok(())
    }

    /// Mirrors the store into memory: controls, overrides, which proposals lapsed, and for
    /// `recommend` workloads with KEDA the last applied replicas. Done at start and every loop, so with several replicas on one
    /// PostgreSQL a pause or an approval made through any of them reaches all of them.
    async fn sync_from_store(&self, store: &Store) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering;
        let version = self.shared.controls_version.load(Ordering::SeqCst);
        let controls = store.all_controls().await?;
        let overrides = store.all_overrides().await?;
        let applied = store.all_last_applied().await?;
        let lapsed = store.lapsed().await?;
        for rt in &self.runtimes {
            // The last proposal expired or failed: the same wish may be proposed again (a
            // rejected one is not, so a person is not asked twice).
            let Ok(mut r) = rt.lock() else { continue };
            if lapsed.contains(&r.cfg.key()) {
                r.proposed = None;
            }
            // With the /scale actuator the replicas read from the cluster are the truth; with
            // KEDA, what was last applied is what is published.
            if r.cfg.mode == Mode::Recommend
                && r.cfg.actuator == ActuatorKind::Keda
                && let Some(to) = applied.get(&r.cfg.key())
                && r.current != Some(*to)
            {
                r.set_applied(*to);
            }
        }
        if let Ok(mut c) = self.shared.controls.write() {
            // A change made through the API while we read is newer than what we read.
            if self.shared.controls_version.load(Ordering::SeqCst) == version {
                *c = controls;
            }
        }
        if let Ok(mut o) = self.shared.overrides.write() {
            *o = overrides;
        }
        Ok(())
    }

    /// Counts failing workloads; more than half for two loops in a row stops scale-downs
    /// everywhere until three loops in a row are healthy again.
    fn update_safety(&self) {
        use std::sync::atomic::Ordering;
        let total = self.runtimes.len().max(1);
        let failing = self
            .runtimes
            .iter()
            .filter(|rt| {
                rt.lock()
                    .is_ok_and(|r| r.view.state == WorkloadState::Degraded)
            })
            .count();
        let unhealthy = failing as f64 / total as f64 > UNSAFE_FAILING_SHARE;
        let (bad, good) = if unhealthy {
            self.healthy_loops.store(0, Ordering::SeqCst);
            (self.failing_loops.fetch_add(1, Ordering::SeqCst) + 1, 0)
        } else {
            self.failing_loops.store(0, Ordering::SeqCst);
            (0, self.healthy_loops.fetch_add(1, Ordering::SeqCst) + 1)
        };
        let safe = if self.shared.safe_to_act.load(Ordering::SeqCst) {
            bad < UNSAFE_LOOPS
        } else {
            good >= SAFE_AGAIN_LOOPS
        };
        if self.shared.safe_to_act.swap(safe, Ordering::SeqCst) != safe {
            tracing::warn!(failing, total, safe_to_act = safe, "Safety to act changed");
        }
        self.shared.metrics.safe_to_act.set(i64::from(safe));
    }

    fn runtime(&self, key: &str) -> Option<&Arc<Mutex<Runtime>>> {
        self.runtimes
            .iter()
            .find(|rt| rt.lock().is_ok_and(|r| r.cfg.key() == key))
    }

    /// Expires stale recommendations and applies the approved ones, each exactly once: the
    /// outcome is recorded with a conditional update, and a re-run after a crash re-reads
    /// `/scale` first (already at the target: recorded as applied, nothing written).
    async fn apply_approved(&self, now: Timestamp) {
        let Some(store) = self.shared.store.get() else {
            return;
        };
        if let Err(e) = store.expire(now).await {
            count(&self.shared.metrics, "store", e.kind());
        }
        let approved = match store.approved().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "Could not read approved recommendations");
                count(&self.shared.metrics, "store", e.kind());
                return;
            }
        };
        use std::sync::atomic::Ordering;
        let grace = APPLY_GRACE_STEPS * self.step as i64;
        let started = *self.started.get_or_init(|| now);
        let stopped = Some(self.stopped_at.load(Ordering::SeqCst)).filter(|t| *t != 0);
        for rec in approved {
            let key = format!("{}/{}", rec.namespace, rec.workload);
            let rt = self.runtime(&key);
            let (ttl, degraded_down) =
                rt.and_then(|rt| rt.lock().ok()).map_or((None, false), |r| {
                    // While the workload's own metrics fail, nothing of it goes down.
                    let down = r.view.state == WorkloadState::Degraded
                        && r.current.is_none_or(|c| rec.to_replicas < c);
                    (Some(r.cfg.recommendation_ttl.as_secs() as i64), down)
                });
            let decided = rec.decided_at.unwrap_or(rec.created_at);
            let mut deadline = rec.valid_until.max(decided + grace);
            // Time the service was stopped (a crash, a rollout) does not count against an
            // approval still live when it stopped: it has its grace again from the restart.
            // Not after a stop longer than the workload's TTL, and never longer than that
            // past its deadline: the forecast it was approved on is too old by then.
            if let (Some(stop), Some(ttl)) = (stopped, ttl)
                && stop <= deadline
                && started - stop <= ttl
            {
                deadline = deadline.max((started + grace).min(deadline + ttl));
            }
            if now > deadline {
                // Held too long (paused, not the leader, unsafe, degraded, a config without
                // it, a long stop): the forecast it was approved on is old now. The wish may
                // be proposed again (`Store::lapsed`).
                self.fail(
                    store,
                    &rec,
                    "expired: approved but not applied in time",
                    now,
                )
                .await;
                continue;
            }
            // Held, still approved, until it expires above.
            if degraded_down {
                continue;
            }
            // Not in this replica's config: perhaps in another's, while a new config rolls
            // out. Left approved for them; it expires above if nobody has it.
            let Some(rt) = rt else {
                continue;
            };
            let controls = self.shared.controls_of(&key);
            if controls.paused {
                continue;
            }
            let (mode, kind, target, mut limits, previous) = match rt.lock() {
                Ok(r) => (
                    r.cfg.mode,
                    r.cfg.actuator,
                    r.target(),
                    r.limits(),
                    r.current,
                ),
                Err(_) => continue,
            };
            // Another mode in this replica's config: perhaps an older config than the one
            // the approval was made under; left like a missing workload.
            if mode != Mode::Recommend {
                continue;
            }
            // A pin is the most explicit wish: an approval of something else is not applied.
            let pin = controls
                .pinned_replicas
                .filter(|_| controls.pinned_until.is_some_and(|u| u > now))
                .map(|p| p.clamp(limits.min_replicas, limits.max_replicas));
            if let Some(p) = pin
                && p != rec.to_replicas
            {
                let why = format!("pinned: the workload is pinned to {p} replicas");
                self.fail(store, &rec, &why, now).await;
                continue;
            }
            // A scheduled minimum open now raises what is applied (a pin, more explicit,
            // is not raised).
            let to = match pin {
                Some(_) => rec.to_replicas,
                None => self
                    .shared
                    .scheduled_minimum(&key, now)
                    .map_or(rec.to_replicas, |f| {
                        rec.to_replicas.max(f.min(limits.max_replicas))
                    }),
            };
            // While too many workloads fail, nothing goes down: held, still approved.
            if !self.shared.safe_to_act.load(Ordering::SeqCst) {
                if previous.is_none_or(|c| to < c) {
                    continue;
                }
                limits.no_decrease = true;
            }
            let expect = rec.reason.from_known.then_some(rec.from_replicas);
            let outcome = match (kind, &self.actuator) {
                (ActuatorKind::Scale, Some(a)) => a.apply(&target, to, limits, expect).await,
                (ActuatorKind::Scale, None) => Err(no_kube()),
                // What KEDA is served moved since the recommendation was made (another one was
                // applied): this one no longer starts from what is there.
                (ActuatorKind::Keda, _) => match previous {
                    Some(c) if c != to && Some(c) != expect => Err(ActuateError::Stale {
                        observed: c,
                        expected: rec.from_replicas,
                    }),
                    _ => Ok(Applied {
                        previous: previous.unwrap_or(rec.from_replicas),
                        replicas: limits.clamp(to, to),
                        written: true,
                    }),
                },
            };
            let (state, detail) = match &outcome {
                Ok(a) => {
                    if let Ok(mut r) = rt.lock() {
                        r.set_applied(a.replicas);
                        r.proposed = None;
                    }
                    let how = if kind == ActuatorKind::Keda {
                        "published to KEDA"
                    } else {
                        "scaled"
                    };
                    let raised = if to == rec.to_replicas {
                        ""
                    } else {
                        " (raised to the scheduled minimum)"
                    };
                    (
                        RecState::Applied,
                        format!("{how} {} -> {}{raised}", a.previous, a.replicas),
                    )
                }
                // Transient, or someone else's turn: stays approved, tried again next loop.
                Err(
                    ActuateError::NotLeader
                    | ActuateError::Throttled { .. }
                    | ActuateError::Unavailable(_),
                ) => continue,
                Err(e) => (RecState::Failed, format!("{}: {e}", e.kind())),
            };
            match store.finish(&rec.id, state, &detail, now).await {
                Ok(true) => {
                    tracing::info!(id = %rec.id, workload = %key, %detail, "Recommendation done")
                }
                Ok(false) => {}
                Err(e) => count(&self.shared.metrics, "store", e.kind()),
            }
        }
    }

    /// Deletes what `store.retention` made old, at most once per [`PRUNE_EVERY`] of loop time.
    async fn prune_store(&self, now: Timestamp) {
        use std::sync::atomic::Ordering;
        let Some(store) = self.shared.store.get() else {
            return;
        };
        // Saturating: the first loop's `last` is i64::MIN, so it prunes.
        let last = self.last_prune.load(Ordering::SeqCst);
        if now.saturating_sub(last) < PRUNE_EVERY.as_secs() as i64 {
            return;
        }
        let retention = i64::try_from(self.cfg.store.retention.as_secs()).unwrap_or(i64::MAX);
        let cutoff = now.saturating_sub(retention);
        match store.prune(cutoff, now, PRUNE_BATCH).await {
            Ok((recs, entries)) => {
                if recs + entries > 0 {
                    tracing::info!(recs, entries, cutoff, "Pruned the review store");
                }
                // A full batch: more is due, next loop rather than next hour.
                if recs < u64::from(PRUNE_BATCH) && entries < u64::from(PRUNE_BATCH) {
                    self.last_prune.store(now, Ordering::SeqCst);
                }
            }
            Err(e) => {
                self.last_prune.store(now, Ordering::SeqCst);
                tracing::warn!(error = %e, "Could not prune the review store");
                count(&self.shared.metrics, "store", e.kind());
            }
        }
    }

    /// Records that an approved recommendation will not be applied, and why.
    async fn fail(&self, store: &Store, rec: &Recommendation, why: &str, now: Timestamp) {
        match store.finish(&rec.id, RecState::Failed, why, now).await {
            Ok(true) => tracing::info!(id = %rec.id, why, "Approved recommendation not applied"),
            Ok(false) => {}
            Err(e) => count(&self.shared.metrics, "store", e.kind()),
        }
    }

    /// Writes every workload's forecasting state to `data_dir/models.bin`, one workload at a
    /// time (each lock held only while its state is copied), then fsync and rename.
    fn write_models(runtimes: &[Arc<Mutex<Runtime>>], path: &Path) -> anyhow::Result<usize> {
        use bincode::Options;
        use std::io::Write;
        let tmp = path.with_extension("tmp");
        let file = std::fs::File::create(&tmp)?;
        let mut w = std::io::BufWriter::new(file);
        // A workload whose lock was poisoned (a panic in its pass) is left out, not the rest.
        let healthy: Vec<&Arc<Mutex<Runtime>>> =
            runtimes.iter().filter(|rt| !rt.is_poisoned()).collect();
        let codec = models_codec();
        codec.serialize_into(
            &mut w,
            &ModelsHeader {
                format: MODELS_FORMAT,
                count: healthy.len() as u64,
            },
        )?;
        let mut n = 0;
        for rt in healthy {
            let Ok(r) = rt.lock() else {
                anyhow::bail!("a workload's lock was poisoned while writing");
            };
            let entry: ModelsEntry = (r.cfg.key(), r.engine.state(), r.policy.state());
            drop(r);
            codec.serialize_into(&mut w, &entry)?;
            n += 1;
        }
        w.flush()?;
        w.get_ref().sync_all()?;
        drop(w);
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent()
            && let Ok(d) = std::fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(n)
    }

    /// Starts a write of the model state on a blocking thread when the last one is older
    /// than [`MODELS_EVERY`] (or with `force`) and none is under way; returns it, to be
    /// awaited at shutdown.
    fn snapshot_models(&self, force: bool) -> Option<tokio::task::JoinHandle<()>> {
        use std::sync::atomic::Ordering;
        let mut last = self.last_models.lock().ok()?;
        if !force && last.is_some_and(|t| t.elapsed() < MODELS_EVERY) {
            return None;
        }
        if self.writing_models.swap(true, Ordering::SeqCst) {
            return None;
        }
        *last = Some(std::time::Instant::now());
        let runtimes = self.runtimes.clone();
        let path = self.models_path();
        let writing = self.writing_models.clone();
        let shared = self.shared.clone();
        Some(tokio::task::spawn_blocking(move || {
            // Cleared however the write ends, a panic included.
            let _writing = ClearOnDrop(writing);
            if let Err(e) = Self::write_models(&runtimes, &path) {
                tracing::warn!(error = %e, "Model state snapshot failed");
                count(&shared.metrics, "store", "snapshot");
            }
        }))
    }

    /// Writes both snapshots now (views and model state) and waits for them, as at shutdown.
    pub async fn save(&self) {
        self.snapshot(true);
        // A write still under way finishes first; then one with the latest state.
        loop {
            if let Some(job) = self.snapshot_models(true) {
                let _ = job.await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Writes the snapshot when the last one is older than [`SNAPSHOT_EVERY`] (or always,
    /// with `force`, at shutdown): with thousands of workloads a snapshot is tens of MB.
    fn snapshot(&self, force: bool) {
        let Ok(mut last) = self.last_snapshot.lock() else {
            return;
        };
        if !force && last.is_some_and(|t| t.elapsed() < SNAPSHOT_EVERY) {
            return;
        }
        *last = Some(std::time::Instant::now());
        if let Err(e) = self.write_snapshot() {
            tracing::warn!(error = %e, "Snapshot failed");
            let labels = ErrorLabels {
                stage: "store",
                kind: "snapshot",
            };
            self.shared.metrics.errors.get_or_create(&labels).inc();
        }
    }

    /// Runs the loop until `shutdown` is cancelled, then writes a last snapshot.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut interval = tokio::time::interval(self.tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = interval.tick() => {
                    let now = self.timeline.tick();
                    self.run_once(now).await;
                }
                () = self.shared.approvals.notified() => {
                    // Only after a first loop: before it, nothing is known to apply against.
                    if self.shared.ready.load(std::sync::atomic::Ordering::SeqCst) {
                        self.apply_approved(self.shared.now()).await;
                        self.publish_views();
                    }
                }
            }
        }
        self.save().await;
    }
}

impl Runtime {
    /// After a panic in its step, what this workload held may be half-updated: it starts
    /// over as on a fresh start (history read again, a new policy whose window starts at the
    /// replicas in place), keeping what it knows of the cluster and holding replicas until
    /// its next decision.
    fn start_over(&mut self) {
        let key = self.cfg.key();
        self.engine = new_engine(
            self.preset.clone(),
            self.engine.step(),
            self.lead_steps,
            &key,
        );
        if let Ok(p) = PredictivePolicy::new(self.policy.config().clone()) {
            self.policy = p;
        }
        self.last_sample = None;
        self.backlog.clear();
        self.interim = None;
        self.view.state = WorkloadState::Degraded;
        self.view.reason = Some(INTERNAL_ERROR.to_string());
        self.publication.unavailable = Some(INTERNAL_ERROR.to_string());
    }

    /// Whether prescale itself writes this workload's `/scale`.
    fn scales_directly(&self) -> bool {
        self.cfg.mode == Mode::Auto && self.cfg.actuator == ActuatorKind::Scale
    }

    /// Whether this workload's replicas are learned by reading `/scale`.
    fn reads_scale(&self) -> bool {
        self.cfg.mode != Mode::Observe && self.cfg.actuator == ActuatorKind::Scale
    }

    /// The newest sample fetched: in the engine, or waiting in the backlog.
    fn newest_sample(&self) -> Option<Timestamp> {
        self.backlog.last().map(|s| s.at).or(self.last_sample)
    }

    /// Feeds one sample to the engine (a refused one is counted, and not fetched again).
    fn feed(&mut self, s: &Sample, metrics: &Metrics) {
        if let Err(e) = self.engine.observe(s.at, s.value) {
            count(metrics, "forecast", e.kind());
        }
        self.last_sample = Some(s.at);
        self.view.demand = Some(s.value);
    }

    /// Folds new samples in, forecasts, decides, and updates the view, the publication and
    /// the metrics. Returns what the `/scale` actuator should apply, if anything.
    fn process(
        &mut self,
        fetched: Result<Vec<Sample>, CollectError>,
        pass: &LoopPass,
        metrics: &Metrics,
        controls: &Controls,
        floor: Option<u32>,
    ) -> Step {
        let (now, safe_to_act) = (pass.now, pass.safe_to_act);
        let w = self.labels.clone();
        let current = self.current.unwrap_or(self.cfg.min_replicas.max(1));
        let demand = match fetched {
            Ok(mut samples) => {
                if !self.backlog.is_empty() {
                    let mut waited = std::mem::take(&mut self.backlog);
                    waited.append(&mut samples);
                    samples = waited;
                }
                samples.retain(|s| self.last_sample.is_none_or(|l| s.at > l));
                let n = samples.len();
                let replayed = n.min(self.replay_steps);
                if replayed > WARMUP_MIN_STEPS && !pass.admit_warm_up() {
                    // The loop's warm-up budget is spent: the head only feeds the fits (as in
                    // a warm-up), and the tail the warm-up replays waits for a later loop.
                    self.backlog = samples.split_off(n - replayed);
                    for s in &samples {
                        self.feed(s, metrics);
                    }
                    self.view.demand = self.backlog.last().map(|s| s.value);
                } else {
                    for (i, s) in samples.iter().enumerate() {
                        self.feed(s, metrics);
                        // The tail of a backfill is replayed step by step, so the online
                        // backtest and the calibration are warm when the first live forecast
                        // is made (older history only feeds the fits). The headroom tuner's
                        // shadows replay it too, so that the first live decision need not
                        // wait hours for them to judge the forecast's bands.
                        if i + 1 < n
                            && n - i <= self.replay_steps
                            && let Ok(f) = self.engine.forecast(self.lead_steps)
                        {
                            self.policy.warm(&Observation {
                                now: s.at,
                                demand: Some(s.value),
                                current_replicas: current,
                                ready_replicas: current,
                                forecast: Some(&f),
                            });
                        }
                    }
                }
                self.view.last_sample_at = self.newest_sample();
                self.view.last_error = None;
                self.view.reason = (!self.backlog.is_empty()).then(|| WARM_UP_QUEUED.to_string());
                self.view.demand
            }
            Err(e) => {
                count(metrics, "collector", e.kind());
                tracing::warn!(workload = %self.cfg.key(), error = %e, "Fetch failed; holding replicas");
                self.view.state = WorkloadState::Degraded;
                self.view.reason = Some(e.kind().to_string());
                self.view.last_error = Some(e.to_string());
                None
            }
        };
        let horizon = (6 * 3600 / self.engine_step()).max(self.lead_steps as u64) as usize;
        // A warm-up that waits: no forecast (the engine lacks the tail), and the interim HPA
        // decides, so the tuner's first live step comes after the replayed tail.
        let waiting = !self.backlog.is_empty();
        if waiting {
            pass.waiting
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        let forecast = if demand.is_some() && !waiting {
            match self.engine.forecast(horizon) {
                Ok(f) => Some(f),
                Err(e) => {
                    if !matches!(e, ForecastError::NotEnoughData { .. }) {
                        count(metrics, "forecast", e.kind());
                    }
                    None
                }
            }
        } else {
            None
        };
        let obs = Observation {
            now,
            demand,
            current_replicas: current,
            ready_replicas: current,
            forecast: forecast.as_ref(),
        };
        let decision: Decision = if waiting {
            let interim = self
                .interim
                .get_or_insert_with(|| self.policy.config().hpa());
            interim.recommend(&obs)
        } else {
            self.interim = None;
            let decision = self.policy.recommend(&obs);
            if self.current.is_none() && self.reads_scale() {
                // Decided before /scale was read: the stand-in replicas must not start the
                // stabilisation window, the replicas found must.
                self.policy.resume_after_gap();
            }
            decision
        };
        // A pin replaces the policy's answer until it ends (min/max still hold).
        let pc = self.policy.config();
        let pinned = controls
            .pinned_replicas
            .filter(|_| controls.pinned_until.is_some_and(|u| u > now))
            .map(|p| p.clamp(pc.min_replicas, pc.max_replicas));
        // Then a scheduled minimum, then a pin (the most explicit) replace the policy's answer.
        let floored = floor
            .map(|f| f.min(pc.max_replicas))
            .filter(|f| *f > decision.desired_replicas);
        // While too many workloads fail, nothing goes down (the data may be partial).
        let held = self
            .current
            .filter(|c| !safe_to_act && decision.desired_replicas < *c);
        let floored = floored.filter(|f| held.is_none_or(|h| *f > h));
        let desired = pinned
            .or(floored)
            .or(held)
            .unwrap_or(decision.desired_replicas);
        let term = if pinned.is_some() {
            "pinned"
        } else if floored.is_some() {
            "scheduled_minimum"
        } else if held.is_some() {
            "safety_hold"
        } else {
            decision.reason.term.as_str()
        };
        let mut limits = self.limits();
        // Decided without the real replicas, or while scale-downs are unsafe: a write may
        // raise the workload but never lower it; nor when what it finds is not what this
        // decision believed.
        limits.no_decrease = self.current.is_none() || !safe_to_act;
        limits.decided_from = self.current;
        let acts = !controls.paused;
        // What counts as applied: without the /scale actuator in auto mode, what was decided
        // (KEDA's HPA lands on it; observe mode is a dry run); with it, only what the API
        // confirmed; in recommend mode, only what was approved and applied. Paused: held.
        match self.cfg.mode {
            Mode::Observe => self.current = Some(desired),
            Mode::Auto if !self.scales_directly() && acts => self.current = Some(desired),
            _ => {}
        }
        let published = match self.cfg.mode {
            Mode::Recommend => self.current,
            _ => self.current.or(Some(desired)),
        };
        self.publication = Publication {
            mode: self.cfg.mode,
            desired_replicas: published.unwrap_or(desired),
            demand,
            forecast_peak: forecast.as_ref().map(|_| decision.reason.forecast_peak),
            forecast_peak_at: decision.reason.forecast_peak_at,
            quantile: forecast.as_ref().map(|f| f.quantile),
            sample_at: self.newest_sample(),
            unavailable: if demand.is_none() {
                Some(
                    self.view
                        .reason
                        .clone()
                        .unwrap_or_else(|| "no data".to_string()),
                )
            } else if published.is_none() {
                Some(NOTHING_APPLIED.to_string())
            } else {
                None
            },
            refreshed: if demand.is_some() {
                Some(std::time::Instant::now())
            } else {
                self.publication.refreshed
            },
        };
        if demand.is_some() {
            self.view.state = match &forecast {
                None => WorkloadState::WarmingUp,
                Some(f) if f.demoted => WorkloadState::Demoted,
                Some(_) => WorkloadState::Healthy,
            };
        }
        self.view.desired_replicas = Some(desired);
        self.view.current_replicas = self.current;
        self.view.term = Some(term.to_string());
        self.view.paused = controls.paused;
        let status = self.engine.status();
        self.view.model = Some(status.model.to_string());
        let refits = status.refits.saturating_sub(self.refits_counted);
        metrics.refits.inc_by(refits as u64);
        self.refits_counted = status.refits;
        if let Some(f) = &forecast {
            self.view.forecast = Some(Arc::new(ForecastView::from(f)));
        }

        // Metrics.
        if let Some(d) = demand {
            metrics.demand.get_or_create(&w).set(d);
        }
        metrics.desired.get_or_create(&w).set(i64::from(desired));
        if let Some(c) = self.current {
            metrics.current.get_or_create(&w).set(i64::from(c));
        }
        let terms: Vec<&str> = TERMS
            .iter()
            .map(|t| t.as_str())
            .chain(["pinned", "scheduled_minimum", "safety_hold"])
            .collect();
        Metrics::one_hot(&metrics.term, &terms, term, |v| TermLabels {
            namespace: w.namespace.clone(),
            workload: w.workload.clone(),
            term: v,
        });
        let models: Vec<&str> = MODELS.iter().map(|m| m.as_str()).collect();
        Metrics::one_hot(&metrics.model, &models, status.model, |v| ModelLabels {
            namespace: w.namespace.clone(),
            workload: w.workload.clone(),
            model: v,
        });
        Metrics::one_hot(
            &metrics.state,
            &WorkloadState::ALL,
            self.view.state.as_str(),
            |v| StateLabels {
                namespace: w.namespace.clone(),
                workload: w.workload.clone(),
                state: v,
            },
        );
        if let Some(c) = status.coverage {
            metrics.coverage.get_or_create(&w).set(c);
        }
        if let Some(e) = self.engine.recent_error_ratio() {
            metrics.backtest_error.get_or_create(&w).set(e);
        }
        if let Some(f) = &forecast {
            metrics.last_success.get_or_create(&w).set(now as f64);
            let step = f.step.max(1);
            for (h, secs) in HORIZONS {
                let k = if secs == 0 {
                    self.lead_steps
                } else {
                    (secs / step) as usize
                };
                let k = k.saturating_sub(1).min(f.point.len().saturating_sub(1));
                for (band, v) in [("point", f.point.get(k)), ("upper", f.upper.get(k))] {
                    if let Some(v) = v {
                        metrics
                            .forecast
                            .get_or_create(&ForecastLabels {
                                namespace: w.namespace.clone(),
                                workload: w.workload.clone(),
                                horizon: h,
                                band,
                            })
                            .set(*v);
                    }
                }
            }
        }

        let mut step = Step::default();
        // Missing data never moves a workload: nothing is proposed or applied without it.
        if demand.is_none() || !acts {
            return step;
        }
        let due = self
            .next_attempt
            .is_none_or(|t| std::time::Instant::now() >= t);
        let resync = self.last_read.is_none_or(|t| t.elapsed() >= RESYNC_EVERY);
        if self.cfg.mode == Mode::Recommend && self.cfg.actuator == ActuatorKind::Scale {
            // Recommendations start from the replicas really there: read `/scale` (no write)
            // first, and again now and then; nothing is proposed until it is known.
            if due && (self.current.is_none() || resync) {
                step.apply = Some((self.target(), desired, limits.read_only()));
            }
            if self.current.is_none() {
                return step;
            }
        }
        match self.cfg.mode {
            Mode::Auto
                if self.scales_directly() && due && (self.current != Some(desired) || resync) =>
            {
                step.apply = Some((self.target(), desired, limits));
            }
            Mode::Recommend if self.current != Some(desired) && self.proposed != Some(desired) => {
                self.proposed = Some(desired);
                step.propose = Some(self.recommendation(&decision, desired, term, now));
            }
            Mode::Recommend if self.current == Some(desired) => self.proposed = None,
            _ => {}
        }
        step
    }

    fn target(&self) -> Target {
        Target {
            namespace: self.cfg.namespace.clone(),
            name: self.cfg.name.clone(),
            kind: self.cfg.kind,
        }
    }

    /// Records that `replicas` were applied (recommend mode): they become current and are
    /// what KEDA is served from now on.
    fn set_applied(&mut self, replicas: u32) {
        self.current = Some(replicas);
        self.view.current_replicas = Some(replicas);
        self.publication.desired_replicas = replicas;
        if self.publication.unavailable.as_deref() == Some(NOTHING_APPLIED) {
            self.publication.unavailable = None;
        }
    }

    fn limits(&self) -> Limits {
        let pc = self.policy.config();
        Limits {
            min_replicas: pc.min_replicas,
            max_replicas: pc.max_replicas,
            max_step_up: pc.max_step_up,
            max_step_down: pc.max_step_down,
            no_decrease: false,
            no_increase: false,
            decided_from: None,
        }
    }

    /// A recommendation for `desired`: pending, or approved at once when it is a scale-up
    /// within `auto_approve_scale_up_percent`.
    fn recommendation(
        &self,
        d: &Decision,
        desired: u32,
        term: &str,
        now: Timestamp,
    ) -> Recommendation {
        let from = self.current.unwrap_or(self.cfg.min_replicas);
        // From an unknown baseline "2 -> 3" may really be "20 -> 3": a person decides.
        let autonomous = self.current.is_some()
            && self.cfg.auto_approve_scale_up_percent.is_some_and(|pct| {
                desired > from && f64::from(desired - from) <= pct / 100.0 * f64::from(from.max(1))
            });
        Recommendation {
            id: new_id(),
            namespace: self.cfg.namespace.clone(),
            workload: self.cfg.name.clone(),
            from_replicas: from,
            to_replicas: desired,
            created_at: now,
            valid_until: now + self.cfg.recommendation_ttl.as_secs() as i64,
            state: if autonomous {
                RecState::Approved
            } else {
                RecState::Pending
            },
            reason: RecommendationReason {
                term: term.to_string(),
                forecast_peak: d.reason.forecast_peak,
                forecast_peak_at: d.reason.forecast_peak_at,
                quantile: d.reason.quantile,
                lead_seconds: d.reason.lead_seconds,
                model: d.reason.model.to_string(),
                from_known: self.current.is_some(),
            },
            decided_by: autonomous.then(|| AUTONOMY.to_string()),
            decided_at: autonomous.then_some(now),
            comment: None,
            outcome: None,
        }
    }

    /// Records what the `/scale` actuator did.
    fn record_apply(&mut self, outcome: Result<Applied, ActuateError>, metrics: &Metrics) {
        let result = match outcome {
            Ok(a) => {
                self.current = Some(a.replicas);
                self.view.current_replicas = Some(a.replicas);
                self.view.actuator_error = None;
                self.next_attempt = None;
                self.last_read = Some(std::time::Instant::now());
                metrics
                    .current
                    .get_or_create(&self.labels)
                    .set(i64::from(a.replicas));
                if a.written {
                    tracing::info!(workload = %self.cfg.key(), from = a.previous, to = a.replicas, "Scaled");
                    "written"
                } else {
                    "unchanged"
                }
            }
            Err(e) => {
                // Followers meet NotLeader every loop: expected, not worth a warning. What a
                // follower knew of the replicas is stale by the time it leads: forgotten.
                if matches!(e, ActuateError::NotLeader) {
                    self.current = None;
                    self.last_read = None;
                    self.view.current_replicas = None;
                    tracing::debug!(workload = %self.cfg.key(), "Not the leader; not scaled");
                } else {
                    tracing::warn!(workload = %self.cfg.key(), error = %e, "Not scaled");
                }
                count(metrics, "actuator", e.kind());
                self.next_attempt = match &e {
                    ActuateError::Throttled { retry_after } => {
                        Some(std::time::Instant::now() + *retry_after)
                    }
                    ActuateError::Forbidden(_)
                    | ActuateError::TargetGone(_)
                    | ActuateError::ManagedByHpa(_)
                    | ActuateError::Paused(_) => Some(std::time::Instant::now() + REFUSED_BACKOFF),
                    _ => None,
                };
                self.view.actuator_error = Some(format!("{}: {e}", e.kind()));
                e.kind()
            }
        };
        metrics
            .actuations
            .get_or_create(&ActuationLabels {
                namespace: self.labels.namespace.clone(),
                workload: self.labels.workload.clone(),
                result,
            })
            .inc();
    }

    fn engine_step(&self) -> u64 {
        self.engine.step()
    }
}

fn no_kube() -> ActuateError {
    ActuateError::Rejected(
        "no Kubernetes client: the /scale actuator is not configured".to_string(),
    )
}

/// Records a recommendation (recommend mode); on failure the wish is proposed again next loop.
async fn propose(rt: &Arc<Mutex<Runtime>>, shared: &Shared, rec: &Recommendation) {
    let Some(store) = shared.store.get() else {
        return;
    };
    if let Err(e) = store.create(rec, "prescale").await {
        tracing::warn!(error = %e, "Could not record a recommendation");
        count(&shared.metrics, "store", e.kind());
        if let Ok(mut r) = rt.lock() {
            r.proposed = None;
        }
    }
}

/// The record of a change `auto` mode applied.
fn applied_record(t: &Target, a: Applied, p: &Publication, now: Timestamp) -> Recommendation {
    Recommendation {
        id: new_id(),
        namespace: t.namespace.clone(),
        workload: t.name.clone(),
        from_replicas: a.previous,
        to_replicas: a.replicas,
        created_at: now,
        valid_until: now,
        state: RecState::Applied,
        reason: RecommendationReason {
            term: "auto".to_string(),
            forecast_peak: p.forecast_peak.unwrap_or(0.0),
            forecast_peak_at: p.forecast_peak_at,
            quantile: p.quantile.unwrap_or(0.0),
            lead_seconds: 0,
            model: String::new(),
            from_known: true,
        },
        decided_by: Some(AUTO.to_string()),
        decided_at: Some(now),
        comment: None,
        outcome: Some(format!("scaled {} -> {}", a.previous, a.replicas)),
    }
}

/// A workload's engine as the service runs it.
fn new_engine(preset: ModelPreset, step: u64, lead_steps: usize, key: &str) -> Engine {
    let mut e = Engine::new(preset, step, lead_steps);
    e.set_evaluating(true);
    // Nothing here reads each candidate's own statistics.
    e.set_scoring_candidates(false);
    e.set_refit_phase(spread(key));
    e
}

/// A stable number in `[0, 1)` from a workload key (FNV-1a), to spread per-workload work.
fn spread(key: &str) -> f64 {
    let h = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    (h >> 11) as f64 / (1u64 << 53) as f64
}

fn count(metrics: &Metrics, stage: &'static str, kind: &'static str) {
    metrics
        .errors
        .get_or_create(&ErrorLabels { stage, kind })
        .inc();
}

/// Locks a workload's runtime; if a panic poisoned it, the workload starts over (see
/// [`Runtime::start_over`]) and the panic is counted.
fn lock_or_start_over<'a>(
    rt: &'a Mutex<Runtime>,
    metrics: &Metrics,
) -> std::sync::MutexGuard<'a, Runtime> {
    match rt.lock() {
        Ok(r) => r,
        Err(poisoned) => {
            let mut r = poisoned.into_inner();
            r.start_over();
            rt.clear_poison();
            count(metrics, "loop", "panic");
            r
        }
    }
}

/// Returns the free pages inside glibc's heap to the kernel. Fits allocate and free large
/// scratch buffers between long-lived blocks, and glibc keeps those pages resident (about a
/// quarter of the service's memory) unless asked.
#[allow(unsafe_code)]
fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and only releases free chunks of glibc's own
    // arenas; it is MT-safe (it takes each arena's lock), so other threads may allocate
    // meanwhile.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Writes `bytes` to `path` via a temporary file, fsync and rename.
///
/// # Errors
/// I/O errors.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The Kubernetes client prescale uses: `kubernetes.api_url`, else in-cluster or kubeconfig;
/// every request bounded by `kubernetes.timeout`; kube's built-in retry layer off.
///
/// # Errors
/// No usable Kubernetes configuration.
pub async fn kube_client(cfg: &crate::config::KubernetesConfig) -> anyhow::Result<kube::Client> {
    let mut kc = match &cfg.api_url {
        Some(url) => kube::Config::new(url.parse().context("kubernetes.api_url")?),
        None => kube::Config::infer()
            .await
            .context("no Kubernetes configuration (in-cluster or kubeconfig)")?,
    };
    kc.connect_timeout = Some(cfg.timeout);
    kc.read_timeout = Some(cfg.timeout);
    kc.write_timeout = Some(cfg.timeout);
    // kube's own retry layer would sleep through long Retry-After values inside one loop;
    // the actuator retries itself, within `retries`, and defers 429s to a later loop.
    kc.default_retry = false;
    kube::Client::try_from(kc).context("building the Kubernetes client")
}

/// The `/scale` actuator and, when a Lease is configured, its elector (which the caller
/// runs).
///
/// # Errors
/// No usable Kubernetes configuration.
pub async fn scale_actuator(
    cfg: &crate::config::KubernetesConfig,
) -> anyhow::Result<(
    Arc<dyn Actuator>,
    Option<Arc<crate::actuator::LeaseElector>>,
)> {
    use crate::actuator::{LeaseConfig, LeaseElector, ScaleActuator};
    let client = kube_client(cfg).await?;
    let leader = cfg.lease.as_ref().map(|l| {
        let identity = cfg
            .identity
            .clone()
            .or_else(|| {
                std::env::var("POD_NAME")
                    .ok()
                    .filter(|v| !v.trim().is_empty())
            })
            .or_else(|| {
                std::env::var("HOSTNAME")
                    .ok()
                    .filter(|v| !v.trim().is_empty())
            })
            .unwrap_or_else(|| format!("prescale-{}", std::process::id()));
        Arc::new(LeaseElector::new(
            client.clone(),
            LeaseConfig {
                namespace: l.namespace.clone(),
                name: l.name.clone(),
                identity,
                duration: l.duration,
            },
        ))
    });
    let actuator = ScaleActuator::new(client, leader.clone(), cfg.timeout, cfg.retries);
    Ok((Arc::new(actuator), leader))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_workload_whose_step_panicked_starts_over_and_is_counted() {
        let step = 60_i64;
        let t0 = 1_800_000_000 / step * step;
        let trace = crate::sim::Trace {
            path: "t.csv".into(),
            timestamps: (0..600).map(|i| t0 - 500 * step + i * step).collect(),
            values: (0..600).map(|i| 100.0 + f64::from(i % 7)).collect(),
        };
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!(
            "prometheus: {{url: 'http://127.0.0.1:9', timeout: 1s}}\nloop: {{interval: 60s, history: 6h}}\n\
             data_dir: '{}'\nworkloads:\n- {{namespace: shop, name: web, demand_query: 'demo:0', capacity_per_replica: 10, max_replicas: 50, mode: auto}}\n",
            dir.path().display()
        );
        let cfg = Config::parse(std::path::Path::new("t.yaml"), &yaml, &|_| None).unwrap();
        let source = Arc::new(crate::collector::TraceSource::new(&trace));
        let svc = Service::new(cfg, source, Timeline::Wall, 60, Duration::from_secs(60)).unwrap();
        svc.run_once(t0).await;
        let before = svc.shared().views.read().unwrap()["shop/web"].clone();
        assert_eq!(before.last_sample_at, Some(t0), "{before:?}");
        // A panic while the runtime is locked (as a bug in a fit would) poisons it.
        let rt = svc.runtimes[0].clone();
        std::thread::spawn(move || {
            let _held = rt.lock().unwrap();
            panic!("injected");
        })
        .join()
        .unwrap_err();
        for k in 1..=2 {
            svc.run_once(t0 + k * step).await;
            let views = svc.shared().views.read().unwrap().clone();
            let v = &views["shop/web"];
            assert_eq!(v.last_sample_at, Some(t0 + k * step), "{v:?}");
            assert!(v.desired_replicas.unwrap() >= 10, "{v:?}");
        }
        let text = svc.shared().metrics.encode_text();
        assert!(
            text.contains("prescale_errors_total{stage=\"loop\",kind=\"panic\"} 1"),
            "{text}"
        );
    }
}
