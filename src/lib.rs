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

pub mod domain;
pub mod forecast;
pub mod policy;
pub mod sim;
