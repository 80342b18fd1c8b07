//! One workload's forecasting state: history grid, candidate models, online backtest,
//! selection, conformal calibration.

use std::collections::VecDeque;

use half::f16;
use serde::{Deserialize, Serialize};

use crate::domain::{BAND_LEVELS, Band, Forecast, SavedSums, SlidingSums, Timestamp};

use super::grid::{BLOCK, Grid};
use super::preset::ResidualScale;
use super::{
    FitSettings, FittedModel, ForecastError, ModelKind, ModelPreset, SavedFit, Window,
    clip_outliers, detect_periods, level_shift_start,
};

/// Demand counts as intermittent once this share of recent samples is zero: an average
/// interval between non-zero samples of 1.32 or more (Syntetos and Boylan's cut-off
/// between smooth and intermittent demand) is a zero share of about 0.24...
const INTERMITTENT_ENTER: f64 = 0.25;
/// ...and stops counting as intermittent below this share.
const INTERMITTENT_LEAVE: f64 = 0.2;
/// Weight of each new sample in the running level and zero share: about the last 100
/// samples count, long enough that one empty bin or one spike moves neither much.
const RECENT_RATE: f64 = 0.01;
/// Fewest steps between the extra refits of a workload whose history is still filling.
const EARLY_REFIT_GAP: usize = 1440;
/// Switching models needs this relative improvement (hysteresis against flapping).
const SWITCH_MARGIN: f64 = 0.03;
/// Published forecasts whose coverage decides `confident`.
const CONFIDENCE_WINDOW: usize = 48;
/// Coverage shortfall (below the quantile) at which a forecast stops being confident.
const CONFIDENCE_SLACK: f64 = 0.2;

/// Residuals a window of a model not selected recently keeps, one in this many: it still
/// spans the whole calibration window, at a quarter of the memory.
const THIN: usize = 4;

/// A window of residuals, oldest first, in half precision (three significant digits: far
/// more than a quantile of a thousand residuals can tell; 2 KB a full window, 500 bytes a
/// thin one).
///
/// The windows of the selected model, and of models selected within the last calibration
/// window, are *full*: every residual, and a sorted copy (f16 too) for the many quantiles a
/// forecast reads. The other candidates' windows are *thin*: one residual in [`THIN`] over
/// the same span (neighbouring residuals are strongly correlated, so a quantile loses
/// little), answering the odd quantile by selection on a scratch copy. When a model is
/// selected its thin window fills up again with every new residual, and its thin residuals
/// leave first, as the oldest.
#[derive(Debug, Clone)]
struct RollingQuantile {
    fifo: VecDeque<f16>,
    sorted: Option<Vec<f16>>,
    /// Residuals held when full.
    cap: usize,
    /// Residuals held when thin.
    thin_room: usize,
    full: bool,
    /// Grid index over [`THIN`] of the last residual taken.
    taken: Option<usize>,
}

impl RollingQuantile {
    /// A window of `cap` residuals; thin, it holds a quarter of that but never fewer than
    /// `floor` (the residuals a forecast needs), so a model selected again can forecast.
    fn new(cap: usize, floor: usize, full: bool) -> Self {
        let mut r = Self {
            fifo: VecDeque::new(),
            sorted: None,
            cap,
            thin_room: cap.div_ceil(THIN).max(floor).min(cap),
            full,
            taken: None,
        };
        r.set_mode(full);
        r
    }

    /// Residuals held at most in the current mode.
    fn room(&self) -> usize {
        if self.full { self.cap } else { self.thin_room }
    }

    /// Takes the residual of the forecast for grid index `at` (increasing from call to
    /// call). A thin window takes every one until its room is filled, then the first in
    /// each run of [`THIN`] grid indices: at every step's forecast, the indices divisible
    /// by it. Which ones depends on the data and the saved state alone, so a restored
    /// engine keeps the same ones as one that never stopped.
    fn push(&mut self, v: f64, at: usize) {
        let block = at / THIN;
        if !self.full && self.fifo.len() >= self.room() && self.taken == Some(block) {
            return;
        }
        self.taken = Some(block);
        // Clamped into f16's range: a residual past it would read back as infinite.
        let h = f16::from_f64(v.clamp(-F16_LIMIT, F16_LIMIT));
        if self.fifo.len() >= self.room()
            && let Some(old) = self.fifo.pop_front()
            && let Some(sorted) = &mut self.sorted
        {
            let i = sorted.partition_point(|x| x.total_cmp(&old).is_lt());
            if i < sorted.len() {
                sorted.remove(i);
            }
        }
        self.fifo.push_back(h);
        if let Some(sorted) = &mut self.sorted {
            let i = sorted.partition_point(|x| x.total_cmp(&h).is_le());
            sorted.insert(i, h);
        }
    }

    /// Makes the window full (every residual, with a sorted copy) or thin.
    fn set_full(&mut self, on: bool) {
        if on != self.full {
            self.set_mode(on);
        }
    }

    /// Takes up saved residuals (oldest first, at most the mode's room) in the given mode.
    fn restore(&mut self, saved: impl Iterator<Item = f16>, full: bool, taken: Option<usize>) {
        self.fifo.clear();
        self.fifo.extend(saved);
        self.taken = taken;
        self.set_mode(full);
    }

    fn set_mode(&mut self, full: bool) {
        self.full = full;
        let room = self.room();
        if !full && self.fifo.len() > room {
            // One residual in THIN, the newest kept, as many as the thin window holds.
            let n = self.fifo.len();
            let count = n.div_ceil(THIN).min(room);
            let first = n - 1 - (count - 1) * THIN;
            let mut kept = VecDeque::with_capacity(room);
            kept.extend((first..n).step_by(THIN).map(|i| self.fifo[i]));
            self.fifo = kept;
        }
        // Allocated whole (every window fills within days): grown in steps, these
        // long-lived blocks would land between fits' scratch and pin it resident. A change
        // of mode reallocates, but selections change seldom.
        self.fifo.reserve_exact(room - self.fifo.len());
        self.fifo.shrink_to(room);
        self.sorted = full.then(|| {
            let mut v = Vec::with_capacity(self.cap);
            v.extend(self.fifo.iter().copied());
            v.sort_unstable_by(f16::total_cmp);
            v
        });
    }

    fn len(&self) -> usize {
        self.fifo.len()
    }

    /// The q-quantile: O(1) with the sorted copy, a selection on a scratch copy without.
    fn quantile(&self, q: f64) -> Option<f64> {
        let n = self.fifo.len();
        if n == 0 {
            return None;
        }
        let k = rank(n, q);
        if let Some(sorted) = &self.sorted {
            return sorted.get(k).map(|&x| x.to_f64());
        }
        let mut v: Vec<f32> = self.fifo.iter().map(|h| h.to_f32()).collect();
        let (_, x, _) = v.select_nth_unstable_by(k, f32::total_cmp);
        Some(f64::from(*x))
    }
}

/// Largest magnitude kept in a residual window (f16 tops out at 65504).
const F16_LIMIT: f64 = 60_000.0;

/// Index of the q-quantile in `n` sorted values (the higher of the two neighbours:
/// conservative for an upper band).
fn rank(n: usize, q: f64) -> usize {
    let idx = ((n as f64 + 1.0) * q).ceil() as usize;
    idx.clamp(1, n) - 1
}

/// Backtest figures of one model at the lead horizon, over the evaluated part of the series.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CandidateStats {
    /// Model name.
    pub model: &'static str,
    /// Forecasts scored.
    pub count: usize,
    /// Sum of absolute errors of the point forecast.
    pub abs_error_sum: f64,
    /// Sum of pinball losses of the model's own calibrated upper quantile (from its own
    /// windows, thin while it is not selected).
    pub pinball_sum: f64,
    /// Forecasts whose upper quantile covered the actual.
    pub covered: usize,
    /// Times this model was the selected one when a forecast was published.
    pub selected: usize,
}

#[derive(Clone, Serialize, Deserialize)]
struct Pending {
    origin_end: usize,
    point: Vec<f64>,
    scale: Vec<f64>,
    /// The model's own upper quantile at the lead step, for its stats.
    upper_lead: f64,
}

struct Candidate {
    kind: ModelKind,
    fitted: Option<Box<dyn FittedModel>>,
    pending: VecDeque<Pending>,
    /// Normalised residuals per step ahead (index 0 = one step).
    resid: Vec<RollingQuantile>,
    /// Asymmetric losses over the selection window.
    losses: SlidingSums<1>,
    stats: CandidateStats,
    /// Grid index until which its residual windows stay full: a calibration window after
    /// it was last selected, since models often take turns (thinning on every switch
    /// would calibrate the one coming back on a quarter of its residuals).
    full_until: usize,
}

/// Where a workload's forecasting stands, for status pages and metrics.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EngineStatus {
    /// Model currently selected (`persistence` while demoted).
    pub model: &'static str,
    /// Seasonal periods in use, in grid steps.
    pub periods: Vec<usize>,
    /// True while forecasts are worse than reacting would be.
    pub demoted: bool,
    /// Coverage of the published upper quantile at the lead horizon (evaluated part).
    pub coverage: Option<f64>,
    /// Times the models were refitted.
    pub refits: usize,
    /// Model fits that failed.
    pub fit_failures: usize,
    /// Samples held.
    pub samples: usize,
}

/// One workload's forecasting engine. Feed it samples in time order with [`Engine::observe`]
/// and ask for a [`Forecast`] with [`Engine::forecast`]; it never sees the future.
pub struct Engine {
    preset: ModelPreset,
    step: u64,
    lead: usize,
    t0: Option<Timestamp>,
    last_ts: Timestamp,
    start: usize,
    /// Demand per grid step from `start`, compact at rest (see [`Grid`]).
    grid: Grid,
    /// Grid ranges `[from, to)` filled across gaps too long to be scored (rare: a list of
    /// ranges, not a flag per step).
    unscored: VecDeque<(usize, usize)>,
    keep: usize,
    history_len: usize,
    refit_steps: usize,
    sel_window: usize,
    max_fill: usize,
    level: f64,
    /// Moving share of samples that are exactly zero (same rate as `level`).
    zero_share: f64,
    /// Demand is intermittent (see [`ResidualScale::Auto`]): residuals are then scaled in
    /// demand units.
    intermittent: bool,
    periods: Vec<usize>,
    last_fit_end: Option<usize>,
    fit: FitSettings,
    /// Index 0 is persistence, the reactive reference.
    cands: Vec<Candidate>,
    selected: usize,
    demoted: bool,
    /// Published forecasts awaiting their actuals: (origin end, upper band, lead-step point,
    /// first step of the highest band).
    published: VecDeque<(usize, Vec<f64>, f64, f64)>,
    /// The latest sample was above the highest band of the forecast made one step before.
    surprise: bool,
    /// Sums of (|error|, actual) of recent published forecasts at the lead horizon.
    recent_errors: SlidingSums<2>,
    published_stats: CandidateStats,
    levels: Vec<f64>,
    recent_cover: VecDeque<bool>,
    evaluating: bool,
    /// Whether every candidate's own backtest statistics are kept (replays and benchmarks
    /// read them; the service does not, and skips their quantiles).
    score_candidates: bool,
    refits: usize,
    fit_failures: usize,
    /// When set, refits happen when the grid crosses `k * refit_steps - phase`, so that many
    /// workloads started together do not all refit in the same loop.
    refit_phase: Option<usize>,
}

impl Engine {
    /// An engine for a workload sampled every `step` seconds whose decisions look `lead` steps
    /// ahead.
    pub fn new(preset: ModelPreset, step: u64, lead: usize) -> Self {
        let step = step.max(1);
        let lead = lead.max(1);
        let steps = |d: std::time::Duration| (d.as_secs() / step) as usize;
        let history_len = steps(preset.history).max(4 * lead + 16);
        let refit_steps = steps(preset.refit_every).max(1);
        let sel_window = steps(preset.selection_window).clamp(50, 5000) * lead;
        // Enough residuals to pin a 0.995 quantile (in the selected model's full windows),
        // few enough to keep a workload small.
        let cal_window = steps(preset.calibration_window).clamp(200, 1000);
        let mut kinds = vec![ModelKind::Persistence];
        kinds.extend(
            preset
                .candidates
                .iter()
                .copied()
                .filter(|k| *k != ModelKind::Persistence),
        );
        let fit = FitSettings {
            path_len: refit_steps + 4 * lead + 64,
            max_regression_rows: 20_000,
            max_trend_points: 2_000,
        };
        let cands = kinds
            .into_iter()
            .map(|kind| Candidate {
                kind,
                fitted: None,
                pending: VecDeque::new(),
                resid: (0..lead)
                    // Persistence is selected until a model has a backtest.
                    .map(|_| {
                        let floor = preset.min_calibration;
                        RollingQuantile::new(cal_window, floor, kind == ModelKind::Persistence)
                    })
                    .collect(),
                losses: SlidingSums::new(sel_window),
                stats: CandidateStats {
                    model: kind.as_str(),
                    ..CandidateStats::default()
                },
                full_until: 0,
            })
            .collect();
        let q = preset.quantile;
        Self {
            max_fill: (preset.max_fill_gap.as_secs() / step) as usize,
            preset,
            step,
            lead,
            t0: None,
            last_ts: 0,
            start: 0,
            grid: Grid::default(),
            unscored: VecDeque::new(),
            // Fits read the last `history_len` steps; older ones are dropped in batches.
            keep: history_len,
            history_len,
            refit_steps,
            sel_window,
            level: 0.0,
            zero_share: 0.0,
            intermittent: false,
            periods: Vec::new(),
            last_fit_end: None,
            fit,
            cands,
            selected: 0,
            demoted: false,
            published: VecDeque::new(),
            surprise: false,
            recent_errors: SlidingSums::new((sel_window / lead).max(1)),
            published_stats: CandidateStats {
                model: "published",
                ..CandidateStats::default()
            },
            levels: vec![q; lead],
            recent_cover: VecDeque::new(),
            evaluating: false,
            score_candidates: true,
            refits: 0,
            fit_failures: 0,
            refit_phase: None,
        }
    }

    /// Starts (or stops) accumulating backtest statistics, e.g. after a replay's warm-up.
    pub fn set_evaluating(&mut self, on: bool) {
        self.evaluating = on;
    }

    /// Keeps (default) or skips the per-candidate statistics of [`Engine::candidate_stats`];
    /// selection, calibration and the published forecast's statistics are the same either way.
    pub fn set_scoring_candidates(&mut self, on: bool) {
        self.score_candidates = on;
    }

    /// Backtest statistics of every candidate (persistence first), then of the published
    /// forecast (model `published`).
    pub fn candidate_stats(&self) -> Vec<CandidateStats> {
        let mut v: Vec<CandidateStats> = self.cands.iter().map(|c| c.stats.clone()).collect();
        v.push(self.published_stats.clone());
        v
    }

    /// Spreads this workload's scheduled refits: `phase` in `[0, 1)` of the refit interval.
    pub fn set_refit_phase(&mut self, phase: f64) {
        self.refit_phase = Some((phase.clamp(0.0, 1.0) * self.refit_steps as f64) as usize);
    }

    fn refit_due(&self, end: usize) -> bool {
        let r = self.refit_steps;
        let Some(f) = self.last_fit_end else {
            return true;
        };
        // A workload without backfill is first fitted on a few dozen steps, too few for a
        // season shorter than the interval (a 10-minute cycle at 1 s), and would keep that
        // fit for a whole interval: until a fit has seen one interval, refit also each time
        // the history has doubled, at least EARLY_REFIT_GAP steps after the last fit (spread
        // by the phase over up to half a doubling more). An interval of at most that many
        // steps (a day at 1 minute or coarser) is never cut short.
        let gap = f.max(EARLY_REFIT_GAP);
        let jitter = self.refit_phase.map_or(0, |p| p * gap / (2 * r));
        let doubled = self.start == 0 && f < r && end >= f + gap + jitter;
        let scheduled = match self.refit_phase {
            None => end >= f + r,
            Some(p) => (end + p) / r > (f + p) / r,
        };
        doubled || scheduled
    }

    /// Whether the engine already forecast from its latest sample: then [`Engine::forecast`]
    /// changes nothing (no refit, no backtest entry, no calibration step) and a reader may
    /// call it for another horizon without altering the decisions that follow.
    pub fn forecast_is_current(&self) -> bool {
        self.forecast_at(self.start + self.grid.len())
    }

    fn forecast_at(&self, end: usize) -> bool {
        self.cands
            .first()
            .and_then(|c| c.pending.back())
            .is_some_and(|p| p.origin_end == end)
    }

    /// Seconds between grid steps.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Recent mean absolute error of the published forecast at the lead horizon, over mean
    /// demand (`None` before any forecast matured or when demand was all zero).
    pub fn recent_error_ratio(&self) -> Option<f64> {
        let [e, y] = self.recent_errors.totals();
        (self.recent_errors.count() > 0 && y > 0.0).then(|| e / y)
    }

    /// Current status.
    pub fn status(&self) -> EngineStatus {
        EngineStatus {
            model: self.cands[self.selected].kind.as_str(),
            periods: self.periods.clone(),
            demoted: self.demoted,
            coverage: (self.published_stats.count > 0)
                .then(|| self.published_stats.covered as f64 / self.published_stats.count as f64),
            refits: self.refits,
            fit_failures: self.fit_failures,
            samples: self.grid.len(),
        }
    }

    /// The last `n` values on the grid (gaps filled) and the time of the first of them.
    pub fn recent(&self, n: usize) -> (Timestamp, Vec<f64>) {
        let k = n.min(self.grid.len());
        let first = self.last_ts - (k.saturating_sub(1) as i64) * self.step as i64;
        let len = self.grid.len();
        (first, self.grid.to_vec(len - k, len))
    }

    /// Adds a sample. Gaps since the previous sample are interpolated; gaps longer than the
    /// preset's `max_fill_gap` are excluded from backtests.
    ///
    /// # Errors
    /// [`ForecastError::InvalidSample`] for NaN, infinite or negative values and
    /// [`ForecastError::OutOfOrder`] for a timestamp not after the previous one; the sample
    /// is dropped and the engine is unchanged.
    pub fn observe(&mut self, ts: Timestamp, value: f64) -> Result<(), ForecastError> {
        if !value.is_finite() || value < 0.0 {
            return Err(ForecastError::InvalidSample { value, at: ts });
        }
        let Some(t0) = self.t0 else {
            self.t0 = Some(ts);
            self.last_ts = ts;
            // The most the grid ever holds, once: no doubling past it.
            self.grid = Grid::default().with_room(self.keep);
            self.grid.push(value);
            self.level = value;
            self.zero_share = f64::from(u8::from(value == 0.0));
            return Ok(());
        };
        if ts <= self.last_ts {
            return Err(ForecastError::OutOfOrder {
                at: ts,
                last: self.last_ts,
            });
        }
        self.last_ts = ts;
        let k = ((ts - t0) as f64 / self.step as f64).round() as usize;
        let next = self.start + self.grid.len();
        if k < next {
            // Jitter put two samples in one grid slot: the newer one wins.
            self.grid.set_last(value);
            return Ok(());
        }
        let gap = k - next;
        let prev = self.grid.last().unwrap_or(value);
        // Only the steps the grid keeps are filled: a gap of months (a workload paused, a
        // clock jump) must not write and trim every step of it.
        let first_fill = if gap >= self.keep {
            self.grid = Grid::default().with_room(self.keep);
            self.start = k + 1 - self.keep;
            gap + 1 - self.keep + 1
        } else {
            1
        };
        for g in first_fill..=gap {
            let v = prev + (value - prev) * g as f64 / (gap + 1) as f64;
            self.grid.push(v);
        }
        let long = gap > self.max_fill;
        if long {
            self.unscored.push_back((next, k));
        }
        self.grid.push(value);
        // The steps of a long gap are unscored: maturing them would only retire forecasts,
        // which maturing the new sample does as well.
        for idx in (if long { k } else { next.max(self.start) })..=k {
            self.mature(idx);
        }
        self.level += RECENT_RATE * (value - self.level);
        self.zero_share += RECENT_RATE * (f64::from(u8::from(value == 0.0)) - self.zero_share);
        // Hysteresis around the threshold, so a series near it does not flip its residual
        // scale (and mix residuals of both scales in its windows) at every sample.
        self.intermittent = if self.intermittent {
            self.zero_share >= INTERMITTENT_LEAVE
        } else {
            self.zero_share >= INTERMITTENT_ENTER
        };
        self.start += self.grid.trim(self.keep);
        while self
            .unscored
            .front()
            .is_some_and(|&(_, to)| to <= self.start)
        {
            self.unscored.pop_front();
        }
        Ok(())
    }

    /// Whether grid index `idx` holds a sample or a short fill (scored by backtests).
    fn is_scored(&self, idx: usize) -> bool {
        !self
            .unscored
            .iter()
            .any(|&(from, to)| from <= idx && idx < to)
    }

    fn scale(&self, point: f64) -> f64 {
        let floor = 0.1 * self.level.abs() + 1e-9;
        match self.preset.residual_scale {
            ResidualScale::Auto if self.intermittent => self.level.abs().max(floor),
            ResidualScale::Relative | ResidualScale::Auto => point.max(floor),
            ResidualScale::Sqrt => (point.max(floor) * self.level.abs().max(floor)).sqrt(),
            ResidualScale::Absolute => self.level.abs().max(floor),
        }
    }

    /// Scores every forecast whose target is grid index `idx`.
    fn mature(&mut self, idx: usize) {
        let Some(i) = idx.checked_sub(self.start) else {
            return;
        };
        let Some(y) = self.grid.get(i) else {
            return;
        };
        let scored = self.is_scored(idx);
        let lead = self.lead;
        let under = self.preset.under_weight;
        let q = self.preset.quantile;
        let evaluating = self.evaluating && scored;
        let score_candidates = evaluating && self.score_candidates;
        for c in &mut self.cands {
            for p in &c.pending {
                let Some(j) = idx.checked_sub(p.origin_end) else {
                    continue;
                };
                if j >= lead || !scored {
                    continue;
                }
                let e = y - p.point[j];
                c.resid[j].push(e / p.scale[j], idx);
                let loss = if e > 0.0 { under * e } else { -e } / p.scale[j];
                c.losses.push([loss]);
                if j == lead - 1 && score_candidates {
                    c.stats.count += 1;
                    c.stats.abs_error_sum += e.abs();
                    c.stats.pinball_sum += pinball(y, p.upper_lead, q);
                    c.stats.covered += usize::from(y <= p.upper_lead);
                }
            }
            while c
                .pending
                .front()
                .is_some_and(|p| p.origin_end + lead <= idx + 1)
            {
                c.pending.pop_front();
            }
        }
        // Published forecasts: coverage and adaptive conformal levels.
        for (origin_end, upper, point_lead, top_first) in &self.published {
            let Some(j) = idx.checked_sub(*origin_end) else {
                continue;
            };
            if j >= lead || !scored {
                continue;
            }
            let Some(&bound) = upper.get(j) else {
                continue;
            };
            let miss = y > bound;
            if j == 0 {
                self.surprise = y > *top_first;
            }
            let rate = self.preset.aci_rate;
            self.levels[j] =
                (self.levels[j] + rate * (f64::from(u8::from(miss)) - (1.0 - q))).clamp(0.5, 0.995);
            if j == lead - 1 {
                self.recent_errors.push([(y - point_lead).abs(), y]);
                self.recent_cover.push_back(!miss);
                if self.recent_cover.len() > CONFIDENCE_WINDOW {
                    self.recent_cover.pop_front();
                }
                if evaluating {
                    let s = &mut self.published_stats;
                    s.count += 1;
                    s.covered += usize::from(!miss);
                    s.abs_error_sum += (y - point_lead).abs();
                    s.pinball_sum += pinball(y, bound, q);
                }
            }
        }
        while self
            .published
            .front()
            .is_some_and(|(o, _, _, _)| o + lead <= idx + 1)
        {
            self.published.pop_front();
        }
    }

    fn refit(&mut self) {
        let n = self.grid.len();
        let first = n - n.min(self.history_len);
        let mut cleaned = self.grid.to_vec(first, n);
        self.periods = detect_periods(&cleaned, self.step, self.preset.max_periods);
        if self.preset.outlier_clip_sd > 0.0 {
            clip_outliers(&mut cleaned, self.preset.outlier_clip_sd, 3);
        }
        let longest = self.periods.iter().copied().max().unwrap_or(0);
        let min_after = (2 * longest + 1).max(self.refit_steps).max(8 * self.lead);
        let from = level_shift_start(&cleaned, min_after).unwrap_or(0);
        let window = Window {
            start: self.start + first + from,
            values: &cleaned[from..],
        };
        for c in &mut self.cands {
            let forecaster = c.kind.build(&self.periods, &self.fit);
            match forecaster.fit(window) {
                Ok(f) => c.fitted = Some(f),
                Err(_) => {
                    self.fit_failures += usize::from(c.kind != ModelKind::Persistence);
                }
            }
        }
        self.refits += 1;
        self.last_fit_end = Some(self.start + n);
    }

    fn mean_loss(&self, c: usize) -> f64 {
        let l = &self.cands[c].losses;
        if l.count() == 0 {
            f64::INFINITY
        } else {
            l.totals()[0] / l.count() as f64
        }
    }

    fn select(&mut self, end: usize) {
        let need = (self.sel_window / 4).max(self.lead * 20);
        let eligible: Vec<usize> = (1..self.cands.len())
            .filter(|&c| self.cands[c].fitted.is_some() && self.cands[c].losses.count() >= need)
            .collect();
        if eligible.is_empty() {
            self.selected = 0;
            self.demoted = false;
            self.fill_selected(end);
            return;
        }
        let loss = |c: usize| self.mean_loss(c);
        let mut best = eligible[0];
        for &c in &eligible {
            if loss(c) < loss(best) {
                best = c;
            }
        }
        if self.selected != 0 && eligible.contains(&self.selected) && !self.demoted {
            // Keep the current model unless the best is clearly better.
            if loss(best) > loss(self.selected) * (1.0 - SWITCH_MARGIN) {
                best = self.selected;
            }
        }
        // Forecast health: worse than reacting would be means demotion to persistence.
        self.demoted = loss(best) > loss(0);
        self.selected = if self.demoted { 0 } else { best };
        self.fill_selected(end);
    }

    /// The selected model's windows are full, and those of the models selected within a
    /// calibration window; the others thin.
    fn fill_selected(&mut self, end: usize) {
        let sel = self.selected;
        for (c, cand) in self.cands.iter_mut().enumerate() {
            if c == sel {
                cand.full_until = end.saturating_add(cand.resid.first().map_or(0, |r| r.cap));
            }
            let full = end < cand.full_until;
            for r in &mut cand.resid {
                r.set_full(full);
            }
        }
    }

    /// The calibrated forecast for the next `horizon` steps from the latest sample.
    ///
    /// # Errors
    /// [`ForecastError::NotEnoughData`] while warming up (too little history, or too few
    /// residuals to calibrate the upper quantile); other errors when every model failed.
    pub fn forecast(&mut self, horizon: usize) -> Result<Forecast, ForecastError> {
        let n = self.grid.len();
        let need = (4 * self.lead).max(16);
        if n < need {
            return Err(ForecastError::NotEnoughData { need, have: n });
        }
        let end = self.start + n;
        if self.refit_due(end) {
            self.refit();
        }
        let lead = self.lead;
        let q = self.preset.quantile;
        let fresh = !self.forecast_at(end);
        let grid = self.grid.to_vec(0, n);
        let window = Window {
            start: self.start,
            values: &grid,
        };
        if fresh {
            for c in 0..self.cands.len() {
                let Some(fitted) = self.cands[c].fitted.as_ref() else {
                    continue;
                };
                let Ok(point) = fitted.predict(window, lead) else {
                    continue;
                };
                if point.iter().any(|v| !v.is_finite()) {
                    continue;
                }
                let scale: Vec<f64> = point.iter().map(|&p| self.scale(p)).collect();
                let cand = &self.cands[c];
                let upper_lead = if self.score_candidates || c == self.selected {
                    cand.resid[lead - 1]
                        .quantile(q)
                        .map_or(f64::INFINITY, |r| point[lead - 1] + r * scale[lead - 1])
                } else {
                    f64::INFINITY
                };
                self.cands[c].pending.push_back(Pending {
                    origin_end: end,
                    point,
                    scale,
                    upper_lead,
                });
            }
            self.select(end);
        }
        let sel = self.selected;
        let have = self.cands[sel].resid[lead - 1].len();
        if have < self.preset.min_calibration {
            return Err(ForecastError::NotEnoughData {
                need: self.preset.min_calibration,
                have,
            });
        }
        let fitted = self.cands[sel]
            .fitted
            .as_ref()
            .ok_or(ForecastError::NotEnoughData { need, have: n })?;
        let point = fitted.predict(window, horizon.max(1))?;
        let mut upper = Vec::with_capacity(point.len());
        let mut bands: Vec<Band> = BAND_LEVELS
            .iter()
            .map(|&level| Band {
                level,
                values: Vec::with_capacity(point.len()),
            })
            .collect();
        let mut clean = Vec::with_capacity(point.len());
        for (j, &p) in point.iter().enumerate() {
            let h = j.min(lead - 1);
            let resid = &self.cands[sel].resid[h];
            // Beyond the lead window no residuals are kept: widen like a random walk.
            let widen = if j < lead {
                1.0
            } else {
                ((j + 1) as f64 / lead as f64).sqrt()
            };
            let p = p.max(0.0);
            let s = self.scale(p);
            let at = |level: f64| (p + resid.quantile(level).unwrap_or(0.0) * widen * s).max(p);
            clean.push(p);
            upper.push(at(self.levels[h]));
            for b in &mut bands {
                b.values.push(at(b.level));
            }
        }
        if fresh {
            let point_lead = clean[(lead - 1).min(clean.len() - 1)];
            let top_first = bands
                .last()
                .and_then(|b| b.values.first())
                .copied()
                .unwrap_or(f64::INFINITY);
            self.published.push_back((
                end,
                upper[..lead.min(upper.len())].to_vec(),
                point_lead,
                top_first,
            ));
            if self.evaluating {
                self.cands[sel].stats.selected += 1;
            }
        }
        let confident = self.recent_cover.len() < CONFIDENCE_WINDOW / 2
            || self.recent_cover.iter().filter(|c| **c).count() as f64
                >= (q - CONFIDENCE_SLACK) * self.recent_cover.len() as f64;
        let t0 = self.t0.unwrap_or(0);
        Ok(Forecast {
            origin: t0 + ((end - 1) as u64 * self.step) as i64,
            step: self.step,
            point: clean,
            upper,
            quantile: q,
            bands,
            surprise: self.surprise,
            model: self.cands[sel].kind.as_str(),
            demoted: self.demoted,
            confident,
        })
    }
}

/// What an [`Engine`] has learned, to survive a restart: the history grid, every
/// candidate's fitted model, residual windows, losses and pending forecasts, the selection,
/// the calibration levels. A restored engine forecasts at once, with no refit before its
/// scheduled one (a cold start needs days of replay; a refit of every model, a second of CPU
/// per ten workloads).
#[derive(Serialize, Deserialize)]
pub struct EngineState {
    step: u64,
    lead: usize,
    history_len: usize,
    t0: Option<Timestamp>,
    last_ts: Timestamp,
    start: usize,
    grid: Grid,
    unscored: VecDeque<(usize, usize)>,
    level: f64,
    zero_share: f64,
    intermittent: bool,
    periods: Vec<usize>,
    last_fit_end: Option<usize>,
    /// The preset the state was learned under (JSON): another preset means a cold start.
    preset: String,
    cands: Vec<CandidateState>,
    selected: usize,
    demoted: bool,
    published: VecDeque<(usize, Vec<f64>, f64, f64)>,
    surprise: bool,
    recent_errors: SavedSums,
    published_stats: [f64; 5],
    levels: Vec<f64>,
    recent_cover: VecDeque<bool>,
    refits: usize,
    fit_failures: usize,
}

#[derive(Serialize, Deserialize)]
struct CandidateState {
    kind: ModelKind,
    /// The fitted model (None until its first successful fit).
    fit: Option<SavedFit>,
    pending: VecDeque<Pending>,
    /// Residual windows as f16 bits, oldest first.
    resid: Vec<Vec<u16>>,
    /// Whether the windows are full (else thin).
    full: bool,
    full_until: usize,
    /// Per window, the grid index over THIN of the last residual taken.
    taken: Vec<Option<usize>>,
    losses: SavedSums,
    stats: [f64; 5],
}

impl EngineState {
    /// Time of the latest sample in the state (None when it holds none).
    pub fn last_sample(&self) -> Option<Timestamp> {
        self.t0.map(|_| self.last_ts)
    }
}

/// Why a saved [`EngineState`] was not restored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("saved forecasting state does not fit this workload's settings: {0}")]
pub struct StateMismatch(&'static str);

fn stats_state(s: &CandidateStats) -> [f64; 5] {
    [
        s.count as f64,
        s.abs_error_sum,
        s.pinball_sum,
        s.covered as f64,
        s.selected as f64,
    ]
}

fn stats_from(model: &'static str, v: [f64; 5]) -> CandidateStats {
    CandidateStats {
        model,
        count: v[0] as usize,
        abs_error_sum: v[1],
        pinball_sum: v[2],
        covered: v[3] as usize,
        selected: v[4] as usize,
    }
}

impl Engine {
    /// What this engine has learned (see [`EngineState`]).
    pub fn state(&self) -> EngineState {
        EngineState {
            step: self.step,
            lead: self.lead,
            history_len: self.history_len,
            t0: self.t0,
            last_ts: self.last_ts,
            start: self.start,
            grid: self.grid.clone(),
            unscored: self.unscored.clone(),
            level: self.level,
            zero_share: self.zero_share,
            intermittent: self.intermittent,
            periods: self.periods.clone(),
            last_fit_end: self.last_fit_end,
            preset: self.preset_fingerprint(),
            cands: self
                .cands
                .iter()
                .map(|c| CandidateState {
                    kind: c.kind,
                    fit: c.fitted.as_ref().map(|f| f.saved()),
                    pending: c.pending.clone(),
                    resid: c
                        .resid
                        .iter()
                        .map(|r| r.fifo.iter().map(|h| h.to_bits()).collect())
                        .collect(),
                    full: c.resid.first().is_some_and(|r| r.full),
                    full_until: c.full_until,
                    taken: c.resid.iter().map(|r| r.taken).collect(),
                    losses: c.losses.to_saved(),
                    stats: stats_state(&c.stats),
                })
                .collect(),
            selected: self.selected,
            demoted: self.demoted,
            published: self.published.clone(),
            surprise: self.surprise,
            recent_errors: self.recent_errors.to_saved(),
            published_stats: stats_state(&self.published_stats),
            levels: self.levels.clone(),
            recent_cover: self.recent_cover.clone(),
            refits: self.refits,
            fit_failures: self.fit_failures,
        }
    }

    /// Takes up a saved state on this engine (made with the same preset, step and lead,
    /// typically fresh from [`Engine::new`]); the models are fitted at the next forecast.
    ///
    /// # Errors
    /// [`StateMismatch`] when the state was made with other settings (another step, lead,
    /// history or candidate list); the engine is unchanged and starts cold.
    pub fn restore(&mut self, mut s: EngineState) -> Result<(), StateMismatch> {
        if s.step != self.step || s.lead != self.lead {
            return Err(StateMismatch("step or lead time changed"));
        }
        if s.history_len != self.history_len {
            return Err(StateMismatch("history length changed"));
        }
        let kinds: Vec<ModelKind> = self.cands.iter().map(|c| c.kind).collect();
        let saved: Vec<ModelKind> = s.cands.iter().map(|c| c.kind).collect();
        if kinds != saved {
            return Err(StateMismatch("candidate models changed"));
        }
        if s.preset != self.preset_fingerprint() {
            return Err(StateMismatch("model preset changed"));
        }
        let bad = || StateMismatch("inconsistent saved state");
        let lead = self.lead;
        let cap = self.cands[0].resid[0].cap;
        let end = s.start.checked_add(s.grid.len()).ok_or_else(bad)?;
        // The grid's times: the first sample at t0, the last one at the end of the grid.
        let grid_ok = match s.t0 {
            None => s.grid.is_empty() && s.start == 0,
            Some(t0) => {
                let last = (end as i64 - 1)
                    .checked_mul(self.step as i64)
                    .and_then(|d| t0.checked_add(d))
                    .ok_or_else(bad)?;
                !s.grid.is_empty() && (s.last_ts - last).abs() <= self.step as i64 / 2
            }
        };
        let before_end = |k: usize| k <= end;
        let thin_room = self.cands[0].resid[0].thin_room;
        let cand_ok = |c: &CandidateState| {
            let room = if c.full { cap } else { thin_room };
            c.resid.len() == lead
                && c.taken.len() == lead
                && c.resid.iter().all(|r| r.len() <= room)
                && c.full_until <= end.saturating_add(cap)
                && c.pending.iter().all(|p| {
                    p.point.len() == lead && p.scale.len() == lead && before_end(p.origin_end)
                })
        };
        let consistent = grid_ok
            && s.grid.len() <= self.keep + BLOCK
            && s.grid.is_valid()
            && s.cands.iter().all(cand_ok)
            && s.cands.get(s.selected).is_some_and(|c| c.full)
            && s.levels.len() == lead
            && (0.0..=1.0).contains(&s.zero_share)
            && s.published
                .iter()
                .all(|(o, u, _, _)| u.len() == lead && before_end(*o))
            && s.unscored.iter().all(|&(a, b)| a < b && before_end(b))
            && s.last_fit_end.is_none_or(before_end);
        if !consistent {
            return Err(bad());
        }
        let recent_errors =
            SlidingSums::from_saved(s.recent_errors, &self.recent_errors).ok_or_else(bad)?;
        // Taken out of the saved state, not cloned: a start restores every workload.
        let losses: Vec<SlidingSums<1>> = s
            .cands
            .iter_mut()
            .zip(&self.cands)
            .map(|(saved, c)| SlidingSums::from_saved(std::mem::take(&mut saved.losses), &c.losses))
            .collect::<Option<_>>()
            .ok_or_else(bad)?;
        let fits: Vec<Option<Box<dyn FittedModel>>> = s
            .cands
            .iter_mut()
            .map(|c| match c.fit.take() {
                None => Some(None),
                Some(f) => f.model(c.kind, end).map(Some),
            })
            .collect::<Option<_>>()
            .ok_or_else(bad)?;
        self.t0 = s.t0;
        self.last_ts = s.last_ts;
        self.start = s.start;
        self.grid = s.grid.with_room(self.keep);
        self.unscored = s.unscored;
        self.level = s.level;
        self.zero_share = s.zero_share;
        self.intermittent = s.intermittent;
        self.periods = s.periods;
        self.last_fit_end = s.last_fit_end;
        let saved = s.cands.into_iter().zip(losses).zip(fits);
        for (c, ((saved, losses), fitted)) in self.cands.iter_mut().zip(saved) {
            c.fitted = fitted;
            c.pending = saved.pending;
            c.full_until = saved.full_until;
            for ((r, bits), taken) in c.resid.iter_mut().zip(saved.resid).zip(saved.taken) {
                r.restore(bits.into_iter().map(f16::from_bits), saved.full, taken);
            }
            c.losses = losses;
            c.stats = stats_from(c.kind.as_str(), saved.stats);
        }
        self.selected = s.selected;
        self.demoted = s.demoted;
        self.published = s.published;
        self.surprise = s.surprise;
        self.recent_errors = recent_errors;
        self.published_stats = stats_from("published", s.published_stats);
        self.levels = s.levels;
        self.recent_cover = s.recent_cover;
        self.refits = s.refits;
        self.fit_failures = s.fit_failures;
        Ok(())
    }

    /// The preset as text, to tell a state learned under another one.
    fn preset_fingerprint(&self) -> String {
        serde_json::to_string(&self.preset).unwrap_or_default()
    }

    /// Time of the latest sample (None before the first).
    pub fn last_sample(&self) -> Option<Timestamp> {
        self.t0.map(|_| self.last_ts)
    }
}

/// Pinball (quantile) loss of forecast `f` for actual `y` at level `q`.
pub(crate) fn pinball(y: f64, f: f64, q: f64) -> f64 {
    if y >= f {
        q * (y - f)
    } else {
        (1.0 - q) * (f - y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preset() -> ModelPreset {
        ModelPreset::load("auto").unwrap()
    }

    #[test]
    fn rolling_quantile_tracks_a_sliding_window() {
        let mut r = RollingQuantile::new(5, 0, false);
        r.full = true;
        for (i, v) in [5.0, 1.0, 4.0, 2.0, 3.0].into_iter().enumerate() {
            r.push(v, i);
        }
        assert_eq!(r.quantile(0.5), Some(3.0));
        r.push(10.0, 5); // drops 5
        assert_eq!(r.len(), 5);
        assert_eq!(r.quantile(0.99), Some(10.0));
        // The same answers with the sorted copy, kept up to date as the window slides.
        let unsorted: Vec<_> = [0.1, 0.5, 0.9].map(|q| r.quantile(q)).into();
        r.set_mode(true);
        assert_eq!(
            r.sorted
                .as_ref()
                .map(|v| v.iter().map(|h| h.to_f64()).collect::<Vec<_>>()),
            Some([1.0, 2.0, 3.0, 4.0, 10.0].to_vec())
        );
        assert_eq!(unsorted, [0.1, 0.5, 0.9].map(|q| r.quantile(q)));
        r.push(0.5, 6); // drops 1
        assert_eq!(
            r.sorted
                .as_ref()
                .map(|v| v.iter().map(|h| h.to_f64()).collect::<Vec<_>>()),
            Some([0.5, 2.0, 3.0, 4.0, 10.0].to_vec())
        );
        // Half precision: three digits kept, and nothing past the f16 range turns infinite.
        r.push(1e9, 7);
        let top = r.quantile(0.999).unwrap();
        assert!(top.is_finite() && top >= 59_000.0, "{top}");
        let mut r = RollingQuantile::new(3, 0, true);
        r.push(1234.567, 0);
        let kept = r.quantile(0.5).unwrap();
        assert!((kept - 1234.567).abs() / 1234.567 < 1e-3, "{kept}");
    }

    #[test]
    fn thin_windows_span_the_same_time_in_a_quarter_of_the_room() {
        let values = |r: &RollingQuantile| r.fifo.iter().map(|h| h.to_f64()).collect::<Vec<_>>();
        // Thin: only grid indices divisible by THIN, at most a quarter of the capacity.
        let mut r = RollingQuantile::new(40, 0, false);
        assert!(r.sorted.is_none());
        for i in 0..100 {
            r.push(i as f64, i);
        }
        let kept: Vec<f64> = (60..100).step_by(THIN).map(|i| i as f64).collect();
        assert_eq!(values(&r), kept);
        assert!(r.fifo.capacity() < 40, "capacity {}", r.fifo.capacity());
        // Selected: every residual from now on, the thin ones leaving first, and the sorted
        // copy agrees with a sort of the window.
        r.set_full(true);
        for i in 100..132 {
            r.push(i as f64, i);
        }
        assert_eq!(r.len(), 40);
        let mut want: Vec<f64> = (68..100).step_by(THIN).map(|i| i as f64).collect();
        want.extend((100..132).map(|i| i as f64));
        assert_eq!(values(&r), want);
        let sorted: Vec<f64> = r.sorted.iter().flatten().map(|h| h.to_f64()).collect();
        assert_eq!(sorted, want);
        assert_eq!(r.quantile(0.5), Some(want[rank(40, 0.5)]));
        // No longer selected: one in THIN again, the newest kept, the sorted copy gone.
        r.set_full(false);
        let want: Vec<f64> = want.iter().rev().step_by(THIN).rev().copied().collect();
        assert_eq!(values(&r), want);
        assert!(r.sorted.is_none());
        // Forecasts every other step: the window still takes one residual per run of THIN
        // indices, none goes stale.
        let mut r = RollingQuantile::new(40, 0, false);
        for i in (1..200).step_by(2) {
            r.push(i as f64, i);
        }
        let kept: Vec<f64> = (161..200).step_by(THIN).map(|i| i as f64).collect();
        assert_eq!(values(&r), kept);
        // Thin, a window never holds fewer than a forecast needs.
        assert_eq!(RollingQuantile::new(200, 80, false).room(), 80);
    }

    #[test]
    fn the_auto_residual_scale_keeps_the_band_of_intermittent_demand_near_its_bursts() {
        // Six steps in ten are empty; the others carry 40 to 60 (as requests per 10 s bin).
        let band = |scale: ResidualScale| {
            let mut e = Engine::new(
                ModelPreset {
                    residual_scale: scale,
                    ..preset()
                },
                10,
                12,
            );
            let mut seed = 5_u64;
            let (mut highest, mut covered, mut scored) = (0.0_f64, 0, 0);
            let mut pending: VecDeque<(usize, f64)> = VecDeque::new();
            for i in 0..1500 {
                let u = uniform(&mut seed);
                let y = if u < 0.6 {
                    0.0
                } else {
                    40.0 + 50.0 * (u - 0.6)
                };
                e.observe(i as i64 * 10, y).unwrap();
                while pending.front().is_some_and(|&(at, _)| at == i) {
                    let (_, up) = pending.pop_front().unwrap();
                    scored += 1;
                    covered += usize::from(y <= up);
                }
                if let Ok(f) = e.forecast(12)
                    && i > 500
                {
                    highest = highest.max(f.upper[11]);
                    pending.push_back((i + 12, f.upper[11]));
                }
            }
            (highest, covered as f64 / scored as f64, e.intermittent)
        };
        let (auto, auto_cover, flagged) = band(ResidualScale::Auto);
        let (relative, _, _) = band(ResidualScale::Relative);
        assert!(flagged, "60% empty bins is intermittent");
        assert!(
            auto <= 120.0,
            "auto band reached {auto} for bursts of at most 60"
        );
        assert!(
            (0.8..=0.99).contains(&auto_cover),
            "coverage of the 0.9 band: {auto_cover}"
        );
        assert!(
            relative > 2.0 * auto,
            "relative errors learnt at a forecast of 0 inflate the band: {relative} vs {auto}"
        );
    }

    #[test]
    fn a_restored_engine_keeps_the_residual_scale_it_had_chosen() {
        // Bursts at 10 s steps: first six bins in ten empty, then two in nine, so the zero
        // share settles between the two thresholds, where only the saved flag says which
        // scale is in use.
        let preset = ModelPreset {
            residual_scale: ResidualScale::Auto,
            ..preset()
        };
        let demand = |i: usize, seed: &mut u64| {
            let u = uniform(seed);
            let empty = if i < 1500 {
                u < 0.6
            } else {
                matches!(i % 9, 0 | 4)
            };
            if empty { 0.0 } else { 40.0 + 20.0 * u }
        };
        let mut seed = 3_u64;
        let mut a = Engine::new(preset.clone(), 10, 12);
        let mut i = 0;
        while i < 2300 {
            a.observe(i as i64 * 10, demand(i, &mut seed)).unwrap();
            let _ = a.forecast(12);
            i += 1;
        }
        assert!(a.intermittent, "still intermittent: {}", a.zero_share);
        assert!(
            (INTERMITTENT_LEAVE..INTERMITTENT_ENTER).contains(&a.zero_share),
            "zero share between the thresholds: {}",
            a.zero_share
        );
        let bytes = bincode::serialize(&a.state()).unwrap();
        let mut b = Engine::new(preset, 10, 12);
        b.restore(bincode::deserialize(&bytes).unwrap()).unwrap();
        for _ in 0..200 {
            let y = demand(i, &mut seed);
            a.observe(i as i64 * 10, y).unwrap();
            b.observe(i as i64 * 10, y).unwrap();
            let (fa, fb) = (a.forecast(12).unwrap(), b.forecast(12).unwrap());
            assert_eq!((fa.point, fa.upper), (fb.point, fb.upper), "step {i}");
            i += 1;
        }
        assert!(b.intermittent);
    }

    #[test]
    fn a_workload_without_backfill_finds_a_short_season_before_its_first_scheduled_refit() {
        // A 10-minute cycle sampled every second: the first fit sees 40 steps, and the
        // scheduled refit is a day (86,400 steps) away.
        let mut e = Engine::new(preset(), 1, 10);
        let mut seed = 7_u64;
        let refits_at = refits_over(&mut e, 4000, |i| {
            let u = uniform(&mut seed) - 0.5;
            100.0 + 40.0 * (2.0 * std::f64::consts::PI * i as f64 / 600.0).sin() + 5.0 * u
        });
        // Then 1,440 steps (the least gap) after, and doubling from there.
        assert_eq!(
            refits_at,
            [40, 1480, 2960],
            "refits while the history fills"
        );
        let periods = e.status().periods;
        assert!(
            periods.iter().any(|&p| p.abs_diff(600) <= 6),
            "the 600-step cycle is found: {periods:?}"
        );
        // With a phase, each extra refit comes up to half a gap later (here 0.495 of one),
        // and the scheduled refit comes at its phase (86,400 - 85,536 = 864): 40, 864, then
        // 864 + 1,440 + 712.
        let mut spread = Engine::new(preset(), 1, 10);
        spread.set_refit_phase(0.99);
        let spread_at = refits_over(&mut spread, 4000, |i| (i % 600) as f64);
        assert_eq!(spread_at, [40, 864, 3016]);
        // An interval of at most 1,440 steps keeps its schedule: at 5-minute steps, a day
        // after the first fit and every day after.
        let mut daily = Engine::new(preset(), 300, 2);
        let daily_at = refits_over(&mut daily, 900, |i| (i % 288) as f64);
        assert_eq!(daily_at, [16, 304, 592, 880]);
    }

    #[test]
    fn a_second_forecast_from_the_same_sample_changes_nothing() {
        let mut e = Engine::new(preset(), 60, 3);
        let mut seed = 5_u64;
        for i in 0..600_i64 {
            let v = 100.0 + 30.0 * (i as f64 / 40.0).sin() + 5.0 * uniform(&mut seed);
            e.observe(i * 60, v).unwrap();
            if i % 2 == 0 {
                let _ = e.forecast(3);
            }
        }
        // The last sample (599) came after the last forecast (598).
        assert!(!e.forecast_is_current());
        let before = bincode::serialize(&e.state()).unwrap();
        e.forecast(3).unwrap();
        assert!(e.forecast_is_current());
        let after = bincode::serialize(&e.state()).unwrap();
        assert_ne!(before, after, "a first forecast at an origin is recorded");
        let long = e.forecast(360).unwrap();
        assert_eq!(long.point.len(), 360);
        assert_eq!(bincode::serialize(&e.state()).unwrap(), after);
    }

    /// Feeds `steps` samples of `demand`, forecasting after each, and returns the grid
    /// lengths at which the engine refitted.
    fn refits_over(
        e: &mut Engine,
        steps: usize,
        mut demand: impl FnMut(usize) -> f64,
    ) -> Vec<usize> {
        let (step, lead) = (e.step() as i64, e.lead);
        let mut at = Vec::new();
        for i in 0..steps {
            e.observe(i as i64 * step, demand(i)).unwrap();
            let before = e.status().refits;
            let _ = e.forecast(lead);
            if e.status().refits > before {
                at.push(i + 1);
            }
        }
        at
    }

    use crate::testutil::uniform;

    /// A daily-ish cycle with noise, at 5-minute steps.
    fn cycle(i: usize, seed: &mut u64) -> f64 {
        let u = uniform(seed) - 0.5;
        100.0 + 40.0 * (2.0 * std::f64::consts::PI * i as f64 / 48.0).sin() + 10.0 * u
    }

    #[test]
    fn a_restored_engine_forecasts_as_the_one_that_kept_running() {
        let mut seed = 11_u64;
        let mut a = Engine::new(preset(), 300, 2);
        a.set_evaluating(true);
        let mut i = 0;
        // Run until a scheduled refit has just happened, well after warm-up.
        let mut refits = 0;
        loop {
            a.observe(i as i64 * 300, cycle(i, &mut seed)).unwrap();
            let _ = a.forecast(12);
            i += 1;
            if i > 48 * 20 && a.status().refits > refits && refits > 0 {
                break;
            }
            refits = a.status().refits;
        }
        // Through bytes, as the service stores it.
        let bytes = bincode::serialize(&a.state()).unwrap();
        let mut b = Engine::new(preset(), 300, 2);
        b.set_evaluating(true);
        b.restore(bincode::deserialize(&bytes).unwrap()).unwrap();
        assert_eq!(b.last_sample(), a.last_sample());
        for _ in 0..300 {
            let y = cycle(i, &mut seed);
            a.observe(i as i64 * 300, y).unwrap();
            b.observe(i as i64 * 300, y).unwrap();
            let (fa, fb) = (a.forecast(12).unwrap(), b.forecast(12).unwrap());
            assert_eq!(
                (fa.point, fa.upper, fa.model),
                (fb.point, fb.upper, fb.model),
                "step {i}"
            );
            i += 1;
        }
        // The same, refits included: the restored engine took up the saved fits and did not
        // refit before its schedule.
        assert!(
            a.status().refits > refits,
            "a scheduled refit happened since"
        );
        assert_eq!(a.status(), b.status());
        assert_eq!(a.candidate_stats().len(), b.candidate_stats().len());
        // Every candidate's residual windows too, full or thin: a later switch finds them equal.
        let resid = |e: &Engine| {
            let s = e.state();
            let c = s.cands.into_iter();
            c.map(|c| (c.resid, c.full, c.full_until, c.taken))
                .collect::<Vec<_>>()
        };
        assert_eq!(resid(&a), resid(&b));
        // Another lead time or preset: refused, and the engine starts cold.
        let mut c = Engine::new(preset(), 300, 3);
        assert!(c.restore(a.state()).is_err());
        assert_eq!(c.last_sample(), None);
        let mut d = Engine::new(ModelPreset::load("reactive").unwrap(), 300, 2);
        assert!(d.restore(a.state()).is_err());
        let mut other = preset();
        other.quantile = 0.95;
        assert!(
            Engine::new(other, 300, 2).restore(a.state()).is_err(),
            "another quantile"
        );
        // Tampered states are refused, never taken up to fail later.
        let tampered: [fn(&mut EngineState); 9] = [
            // A fit saved for another model.
            |s| s.cands[1].fit = s.cands[2].fit.clone(),
            // A thin window longer than a thin window holds; the selected model's thin.
            |s| {
                let c = s.cands.iter_mut().find(|c| !c.full).unwrap();
                c.resid[0] = vec![0; 300]; // thin room 216 of 864
            },
            |s| {
                let sel = s.selected;
                s.cands[sel].full = false;
            },
            |s| s.published.push_back((0, Vec::new(), 0.0, 0.0)),
            |s| s.t0 = Some(1_000_000),
            |s| s.grid = Grid::default(),
            |s| {
                s.cands[1].pending.push_back(Pending {
                    origin_end: usize::MAX,
                    point: vec![0.0; 2],
                    scale: vec![1.0; 2],
                    upper_lead: 0.0,
                })
            },
            |s| s.last_fit_end = Some(usize::MAX),
            |s| s.grid.set_last(f64::NAN),
        ];
        for (k, tamper) in tampered.iter().enumerate() {
            let mut bad = a.state();
            tamper(&mut bad);
            let mut e = Engine::new(preset(), 300, 2);
            assert!(e.restore(bad).is_err(), "tampered state {k} taken up");
            assert_eq!(e.last_sample(), None);
        }
    }

    #[test]
    fn bad_samples_are_refused_and_change_nothing() {
        let mut e = Engine::new(preset(), 60, 3);
        e.observe(0, 1.0).unwrap();
        assert_eq!(
            e.observe(60, f64::NAN).unwrap_err().kind(),
            "invalid_sample"
        );
        assert_eq!(e.observe(60, -1.0).unwrap_err().kind(), "invalid_sample");
        assert_eq!(e.observe(0, 2.0).unwrap_err().kind(), "out_of_order");
        assert_eq!(e.status().samples, 1);
    }

    #[test]
    fn gaps_are_filled_on_the_grid() {
        let mut e = Engine::new(preset(), 60, 3);
        e.observe(0, 0.0).unwrap();
        e.observe(240, 4.0).unwrap();
        assert_eq!(e.grid.to_vec(0, 5), vec![0.0, 1.0, 2.0, 3.0, 4.0]);
        assert!((0..5).all(|i| e.is_scored(i)));
        let mut e = Engine::new(preset(), 60, 3);
        e.observe(0, 0.0).unwrap();
        e.observe(60 * 100, 1.0).unwrap();
        assert!(e.is_scored(0) && e.is_scored(100));
        assert!(!e.is_scored(50), "a long gap is not scored");
        assert!(!e.is_scored(1) && !e.is_scored(99));
    }

    #[test]
    fn a_gap_longer_than_the_history_fills_only_what_is_kept() {
        let mut e = Engine::new(preset(), 60, 3);
        for i in 0..500 {
            e.observe(60 * i, 10.0).unwrap();
        }
        let keep = e.keep;
        // Three histories later, and then a clock jump of a few thousand years: filling every
        // step of that one would never finish.
        let k = 499 + 3 * keep as i64;
        e.observe(60 * k, 40.0).unwrap();
        assert_eq!(e.grid.len(), keep, "more than the history kept");
        assert_eq!(e.start + keep, k as usize + 1);
        let (gap, tail) = (k - 499, e.grid.to_vec(keep - 3, keep));
        let line = |j: i64| 10.0 + 30.0 * (j - 499) as f64 / gap as f64;
        for (v, j) in tail.iter().zip(k - 2..) {
            // The line climbs 5e-4 a step: a fill one step off misses it by far more.
            assert!(
                (v - line(j)).abs() < 1e-4,
                "{v} is not on the fill line at {j}"
            );
        }
        assert!(!e.is_scored(e.start) && e.is_scored(k as usize));
        e.observe(60 * k + 60 * 100_000_000_000, 5.0).unwrap();
        assert_eq!(e.grid.len(), keep);
        assert!(e.grid.last().is_some_and(|v| (v - 5.0).abs() < 0.05));
        assert!(
            e.unscored.len() <= 1,
            "ranges before the history are dropped"
        );
    }

    #[test]
    fn warm_up_then_calibrated_forecasts_cover_about_their_quantile() {
        let p = 48;
        let mut s = 7_u64;
        let mut e = Engine::new(preset(), 300, 2);
        let mut covered = 0;
        let mut total = 0;
        let mut first_ok = None;
        let mut last: Option<Forecast> = None;
        for i in 0..(p * 30) {
            let u = uniform(&mut s) - 0.5;
            let y =
                100.0 + 40.0 * (2.0 * std::f64::consts::PI * i as f64 / p as f64).sin() + 10.0 * u;
            if let Some(f) = &last
                && i >= p * 15
            {
                total += 1;
                covered += usize::from(y <= f.upper[0]);
            }
            e.observe(i as i64 * 300, y).unwrap();
            match e.forecast(2) {
                Ok(f) => {
                    first_ok.get_or_insert(i);
                    assert!(f.upper.iter().zip(&f.point).all(|(u, p)| u >= p));
                    last = Some(f);
                }
                Err(err) => {
                    assert_eq!(err.kind(), "not_enough_data");
                    last = None;
                }
            }
        }
        assert!(first_ok.is_some_and(|i| i > 16), "no warm-up: {first_ok:?}");
        let cov = covered as f64 / total as f64;
        assert!((0.8..=0.97).contains(&cov), "coverage {cov}");
        assert_eq!(e.status().periods.first(), Some(&p));
        assert_ne!(
            e.status().model,
            "persistence",
            "a seasonal model should win"
        );
    }
}
