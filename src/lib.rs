//! prescale: a predictive autoscaler for Kubernetes.
//!
//! # Layout
//!
//! ```text
//! trace / Prometheus ─▶ forecast::Engine ─▶ policy::PredictivePolicy ─▶ Decision
//!                        (models, backtest,     (lead window, floor,       (desired_replicas
//!                         conformal quantile)    bounds, stabilisation)     + reason)
//! ```
//!
//! - [`domain`]: plain data every stage shares.
//! - [`forecast`]: history handling, seasonality, models, selection, calibration (pure).
//! - [`policy`]: predictive policy and the HPA baseline (pure).
//! - [`sim`]: `prescale replay`: the replay contract's physics, scores, suite, plots.
//! - [`collector`]: demand from Prometheus (or the demo trace), strictly parsed.
//! - [`config`]: the service's YAML configuration, validated once.
//! - [`metrics`]: `/metrics` (prometheus-client).
//! - [`api`]: the HTTP server (axum).
//! - [`app`]: `prescale serve`: the loop and the wiring; the only module that knows every
//!   concrete type.

pub mod actuator;
pub mod api;
pub mod app;
pub mod collector;
pub mod config;
pub mod domain;
pub mod forecast;
pub mod loadtest;
pub mod metrics;
pub mod policy;
pub mod sim;
pub mod store;
#[cfg(test)]
mod testutil;
