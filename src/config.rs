//! The service configuration: one YAML file, every field documented here, validated once.
//!
//! The doc comment on each field is its reference documentation. Unknown fields are
//! rejected. A few deploy-time knobs can be overridden from the environment (see
//! [`ENV_OVERRIDES`]).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::forecast::ModelPreset;
use crate::policy::MAX_DURATION_SECONDS;

/// Environment variables that override config fields at start, and the field each sets.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("PRESCALE_PROMETHEUS_URL", "prometheus.url"),
    ("PRESCALE_DATA_DIR", "data_dir"),
    ("PRESCALE_LISTEN_HTTP", "listen.http"),
    ("PRESCALE_LISTEN_GRPC", "listen.grpc"),
    ("PRESCALE_LOG_FORMAT", "log_format"),
    ("PRESCALE_STORE_URL", "store.url"),
    ("PRESCALE_API_ANONYMOUS_READ", "api.anonymous_read"),
    ("PRESCALE_API_RATE_PER_CALLER", "api.rate_per_caller"),
];

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where demand history comes from.
    pub prometheus: PrometheusConfig,
    /// The forecast-and-decide loop.
    #[serde(default, rename = "loop")]
    pub loop_: LoopConfig,
    /// Directory for snapshots of forecasts and model state (and, later, the store). Created
    /// if missing.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Listen addresses.
    #[serde(default)]
    pub listen: ListenConfig,
    /// Log format: `text` (human) or `json` (one object per line).
    #[serde(default)]
    pub log_format: LogFormat,
    /// The KEDA endpoints: the gRPC external scaler and the metrics-api JSON.
    #[serde(default)]
    pub keda: KedaConfig,
    /// The Kubernetes API, used by workloads with `actuator: scale`.
    #[serde(default)]
    pub kubernetes: KubernetesConfig,
    /// The review API: tokens and request limits.
    #[serde(default)]
    pub api: ApiConfig,
    /// Where recommendations, decisions and the audit log are kept.
    #[serde(default)]
    pub store: StoreConfig,
    /// The workloads prescale forecasts and scales.
    pub workloads: Vec<WorkloadConfig>,
}

/// Prometheus connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusConfig {
    /// Base URL of the Prometheus HTTP API, e.g. `http://prometheus.monitoring:9090`.
    pub url: String,
    /// File holding a bearer token sent as `Authorization: Bearer <token>` (read at start).
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    /// HTTP basic authentication.
    #[serde(default)]
    pub basic_auth: Option<BasicAuthConfig>,
    /// PEM file of a CA to trust for `https` URLs, in addition to the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Timeout of one request (also sent to Prometheus as `timeout=`). Times `retries + 1`,
    /// plus the backoff between them (100 ms, doubling), must be shorter than the loop
    /// interval, so that a fetch failing every attempt ends inside its loop.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Retries of a failed request (timeouts, connection errors, 5xx) within one loop, with
    /// exponential backoff (100 ms, doubling). 4xx answers are not retried. At most 10.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// The newest point Prometheus returns for a fetch may be at most this much older than
    /// the fetch's end (the loop's time); an older one makes the series stale: missing,
    /// never zero. Prometheus itself carries a scraped value forward for up to its lookback
    /// delta (5 min by default) unless a staleness marker ends it, so a series that vanished
    /// without one looks fresh for that long; a target that keeps answering one frozen
    /// value cannot be told from steady demand here.
    #[serde(default = "default_stale_after", with = "humantime_serde")]
    pub stale_after: Duration,
}

/// HTTP basic authentication for Prometheus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthConfig {
    /// User name.
    pub username: String,
    /// File holding the password (read at start; never logged).
    pub password_file: PathBuf,
}

/// The loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoopConfig {
    /// Time between two forecast-and-decide passes over all workloads; also each workload's
    /// sampling step (range queries use it as `step`). 1s to 1d.
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// History backfilled at start and kept per workload.
    #[serde(default = "default_history", with = "humantime_serde")]
    pub history: Duration,
    /// Workloads fetched and forecast at the same time. Only one fetch is bounded to end
    /// inside the loop (`prometheus.timeout`): with more failing workloads than this, each
    /// waiting out its retries, a loop can outlast its interval; the next then starts late
    /// (watch `prescale_loop_duration_seconds`).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Wall time, from a loop's start, during which cold warm-ups may start: replaying the
    /// last two days of a backfill (or of a long gap) through the backtests and the headroom
    /// tuner, about half a second of CPU per workload. A cold workload that finds the budget
    /// spent keeps its fetched samples, is decided as the HPA would decide it (term
    /// `reactive`, state `warming_up`, reason `warm_up_queued`) and is warmed in a later
    /// loop; one warm-up per loop always runs. So a fresh start with thousands of workloads
    /// decides all of them in its first loop instead of none until all are warm. Default:
    /// half of `interval`; at most 1 day.
    #[serde(default, with = "humantime_serde")]
    pub warmup_budget: Option<Duration>,
    /// `/healthz` answers 503 once no loop has finished for this long (counted from the
    /// start until the first loop ends), so the kubelet's liveness probe restarts a process
    /// whose loop is wedged (a store or API call that never returns) instead of letting it
    /// serve old numbers. Default: three intervals, at least 1 minute. At least one
    /// interval, at most 1 day.
    #[serde(default, with = "humantime_serde")]
    pub stall_after: Option<Duration>,
}

impl LoopConfig {
    /// `warmup_budget`, or half the interval.
    pub fn warmup_budget(&self) -> Duration {
        self.warmup_budget.unwrap_or(self.interval / 2)
    }

    /// `stall_after`, or three intervals but at least a minute.
    pub fn stall_after(&self) -> Duration {
        self.stall_after
            .unwrap_or((self.interval * 3).max(Duration::from_secs(60)))
    }
}

/// Listen addresses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// HTTP server: API, `/metrics`, `/healthz`, `/readyz`.
    #[serde(default = "default_http")]
    pub http: SocketAddr,
    /// gRPC server (KEDA external scaler).
    #[serde(default = "default_grpc")]
    pub grpc: SocketAddr,
}

/// The review API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// YAML file (or mounted Secret) listing the API tokens:
    /// `- {name: alice, role: approver, token: "..."}`; roles are `viewer` (read),
    /// `approver` (also approve and reject), `admin` (also pause, pin and overrides). Read
    /// at start. Unset: reads are open and every write is refused (401).
    #[serde(default)]
    pub tokens_file: Option<PathBuf>,
    /// Let reads (`GET /api/v1/...`, the KEDA endpoint `/api/v1/keda/...` included) through
    /// without a token, as `/metrics` is. Writes always need one. Off with a tokens file:
    /// KEDA's metrics-api trigger sends a token (`authMode: bearer`).
    #[serde(default)]
    pub anonymous_read: bool,
    /// Largest request body accepted, bytes (413 above).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Largest `limit` of a listing (422 above).
    #[serde(default = "default_max_page_size")]
    pub max_page_size: u32,
    /// Requests under `/` and `/api/v1` handled at once; one more is answered 503 with
    /// `Retry-After` at once rather than queued. `/healthz`, `/readyz` and `/metrics` are
    /// outside this limit. From 1 to 100000.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Longest a request under `/` and `/api/v1` may take, reading its body included
    /// (503 beyond, so a client that trickles its body holds a slot no longer). From 1 s to
    /// 10 min.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Requests per second each caller may make under `/` and `/api/v1`, on average; one
    /// more is answered 429 with `Retry-After`. A caller is a token (by its name); requests
    /// without a valid token are keyed by the client's address (IPv4 address or IPv6 /64;
    /// behind a proxy, the proxy's): reads let through anonymously have one budget per
    /// address, refused requests (no token where one is needed, or an invalid one) another.
    /// From 1 to 100000.
    #[serde(default = "default_rate_per_caller")]
    pub rate_per_caller: u32,
    /// Requests a caller may make at once after a quiet spell (the bucket's size). From 1
    /// to 100000.
    #[serde(default = "default_burst_per_caller")]
    pub burst_per_caller: u32,
}

/// The review store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Database URL. Unset: the SQLite file `prescale.db` in `data_dir` (one replica).
    /// `postgres://user@host/db` when several replicas of prescale run.
    #[serde(default)]
    pub url: Option<String>,
    /// How long ended recommendations and audit entries are kept (checked hourly). Pending
    /// and approved recommendations, and each workload's newest and newest applied one, are
    /// kept whatever their age; audit entries are not (who paused, pinned or added an override
    /// still in force goes too once older than this). From 1 day to 100 years.
    #[serde(default = "default_retention", with = "humantime_serde")]
    pub retention: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: None,
            retention: default_retention(),
        }
    }
}

fn default_retention() -> Duration {
    Duration::from_secs(90 * 86_400)
}

/// The KEDA endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KedaConfig {
    /// A recommendation is served for this long after the loop last refreshed it; after
    /// that the gRPC scaler answers `UNAVAILABLE` and metrics-api `503` (KEDA's `fallback`
    /// then applies). Default: three loop intervals.
    #[serde(default, with = "humantime_serde")]
    pub stale_after: Option<Duration>,
    /// Largest gRPC message accepted, bytes; larger ones get `RESOURCE_EXHAUSTED`.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Most `scalerMetadata` entries accepted; more get `INVALID_ARGUMENT`.
    #[serde(default = "default_max_metadata_entries")]
    pub max_metadata_entries: usize,
    /// Longest `scalerMetadata` key or value accepted, bytes; longer get `INVALID_ARGUMENT`.
    #[serde(default = "default_max_metadata_value_bytes")]
    pub max_metadata_value_bytes: usize,
    /// TLS for the gRPC server; unset means plaintext.
    #[serde(default)]
    pub tls: Option<GrpcTlsConfig>,
}

/// TLS of the gRPC server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcTlsConfig {
    /// PEM certificate chain of the server.
    pub cert_file: PathBuf,
    /// PEM private key of the server.
    pub key_file: PathBuf,
    /// PEM CA bundle; when set, clients must present a certificate it signed (mutual TLS).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

/// The Kubernetes API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// API server URL. Unset: the in-cluster service account, else `$KUBECONFIG` or
    /// `~/.kube/config`.
    #[serde(default)]
    pub api_url: Option<String>,
    /// Timeout of one API request.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Retries of a request that timed out or got a 5xx, with backoff. 403, 404 and 429 are
    /// never retried at once.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// This replica's identity in the Lease. Default: `$POD_NAME`, else the host name. Leave
    /// it unset in a config that several replicas share: replicas with one identity all
    /// count as the holder and all write `/scale`. Must not be empty.
    #[serde(default)]
    pub identity: Option<String>,
    /// Leader election; set it when more than one replica of prescale runs. Only the holder
    /// writes `/scale`.
    #[serde(default)]
    pub lease: Option<LeaseYaml>,
}

/// Where the leader Lease lives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseYaml {
    /// Namespace of the Lease (usually prescale's own).
    pub namespace: String,
    /// Name of the Lease.
    #[serde(default = "default_lease_name")]
    pub name: String,
    /// How long a holder keeps the Lease without renewing; it renews every third of this
    /// and stops writing after two thirds without a renewal.
    #[serde(default = "default_lease_duration", with = "humantime_serde")]
    pub duration: Duration,
}

/// How a workload's recommendations reach the cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActuatorKind {
    /// Published for KEDA (gRPC external scaler and metrics-api JSON); KEDA's HPA scales.
    #[default]
    Keda,
    /// Written to the workload's `/scale` subresource by prescale itself.
    Scale,
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// What prescale does with a workload's recommendations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Forecast and export only.
    #[default]
    Observe,
    /// Every change of desired replicas waits for approval.
    Recommend,
    /// Changes are applied through the configured actuator.
    Auto,
}

impl Mode {
    /// The name used in YAML and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Observe => "observe",
            Mode::Recommend => "recommend",
            Mode::Auto => "auto",
        }
    }
}

/// The kind of a workload's scale target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkloadKind {
    /// `apps/v1` Deployment.
    Deployment,
    /// `apps/v1` StatefulSet.
    StatefulSet,
}

/// One workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadConfig {
    /// Kubernetes namespace (a DNS-1123 label).
    pub namespace: String,
    /// Name of the Deployment or StatefulSet (a DNS-1123 subdomain).
    pub name: String,
    /// Kind of the scale target.
    #[serde(default = "default_kind")]
    pub kind: WorkloadKind,
    /// PromQL returning exactly one series: the workload's demand. `{{namespace}}` and
    /// `{{name}}` are replaced by the workload's namespace and name, escaped for use inside a
    /// double-quoted PromQL string (write `namespace="{{namespace}}"`).
    pub demand_query: String,
    /// Demand one ready replica serves at 100% utilisation (same unit as the query).
    pub capacity_per_replica: f64,
    /// Share of `capacity_per_replica` the forecast may use (the quantile already carries
    /// the headroom, so 1.0 is the usual value).
    #[serde(default = "default_target_utilization")]
    pub target_utilization: f64,
    /// Lowest replica count ever asked for.
    #[serde(default = "default_min_replicas")]
    pub min_replicas: u32,
    /// Highest replica count ever asked for.
    pub max_replicas: u32,
    /// Time from asking for a pod to it serving: the forecast lead. At most 1 day.
    #[serde(default = "default_startup", with = "humantime_serde")]
    pub startup: Duration,
    /// `observe`, `recommend` or `auto`.
    #[serde(default)]
    pub mode: Mode,
    /// Model preset: a built-in name (`auto`, `seasonal`, `reactive`, `conservative`) or a
    /// path to a preset YAML file.
    #[serde(default = "default_model")]
    pub model: String,
    /// Quantile of demand to forecast (overrides the preset's).
    #[serde(default)]
    pub quantile: Option<f64>,
    /// `keda` (published for KEDA to apply) or `scale` (prescale writes `/scale` itself: in
    /// `auto` mode what it decides, in `recommend` mode what was approved, after reading the
    /// replicas really there).
    #[serde(default)]
    pub actuator: ActuatorKind,
    /// `recommend` mode: how long a recommendation waits for a decision before it expires.
    #[serde(default = "default_recommendation_ttl", with = "humantime_serde")]
    pub recommendation_ttl: Duration,
    /// `recommend` mode: scale-ups of at most this many percent are applied without waiting
    /// (recorded as approved by `prescale:autonomy`); larger jumps and every scale-down wait
    /// for a person. Unset: every change waits.
    #[serde(default)]
    pub auto_approve_scale_up_percent: Option<f64>,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_retries() -> u32 {
    2
}
fn default_stale_after() -> Duration {
    Duration::from_secs(300)
}
fn default_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_history() -> Duration {
    Duration::from_secs(14 * 86_400)
}
fn default_concurrency() -> usize {
    8
}
fn default_http() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_grpc() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}
fn default_max_body_bytes() -> usize {
    16 * 1024
}
fn default_max_page_size() -> u32 {
    200
}
fn default_max_in_flight() -> usize {
    256
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_rate_per_caller() -> u32 {
    50
}
fn default_burst_per_caller() -> u32 {
    100
}
fn default_recommendation_ttl() -> Duration {
    Duration::from_secs(1800)
}
fn default_max_message_bytes() -> usize {
    64 * 1024
}
fn default_max_metadata_entries() -> usize {
    64
}
fn default_max_metadata_value_bytes() -> usize {
    4096
}
fn default_lease_name() -> String {
    "prescale-leader".to_string()
}
fn default_lease_duration() -> Duration {
    Duration::from_secs(15)
}
fn default_kind() -> WorkloadKind {
    WorkloadKind::Deployment
}
fn default_target_utilization() -> f64 {
    1.0
}
fn default_min_replicas() -> u32 {
    1
}
fn default_startup() -> Duration {
    Duration::from_secs(120)
}
fn default_model() -> String {
    "auto".to_string()
}

impl Default for LoopConfig {
    fn default() -> Self {
        Self {
            interval: default_interval(),
            history: default_history(),
            concurrency: default_concurrency(),
            warmup_budget: None,
            stall_after: None,
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            tokens_file: None,
            anonymous_read: false,
            max_body_bytes: default_max_body_bytes(),
            max_page_size: default_max_page_size(),
            max_in_flight: default_max_in_flight(),
            request_timeout: default_request_timeout(),
            rate_per_caller: default_rate_per_caller(),
            burst_per_caller: default_burst_per_caller(),
        }
    }
}

impl Default for KedaConfig {
    fn default() -> Self {
        Self {
            stale_after: None,
            max_message_bytes: default_max_message_bytes(),
            max_metadata_entries: default_max_metadata_entries(),
            max_metadata_value_bytes: default_max_metadata_value_bytes(),
            tls: None,
        }
    }
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            api_url: None,
            timeout: default_timeout(),
            retries: default_retries(),
            identity: None,
            lease: None,
        }
    }
}

impl KedaConfig {
    /// `stale_after`, or three loop intervals.
    pub fn stale_after(&self, interval: Duration) -> Duration {
        self.stale_after.unwrap_or(interval * 3)
    }
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            http: default_http(),
            grpc: default_grpc(),
        }
    }
}

/// A configuration that cannot be used. The message names the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The config file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The YAML is malformed, has an unknown field or a value of the wrong type.
    #[error("{path}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The parser's message (names the field, line and column).
        message: String,
    },
    /// A field holds a value that cannot work.
    #[error("{field}: {message}")]
    Invalid {
        /// Path of the field, e.g. `workloads[2].max_replicas`.
        field: String,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    /// Bounded label for metrics and tests.
    pub fn kind(&self) -> &'static str {
        match self {
            ConfigError::Io { .. } => "io",
            ConfigError::Parse { .. } => "parse",
            ConfigError::Invalid { .. } => "invalid",
        }
    }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// True for a DNS-1123 label: lowercase alphanumerics and `-`, starting and ending with an
/// alphanumeric, at most 63 characters.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// True for a DNS-1123 subdomain: dot-separated labels, at most 253 characters.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Escapes `s` for use inside a double-quoted PromQL string literal, so that no value can
/// end the string or change the query.
pub fn promql_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

impl WorkloadConfig {
    /// The demand query with `{{namespace}}` and `{{name}}` substituted (escaped).
    pub fn render_query(&self) -> String {
        self.demand_query
            .replace("{{namespace}}", &promql_escape(&self.namespace))
            .replace("{{name}}", &promql_escape(&self.name))
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl Config {
    /// Reads, applies environment overrides (from `env`), and validates a config file.
    ///
    /// # Errors
    /// [`ConfigError`] naming the field at fault.
    pub fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text, env)
    }

    /// As [`Config::load`], from text; `path` is only used in messages.
    ///
    /// # Errors
    /// [`ConfigError`] naming the field at fault.
    pub fn parse(
        path: &Path,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut cfg: Config = serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        cfg.apply_env(env)?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        for &(var, field) in ENV_OVERRIDES {
            let Some(v) = env(var) else { continue };
            let bad = |m: String| invalid(format!("{field} (from {var})"), m);
            match field {
                "prometheus.url" => self.prometheus.url = v,
                "data_dir" => self.data_dir = PathBuf::from(v),
                "store.url" => self.store.url = Some(v),
                "api.anonymous_read" => {
                    self.api.anonymous_read = match v.as_str() {
                        "true" => true,
                        "false" => false,
                        other => return Err(bad(format!("`{other}` is not true or false"))),
                    }
                }
                "api.rate_per_caller" => {
                    self.api.rate_per_caller = v.parse().map_err(|e| bad(format!("{e}")))?;
                }
                "listen.http" => self.listen.http = v.parse().map_err(|e| bad(format!("{e}")))?,
                "listen.grpc" => self.listen.grpc = v.parse().map_err(|e| bad(format!("{e}")))?,
                "log_format" => {
                    self.log_format = match v.as_str() {
                        "text" => LogFormat::Text,
                        "json" => LogFormat::Json,
                        other => return Err(bad(format!("`{other}` is not text or json"))),
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Checks every field once; after this, code trusts the values.
    ///
    /// # Errors
    /// The first field at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let p = &self.prometheus;
        if !(p.url.starts_with("http://") || p.url.starts_with("https://")) {
            return Err(invalid(
                "prometheus.url",
                "must start with http:// or https://",
            ));
        }
        if p.timeout.is_zero() {
            return Err(invalid("prometheus.timeout", "must be positive"));
        }
        if p.timeout >= self.loop_.interval {
            return Err(invalid(
                "prometheus.timeout",
                "must be shorter than loop.interval",
            ));
        }
        if p.retries > 10 {
            return Err(invalid("prometheus.retries", "must be at most 10"));
        }
        // A fetch that fails every attempt must still end inside its loop (else the hold it
        // causes comes a loop late, and loops pile up behind it).
        let attempts = p.retries + 1;
        let backoff = crate::collector::retry_backoff_total(p.retries);
        if p.timeout.saturating_mul(attempts).saturating_add(backoff) >= self.loop_.interval {
            return Err(invalid(
                "prometheus.timeout",
                format!(
                    "timeout x {attempts} attempts (retries + 1) plus {} ms of backoff must be shorter than loop.interval",
                    backoff.as_millis()
                ),
            ));
        }
        if self.loop_.interval < Duration::from_secs(1)
            || self.loop_.interval > Duration::from_secs(MAX_DURATION_SECONDS)
        {
            return Err(invalid("loop.interval", "must be in 1s..=1d"));
        }
        if self.loop_.history < 4 * self.loop_.interval {
            return Err(invalid(
                "loop.history",
                "must cover at least 4 loop intervals",
            ));
        }
        if self.loop_.concurrency == 0 || self.loop_.concurrency > 1024 {
            return Err(invalid("loop.concurrency", "must be in 1..=1024"));
        }
        if self.store.retention < Duration::from_secs(86_400)
            || self.store.retention > Duration::from_secs(100 * 365 * 86_400)
        {
            return Err(invalid("store.retention", "must be in 1d..=100y"));
        }
        if self.loop_.warmup_budget() > Duration::from_secs(86_400) {
            return Err(invalid("loop.warmup_budget", "must be at most 1d"));
        }
        if self.loop_.stall_after() < self.loop_.interval
            || self.loop_.stall_after() > Duration::from_secs(MAX_DURATION_SECONDS)
        {
            return Err(invalid(
                "loop.stall_after",
                "must be at least loop.interval and at most 1d",
            ));
        }
        if p.stale_after.is_zero() || p.stale_after > self.loop_.history {
            return Err(invalid(
                "prometheus.stale_after",
                "must be positive and at most loop.history",
            ));
        }
        let k = &self.keda;
        if k.stale_after.is_some_and(|d| {
            d < self.loop_.interval || d > Duration::from_secs(MAX_DURATION_SECONDS)
        }) {
            return Err(invalid(
                "keda.stale_after",
                "must be at least one loop.interval and at most 1d",
            ));
        }
        if !(1024..=16 * 1024 * 1024).contains(&k.max_message_bytes) {
            return Err(invalid(
                "keda.max_message_bytes",
                "must be in 1 KiB..=16 MiB",
            ));
        }
        if k.max_metadata_entries == 0 || k.max_metadata_value_bytes < 64 {
            return Err(invalid(
                "keda.max_metadata_entries",
                "entries must be positive and max_metadata_value_bytes at least 64",
            ));
        }
        let kube = &self.kubernetes;
        if let Some(url) = &kube.api_url
            && url
                .parse::<axum::http::Uri>()
                .map_or(true, |u| u.scheme().is_none() || u.host().is_none())
        {
            return Err(invalid(
                "kubernetes.api_url",
                format!("`{url}` is not an absolute URL"),
            ));
        }
        if kube.timeout.is_zero() || kube.timeout > Duration::from_secs(60) {
            return Err(invalid("kubernetes.timeout", "must be in (0s, 60s]"));
        }
        if kube.retries > 10 {
            return Err(invalid("kubernetes.retries", "must be at most 10"));
        }
        // One /scale call that fails every attempt must end inside its loop, as a Prometheus
        // fetch must: a hung API server would otherwise stall every workload's publication.
        let kube_attempts = kube.retries + 1;
        let kube_backoff = crate::actuator::retry_backoff_max(kube.retries);
        let writes_scale = self
            .workloads
            .iter()
            .any(|w| w.actuator == ActuatorKind::Scale);
        if writes_scale
            && kube
                .timeout
                .saturating_mul(kube_attempts)
                .saturating_add(kube_backoff)
                >= self.loop_.interval
        {
            return Err(invalid(
                "kubernetes.timeout",
                format!(
                    "timeout x {kube_attempts} attempts (retries + 1) plus up to {} ms of backoff \
                     must be shorter than loop.interval",
                    kube_backoff.as_millis()
                ),
            ));
        }
        if kube.identity.as_ref().is_some_and(|i| i.trim().is_empty()) {
            return Err(invalid("kubernetes.identity", "must not be empty"));
        }
        if let Some(l) = &kube.lease {
            if !is_dns_label(&l.namespace) {
                return Err(invalid(
                    "kubernetes.lease.namespace",
                    "must be a DNS-1123 label",
                ));
            }
            if !is_dns_subdomain(&l.name) {
                return Err(invalid(
                    "kubernetes.lease.name",
                    "must be a DNS-1123 subdomain",
                ));
            }
            // Longer than 10 minutes, a crashed holder stalls every /scale write for that long.
            if l.duration < Duration::from_secs(3) || l.duration > Duration::from_secs(600) {
                return Err(invalid("kubernetes.lease.duration", "must be in 3s..=10m"));
            }
            // The holder acts for two thirds of the duration after a renewal and checks the
            // Lease before every attempt of a write; an attempt started at the end of that
            // window must be over before another replica may take the Lease.
            if kube.timeout * 3 > l.duration {
                return Err(invalid(
                    "kubernetes.timeout",
                    format!(
                        "must be at most a third of kubernetes.lease.duration ({:?}), so a write \
                         started by the holder ends before the Lease can pass to another replica",
                        l.duration
                    ),
                ));
            }
        }
        if !(256..=16 * 1024 * 1024).contains(&self.api.max_body_bytes) {
            return Err(invalid("api.max_body_bytes", "must be in 256..=16 MiB"));
        }
        if !(1..=10_000).contains(&self.api.max_page_size) {
            return Err(invalid("api.max_page_size", "must be in 1..=10000"));
        }
        if !(1..=100_000).contains(&self.api.max_in_flight) {
            return Err(invalid("api.max_in_flight", "must be in 1..=100000"));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&self.api.request_timeout)
        {
            return Err(invalid("api.request_timeout", "must be from 1s to 10m"));
        }
        if !(1..=100_000).contains(&self.api.rate_per_caller) {
            return Err(invalid("api.rate_per_caller", "must be in 1..=100000"));
        }
        if !(1..=100_000).contains(&self.api.burst_per_caller) {
            return Err(invalid("api.burst_per_caller", "must be in 1..=100000"));
        }
        if let Some(url) = &self.store.url
            && !(url.starts_with("postgres://")
                || url.starts_with("postgresql://")
                || url.starts_with("sqlite:"))
        {
            return Err(invalid(
                "store.url",
                "must start with postgres://, postgresql:// or sqlite:",
            ));
        }
        if self.workloads.is_empty() {
            return Err(invalid("workloads", "must list at least one workload"));
        }
        let mut seen = HashSet::new();
        for (i, w) in self.workloads.iter().enumerate() {
            let f = |name: &str| format!("workloads[{i}].{name}");
            if !is_dns_label(&w.namespace) {
                return Err(invalid(
                    f("namespace"),
                    format!(
                        "`{}` is not a valid namespace (DNS-1123 label)",
                        w.namespace.escape_debug()
                    ),
                ));
            }
            if !is_dns_subdomain(&w.name) {
                return Err(invalid(
                    f("name"),
                    format!(
                        "`{}` is not a valid workload name (DNS-1123 subdomain)",
                        w.name.escape_debug()
                    ),
                ));
            }
            if !seen.insert((w.namespace.clone(), w.name.clone())) {
                return Err(invalid(f("name"), format!("{} is listed twice", w.key())));
            }
            if w.demand_query.trim().is_empty() {
                return Err(invalid(f("demand_query"), "must not be empty"));
            }
            if !(w.capacity_per_replica.is_finite() && w.capacity_per_replica > 0.0) {
                return Err(invalid(
                    f("capacity_per_replica"),
                    "must be a positive number",
                ));
            }
            if !(w.target_utilization > 0.0 && w.target_utilization <= 2.0) {
                return Err(invalid(f("target_utilization"), "must be in (0, 2]"));
            }
            if w.max_replicas == 0 {
                return Err(invalid(f("max_replicas"), "must be at least 1"));
            }
            if w.min_replicas > w.max_replicas {
                return Err(invalid(f("min_replicas"), "must not exceed max_replicas"));
            }
            if w.startup > Duration::from_secs(MAX_DURATION_SECONDS) {
                return Err(invalid(f("startup"), "must be at most 1d"));
            }
            if let Some(q) = w.quantile
                && !(q > 0.5 && q < 0.999)
            {
                return Err(invalid(f("quantile"), "must be in (0.5, 0.999)"));
            }
            ModelPreset::load(&w.model).map_err(|e| invalid(f("model"), e.to_string()))?;
            if w.recommendation_ttl < Duration::from_secs(60)
                || w.recommendation_ttl > Duration::from_secs(366 * 86_400)
            {
                return Err(invalid(f("recommendation_ttl"), "must be in 1m..=366d"));
            }
            if let Some(p) = w.auto_approve_scale_up_percent
                && !(p.is_finite() && p >= 0.0)
            {
                return Err(invalid(
                    f("auto_approve_scale_up_percent"),
                    "must be a non-negative number",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
prometheus:
  url: http://127.0.0.1:9090
workloads:
  - namespace: shop
    name: web
    demand_query: 'sum(rate(http_requests_total{namespace="{{namespace}}", deployment="{{name}}"}[2m]))'
    capacity_per_replica: 50
    max_replicas: 20
"#;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("c.yaml"), text, &no_env)
    }

    #[test]
    fn the_rate_per_caller_can_be_set_from_the_environment_and_is_validated() {
        let env = |v: &'static str| {
            move |k: &str| (k == "PRESCALE_API_RATE_PER_CALLER").then(|| v.to_string())
        };
        let c = Config::parse(Path::new("c.yaml"), GOOD, &env("500")).unwrap();
        assert_eq!(c.api.rate_per_caller, 500);
        assert_eq!(parse(GOOD).unwrap().api.rate_per_caller, 50);
        for bad in ["0", "fast", "-3"] {
            let e = Config::parse(Path::new("c.yaml"), GOOD, &env(bad)).unwrap_err();
            assert!(e.to_string().contains("api.rate_per_caller"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_minimal_config_gets_documented_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.loop_.interval, Duration::from_secs(60));
        assert_eq!(c.loop_.warmup_budget(), Duration::from_secs(30));
        assert_eq!(c.store.retention, Duration::from_secs(90 * 86_400));
        assert_eq!(c.listen.http, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.listen.grpc, "127.0.0.1:9090".parse().unwrap());
        let w = &c.workloads[0];
        assert_eq!(
            (w.mode, w.kind, w.min_replicas),
            (Mode::Observe, WorkloadKind::Deployment, 1)
        );
        assert_eq!(
            w.render_query(),
            r#"sum(rate(http_requests_total{namespace="shop", deployment="web"}[2m]))"#
        );
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            (
                GOOD.replace(
                    "capacity_per_replica: 50",
                    "capacity_per_replica: 50\n    colour: red",
                ),
                "colour",
            ),
            (
                GOOD.replace("max_replicas: 20", "max_replicas: 0"),
                "workloads[0].max_replicas",
            ),
            (
                GOOD.replace("max_replicas: 20", "max_replicas: 2\n    min_replicas: 3"),
                "workloads[0].min_replicas",
            ),
            (
                GOOD.replace("capacity_per_replica: 50", "capacity_per_replica: -1"),
                "workloads[0].capacity_per_replica",
            ),
            (
                GOOD.replace("name: web", "name: Web_1"),
                "workloads[0].name",
            ),
            (
                GOOD.replace("namespace: shop", "namespace: 'a\"b'"),
                "workloads[0].namespace",
            ),
            (
                GOOD.replace("url: http://127.0.0.1:9090", "url: 127.0.0.1:9090"),
                "prometheus.url",
            ),
            (
                GOOD.replace("max_replicas: 20", "max_replicas: 20\n    model: nope"),
                "workloads[0].model",
            ),
            (
                GOOD.replace("max_replicas: 20", "max_replicas: 20\n    mode: yolo"),
                "yolo",
            ),
            (
                format!("{GOOD}loop:\n  interval: 2s\n"),
                "prometheus.timeout",
            ),
            (
                format!(
                    "{GOOD}kubernetes:\n  timeout: 6s\n  lease:\n    namespace: p\n    duration: 15s\n"
                ),
                "kubernetes.timeout",
            ),
            (
                format!("{GOOD}loop:\n  warmup_budget: 2d\n"),
                "loop.warmup_budget",
            ),
            (
                format!("{GOOD}loop:\n  stall_after: 30s\n"),
                "loop.stall_after",
            ),
            (
                format!("{GOOD}loop:\n  interval: 2d\n  history: 30d\n"),
                "loop.interval",
            ),
            (
                GOOD.replace("max_replicas: 20", "max_replicas: 20\n    startup: 2d"),
                "workloads[0].startup",
            ),
            (
                format!("{GOOD}store:\n  retention: 2h\n"),
                "store.retention",
            ),
            (
                format!("{GOOD}prometheus:\n  url: http://p:9090\n  stale_after: 20d\n").replacen(
                    "prometheus:\n  url: http://127.0.0.1:9090\n",
                    "",
                    1,
                ),
                "prometheus.stale_after",
            ),
            (
                format!("{GOOD}keda:\n  stale_after: 2d\n"),
                "keda.stale_after",
            ),
            (
                GOOD.replace(
                    "max_replicas: 20",
                    "max_replicas: 20\n    recommendation_ttl: 400d",
                ),
                "workloads[0].recommendation_ttl",
            ),
            (
                format!("{GOOD}kubernetes:\n  identity: ' '\n"),
                "kubernetes.identity",
            ),
            (
                format!("{GOOD}kubernetes:\n  lease:\n    namespace: p\n    duration: 1h\n"),
                "kubernetes.lease.duration",
            ),
            (
                // 20 s x 3 attempts reaches the 60 s loop once a workload writes /scale.
                GOOD.replace("max_replicas: 20", "max_replicas: 20\n    actuator: scale")
                    + "kubernetes:\n  timeout: 20s\n",
                "kubernetes.timeout",
            ),
            (
                format!("{GOOD}store:\n  retention: 200y\n"),
                "store.retention",
            ),
            (
                format!("{GOOD}api:\n  max_in_flight: 0\n"),
                "api.max_in_flight",
            ),
            (
                format!("{GOOD}api:\n  request_timeout: 500ms\n"),
                "api.request_timeout",
            ),
            (
                format!("{GOOD}api:\n  rate_per_caller: 0\n"),
                "api.rate_per_caller",
            ),
        ];
        for (text, needle) in cases {
            let e = parse(&text).unwrap_err();
            assert!(e.to_string().contains(needle), "{needle}: {e}");
        }
    }

    #[test]
    fn a_fetch_failing_every_attempt_must_end_inside_its_loop() {
        let with = |timeout: &str, retries: u32| {
            let prom =
                format!("url: http://127.0.0.1:9090\n  timeout: {timeout}\n  retries: {retries}");
            format!(
                "{}loop:\n  interval: 30s\n",
                GOOD.replace("url: http://127.0.0.1:9090", &prom)
            )
        };
        // 3 x 10 s + 300 ms of backoff: past the 30 s loop.
        let e = parse(&with("10s", 2)).unwrap_err().to_string();
        assert!(
            e.contains("prometheus.timeout") && e.contains("300 ms"),
            "{e}"
        );
        // 29.7 s + 300 ms is the loop itself; 29.4 s + 300 ms fits.
        assert!(parse(&with("9900ms", 2)).is_err());
        assert!(parse(&with("9800ms", 2)).is_ok());
        // The backoff counts: 10 retries sleep 102.3 s between them.
        assert!(parse(&with("1s", 10)).is_err());
        assert_eq!(crate::collector::retry_backoff_total(0), Duration::ZERO);
        assert_eq!(
            crate::collector::retry_backoff_total(10),
            Duration::from_millis(102_300)
        );
    }

    #[test]
    fn a_lease_with_a_timeout_of_a_third_of_its_duration_is_accepted() {
        let text = format!(
            "{GOOD}kubernetes:\n  timeout: 5s\n  lease:\n    namespace: p\n    duration: 15s\n"
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.kubernetes.timeout, Duration::from_secs(5));
    }

    #[test]
    fn environment_overrides_deploy_time_knobs() {
        let env = |k: &str| match k {
            "PRESCALE_LISTEN_HTTP" => Some("0.0.0.0:18080".to_string()),
            "PRESCALE_PROMETHEUS_URL" => Some("https://prom:9090".to_string()),
            _ => None,
        };
        let c = Config::parse(Path::new("c.yaml"), GOOD, &env).unwrap();
        assert_eq!(c.listen.http, "0.0.0.0:18080".parse().unwrap());
        assert_eq!(c.prometheus.url, "https://prom:9090");
        let bad = |k: &str| (k == "PRESCALE_LOG_FORMAT").then(|| "xml".to_string());
        let e = Config::parse(Path::new("c.yaml"), GOOD, &bad).unwrap_err();
        assert!(e.to_string().contains("log_format"), "{e}");
    }

    #[test]
    fn hostile_label_values_cannot_escape_the_promql_string() {
        for hostile in [r#"a"}or vector(1)#"#, "a\\\"", "x\ny", "}#", "\"", "\\"] {
            let esc = promql_escape(hostile);
            // Every quote in the escaped text is preceded by an odd number of backslashes.
            let b = esc.as_bytes();
            for (i, &c) in b.iter().enumerate() {
                if c == b'"' {
                    let slashes = b[..i].iter().rev().take_while(|&&x| x == b'\\').count();
                    assert!(slashes % 2 == 1, "{hostile:?} -> {esc}");
                }
            }
            assert!(!esc.contains('\n'));
        }
        assert_eq!(promql_escape(r#"a"b\c"#), r#"a\"b\\c"#);
    }
}
