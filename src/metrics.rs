//! `/metrics`: per-workload forecasts and decisions, and self-metrics (prometheus-client).
//!
//! Names are `prescale_<noun>_<unit>[_total]`; per-workload series carry `namespace` and
//! `workload`; every other label is a small fixed set.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

/// Labels of per-workload series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkloadLabels {
    /// Kubernetes namespace.
    pub namespace: Arc<str>,
    /// Workload name.
    pub workload: Arc<str>,
}

/// Forecast horizons exported (a bounded set): the lead window, 15 minutes, 1 and 6 hours.
pub const HORIZONS: [(&str, u64); 4] = [("lead", 0), ("15m", 900), ("1h", 3600), ("6h", 21_600)];

/// Labels of forecast series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ForecastLabels {
    /// Kubernetes namespace.
    pub namespace: Arc<str>,
    /// Workload name.
    pub workload: Arc<str>,
    /// How far ahead: `lead`, `15m`, `1h`, `6h`.
    pub horizon: &'static str,
    /// `point` (median-like) or `upper` (calibrated upper quantile).
    pub band: &'static str,
}

/// Labels of `prescale_decision_term`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TermLabels {
    /// Kubernetes namespace.
    pub namespace: Arc<str>,
    /// Workload name.
    pub workload: Arc<str>,
    /// Policy term (`Term::as_str`).
    pub term: &'static str,
}

/// Labels of `prescale_model_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    /// Kubernetes namespace.
    pub namespace: Arc<str>,
    /// Workload name.
    pub workload: Arc<str>,
    /// Model name (`ModelKind::as_str`).
    pub model: &'static str,
}

/// Labels of `prescale_workload_state`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// Kubernetes namespace.
    pub namespace: Arc<str>,
    /// Workload name.
    pub workload: Arc<str>,
    /// State name.
    pub state: &'static str,
}

/// Labels of the error counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Pipeline stage: `collector`, `forecast`, `actuator`, `store`, `api`, `loop` (a
    /// workload step that panicked: kind `panic`).
    pub stage: &'static str,
    /// Error kind (each stage's bounded `kind()`).
    pub kind: &'static str,
}

/// Labels of `prescale_actuations_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActuationLabels {
    /// Kubernetes namespace.
    pub namespace: Arc<str>,
    /// Workload name.
    pub workload: Arc<str>,
    /// `written`, `unchanged`, or an actuator error kind (`ActuateError::kind`).
    pub result: &'static str,
}

/// Labels of `prescale_build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// Crate version.
    pub version: &'static str,
}

/// Every metric prescale exports.
#[derive(Debug)]
pub struct Metrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    /// `prescale_demand`: latest observed demand.
    pub demand: Family<WorkloadLabels, Gauge<f64, AtomicU64>>,
    /// `prescale_forecast_demand`: forecast demand by horizon and band.
    pub forecast: Family<ForecastLabels, Gauge<f64, AtomicU64>>,
    /// `prescale_desired_replicas`.
    pub desired: Family<WorkloadLabels, Gauge>,
    /// `prescale_current_replicas`, when known.
    pub current: Family<WorkloadLabels, Gauge>,
    /// `prescale_decision_term`: 1 for the policy term that decided, 0 for the others.
    pub term: Family<TermLabels, Gauge>,
    /// `prescale_model_info`: 1 for the model in use, 0 for the others.
    pub model: Family<ModelLabels, Gauge>,
    /// `prescale_workload_state`: 1 for the current state, 0 for the others.
    pub state: Family<StateLabels, Gauge>,
    /// `prescale_forecast_coverage_ratio`: share of actuals under the upper quantile.
    pub coverage: Family<WorkloadLabels, Gauge<f64, AtomicU64>>,
    /// `prescale_backtest_error_ratio`: mean absolute error at the lead horizon / mean demand.
    pub backtest_error: Family<WorkloadLabels, Gauge<f64, AtomicU64>>,
    /// `prescale_forecast_last_success_timestamp_seconds`.
    pub last_success: Family<WorkloadLabels, Gauge<f64, AtomicU64>>,
    /// `prescale_loop_duration_seconds`.
    pub loop_duration: Histogram,
    /// `prescale_collector_request_duration_seconds`.
    pub collector_duration: Histogram,
    /// `prescale_errors_total` by stage and kind.
    pub errors: Family<ErrorLabels, Counter>,
    /// `prescale_workloads`: workloads configured.
    pub workloads: Gauge,
    /// `prescale_safe_to_act`: 0 while too many workloads fail and scale-downs are held.
    pub safe_to_act: Gauge,
    /// `prescale_warmups_pending`: workloads whose warm-up waits for a loop's budget.
    pub warmups_pending: Gauge,
    /// `prescale_model_refits_total`: refits of a workload's candidate models (one refit fits
    /// every candidate), summed over workloads.
    pub refits: Counter,
    /// `prescale_actuations_total`: `/scale` actuator outcomes per workload.
    pub actuations: Family<ActuationLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// All metrics, registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("prescale");
        let m = Self {
            demand: Family::default(),
            forecast: Family::default(),
            desired: Family::default(),
            current: Family::default(),
            term: Family::default(),
            model: Family::default(),
            state: Family::default(),
            coverage: Family::default(),
            backtest_error: Family::default(),
            last_success: Family::default(),
            loop_duration: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            collector_duration: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            errors: Family::default(),
            workloads: Gauge::default(),
            actuations: Family::default(),
            safe_to_act: Gauge::default(),
            refits: Counter::default(),
            warmups_pending: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "demand",
            "Latest observed demand (the demand query's unit)",
            m.demand.clone(),
        );
        registry.register(
            "forecast_demand",
            "Forecast demand by horizon (lead = startup plus one loop) and band (point, upper quantile)",
            m.forecast.clone(),
        );
        registry.register(
            "desired_replicas",
            "Replicas prescale wants",
            m.desired.clone(),
        );
        registry.register(
            "current_replicas",
            "Replicas the workload has, when known",
            m.current.clone(),
        );
        registry.register(
            "decision_term",
            "1 for the policy term behind desired_replicas",
            m.term.clone(),
        );
        registry.register(
            "model_info",
            "1 for the forecasting model in use",
            m.model.clone(),
        );
        registry.register(
            "workload_state",
            "1 for the workload's current state",
            m.state.clone(),
        );
        registry.register(
            "forecast_coverage_ratio",
            "Share of actuals at or below the upper quantile, at the lead horizon",
            m.coverage.clone(),
        );
        registry.register(
            "backtest_error_ratio",
            "Mean absolute forecast error at the lead horizon over mean demand (recent backtest)",
            m.backtest_error.clone(),
        );
        registry.register(
            "forecast_last_success_timestamp_seconds",
            "When the workload last got a forecast",
            m.last_success.clone(),
        );
        registry.register(
            "loop_duration_seconds",
            "Duration of one pass over all workloads",
            m.loop_duration.clone(),
        );
        registry.register(
            "collector_request_duration_seconds",
            "Duration of one workload's fetch from the metric source",
            m.collector_duration.clone(),
        );
        registry.register(
            "errors",
            "Errors by pipeline stage and kind",
            m.errors.clone(),
        );
        registry.register("workloads", "Workloads configured", m.workloads.clone());
        registry.register(
            "warmups_pending",
            "Workloads whose warm-up waits for a loop's budget (decided as the HPA would meanwhile)",
            m.warmups_pending.clone(),
        );
        registry.register(
            "model_refits",
            "Refits of the workloads' candidate models (a restored state refits none until due)",
            m.refits.clone(),
        );
        m.safe_to_act.set(1);
        registry.register(
            "safe_to_act",
            "1 normally; 0 while more than half of the workloads fail and no workload is scaled down",
            m.safe_to_act.clone(),
        );
        registry.register(
            "actuations",
            "Outcomes of the /scale actuator: written, unchanged, or the error kind",
            m.actuations.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "Build information (always 1)", build);
        Self { registry, ..m }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The classic Prometheus text format (0.0.4), for scrapers and tools (`promtool check
    /// metrics`) that do not ask for OpenMetrics: counter families are named with their
    /// `_total` suffix and the OpenMetrics-only lines are dropped.
    pub fn encode_text(&self) -> String {
        let open = self.encode();
        let counters: std::collections::HashSet<&str> = open
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
            .collect();
        let mut out = String::with_capacity(open.len());
        for line in open.lines() {
            if line == "# EOF" || line.starts_with("# UNIT ") {
                continue;
            }
            let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
                let rest = line.strip_prefix(p)?;
                let (name, tail) = rest.split_once(' ')?;
                counters
                    .contains(name)
                    .then(|| format!("{p}{name}_total {tail}"))
            });
            out.push_str(renamed.as_deref().unwrap_or(line));
            out.push('\n');
        }
        out
    }

    /// Sets a one-hot family: the series for `value` to 1, those for every other of `all`
    /// to 0 (so a dashboard sees every state, not only the current one).
    pub fn one_hot<L>(
        family: &Family<L, Gauge>,
        all: &[&'static str],
        value: &str,
        labels: impl Fn(&'static str) -> L,
    ) where
        L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
    {
        for v in all {
            family.get_or_create(&labels(v)).set(i64::from(*v == value));
        }
    }
}
