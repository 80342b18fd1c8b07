//! Model presets: the text files under `models/` that users pick from, loaded by one parser.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ModelKind;

/// How forecast residuals are scaled before their quantiles are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResidualScale {
    /// Errors in proportion to the forecast: headroom grows with demand.
    Relative,
    /// Errors in proportion to the square root of the forecast (count-like noise).
    Sqrt,
    /// Errors in demand units, normalised only by the slow-moving mean level.
    Absolute,
    /// `absolute` while demand is intermittent (a quarter or more of recent samples are
    /// zero, with hysteresis), `relative` otherwise: an error learnt relative to a forecast
    /// of about zero (after an empty bin) would multiply the band at the next burst.
    Auto,
}

/// A model preset: which models compete and how they are scored and calibrated.
///
/// Every field has a default except `name`; see `models/README.md` for the shipped presets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPreset {
    /// Name users select the preset by (`--model NAME`, `model:` in config).
    pub name: String,
    /// One line on when to use it.
    #[serde(default)]
    pub description: String,
    /// Models that compete; the one with the lowest recent asymmetric loss at the lead horizon
    /// is used. `persistence` always runs as the reactive reference.
    #[serde(default = "default_candidates")]
    pub candidates: Vec<ModelKind>,
    /// Quantile of demand the forecast's upper band targets, in (0.5, 0.999).
    #[serde(default = "default_quantile")]
    pub quantile: f64,
    /// History the models are fitted on (the most recent part of what is kept).
    #[serde(default = "default_history", with = "humantime_serde")]
    pub history: Duration,
    /// How often models are refitted and seasonality re-detected (in data time). Until a
    /// fit has seen this much history (a workload without backfill), they are refitted
    /// also each time the history has doubled and at least 1,440 steps have passed (an
    /// interval of at most 1,440 steps keeps its schedule).
    #[serde(default = "default_refit", with = "humantime_serde")]
    pub refit_every: Duration,
    /// Most seasonal periods detected and modelled.
    #[serde(default = "default_max_periods")]
    pub max_periods: usize,
    /// Recent backtest window the models are compared over.
    #[serde(default = "default_selection_window", with = "humantime_serde")]
    pub selection_window: Duration,
    /// Recent residuals the upper quantile is calibrated on (200 to 1,000 steps of the
    /// workload). A model not selected within this window keeps one residual in four over
    /// it, and every one again once selected.
    #[serde(default = "default_calibration_window", with = "humantime_serde")]
    pub calibration_window: Duration,
    /// Residuals needed at the lead horizon before forecasts are issued (warm-up).
    #[serde(default = "default_min_calibration")]
    pub min_calibration: usize,
    /// Asymmetric loss: cost of one unit of under-forecast relative to one unit of over-forecast.
    #[serde(default = "default_under_weight")]
    pub under_weight: f64,
    /// How residuals are scaled for calibration.
    #[serde(default = "default_residual_scale")]
    pub residual_scale: ResidualScale,
    /// Adaptive conformal step: how fast the effective quantile level moves to restore
    /// coverage after misses (0 disables).
    #[serde(default = "default_aci_rate")]
    pub aci_rate: f64,
    /// Isolated points further than this many robust standard deviations from their
    /// neighbours are clipped before fitting (0 disables).
    #[serde(default = "default_clip_sd")]
    pub outlier_clip_sd: f64,
    /// Gaps up to this long are interpolated and scored; longer ones are interpolated for
    /// fitting only and excluded from backtests and calibration.
    #[serde(default = "default_max_fill", with = "humantime_serde")]
    pub max_fill_gap: Duration,
}

fn default_candidates() -> Vec<ModelKind> {
    vec![
        ModelKind::SeasonalNaive,
        ModelKind::MstlEts,
        ModelKind::Linear,
        ModelKind::DampedTrend,
    ]
}
fn default_quantile() -> f64 {
    0.9
}
fn default_history() -> Duration {
    Duration::from_secs(14 * 86_400)
}
fn default_refit() -> Duration {
    Duration::from_secs(86_400)
}
fn default_max_periods() -> usize {
    2
}
fn default_selection_window() -> Duration {
    Duration::from_secs(2 * 86_400)
}
fn default_calibration_window() -> Duration {
    Duration::from_secs(3 * 86_400)
}
fn default_min_calibration() -> usize {
    50
}
fn default_under_weight() -> f64 {
    3.0
}
fn default_residual_scale() -> ResidualScale {
    ResidualScale::Auto
}
fn default_aci_rate() -> f64 {
    0.005
}
fn default_clip_sd() -> f64 {
    6.0
}
fn default_max_fill() -> Duration {
    Duration::from_secs(1800)
}

/// Presets compiled into the binary, from `models/*.yaml`.
const BUILTIN: &[(&str, &str)] = &[
    ("auto", include_str!("../../models/auto.yaml")),
    ("seasonal", include_str!("../../models/seasonal.yaml")),
    ("reactive", include_str!("../../models/reactive.yaml")),
    (
        "conservative",
        include_str!("../../models/conservative.yaml"),
    ),
];

/// A preset that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PresetError {
    /// No built-in preset or file of that name.
    #[error("unknown model preset `{name}` (built-in: {known}; or give a path to a .yaml file)")]
    Unknown {
        /// What was asked for.
        name: String,
        /// Built-in names.
        known: String,
    },
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The preset file.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The YAML is malformed or has unknown fields.
    #[error("{path}: {message}")]
    Parse {
        /// The preset file.
        path: String,
        /// The parser's message (names the field and line).
        message: String,
    },
    /// A field is out of range.
    #[error("{path}: {field}: {message}")]
    Invalid {
        /// The preset file.
        path: String,
        /// The field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl ModelPreset {
    /// Names of the built-in presets.
    pub fn builtin_names() -> Vec<&'static str> {
        BUILTIN.iter().map(|(n, _)| *n).collect()
    }

    /// A built-in preset by name, or a preset file by path.
    ///
    /// # Errors
    /// [`PresetError`] when nothing of that name exists or the file is invalid.
    pub fn load(name_or_path: &str) -> Result<Self, PresetError> {
        if let Some((_, text)) = BUILTIN.iter().find(|(n, _)| *n == name_or_path) {
            return Self::parse(&format!("models/{name_or_path}.yaml"), text);
        }
        let path = Path::new(name_or_path);
        if path.exists() || name_or_path.ends_with(".yaml") || name_or_path.ends_with(".yml") {
            let text = std::fs::read_to_string(path).map_err(|source| PresetError::Io {
                path: name_or_path.to_string(),
                source,
            })?;
            return Self::parse(name_or_path, &text);
        }
        Err(PresetError::Unknown {
            name: name_or_path.to_string(),
            known: Self::builtin_names().join(", "),
        })
    }

    /// Parses and validates preset YAML; `origin` names it in messages.
    ///
    /// # Errors
    /// [`PresetError::Parse`] or [`PresetError::Invalid`].
    pub fn parse(origin: &str, text: &str) -> Result<Self, PresetError> {
        let p: ModelPreset = serde_yaml_ng::from_str(text).map_err(|e| PresetError::Parse {
            path: origin.to_string(),
            message: e.to_string(),
        })?;
        p.validate(origin)?;
        Ok(p)
    }

    fn validate(&self, origin: &str) -> Result<(), PresetError> {
        let bad = |field, message: &str| {
            Err(PresetError::Invalid {
                path: origin.to_string(),
                field,
                message: message.to_string(),
            })
        };
        if !(self.quantile > 0.5 && self.quantile < 0.999) {
            return bad("quantile", "must be in (0.5, 0.999)");
        }
        if self.history < Duration::from_secs(600) {
            return bad("history", "must be at least 10m");
        }
        if self.refit_every.is_zero() {
            return bad("refit_every", "must be positive");
        }
        if !(self.under_weight.is_finite() && self.under_weight >= 1.0) {
            return bad("under_weight", "must be a number >= 1");
        }
        if !(0.0..=0.1).contains(&self.aci_rate) {
            return bad("aci_rate", "must be in [0, 0.1]");
        }
        if !(self.outlier_clip_sd == 0.0 || self.outlier_clip_sd >= 2.0) {
            return bad("outlier_clip_sd", "must be 0 (off) or at least 2");
        }
        if self.min_calibration < 10 {
            return bad("min_calibration", "must be at least 10");
        }
        if self.max_periods > 4 {
            return bad("max_periods", "must be at most 4");
        }
        if self.candidates.is_empty() {
            return bad("candidates", "must name at least one model");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_preset_loads() {
        for name in ModelPreset::builtin_names() {
            let p = ModelPreset::load(name).unwrap();
            assert_eq!(p.name, name);
        }
    }

    #[test]
    fn unknown_fields_and_bad_values_are_rejected_by_name() {
        let e = ModelPreset::parse("x.yaml", "name: x\nquantil: 0.9\n").unwrap_err();
        assert!(e.to_string().contains("quantil"), "{e}");
        let e = ModelPreset::parse("x.yaml", "name: x\nquantile: 1.5\n").unwrap_err();
        assert!(e.to_string().contains("quantile"), "{e}");
        let e = ModelPreset::parse("x.yaml", "name: x\ncandidates: [prophet]\n").unwrap_err();
        assert!(e.to_string().contains("prophet"), "{e}");
        let e = ModelPreset::load("nope").unwrap_err();
        assert!(e.to_string().contains("auto"), "{e}");
    }
}
