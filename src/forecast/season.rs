//! Seasonality detection for any period: augurs' periodogram finds the bands, autocorrelation
//! pins the exact period, calendar periods (hour, day, week) are tried directly.

use augurs::seasons::PeriodogramDetector;

/// Longest series the periodogram sees; longer ones are block-averaged first, so that daily
/// cycles in one-minute data stay inside the detector's reach.
const MAX_PERIODOGRAM_POINTS: usize = 4096;
/// Autocorrelation a period needs to count as seasonal.
const MIN_ACF: f64 = 0.3;

/// Detects up to `max_periods` seasonal periods of `y`, in grid steps of `step_seconds`,
/// strongest first. A period needs at least two full cycles in `y`.
pub fn detect_periods(y: &[f64], step_seconds: u64, max_periods: usize) -> Vec<usize> {
    let n = y.len();
    if n < 16 || max_periods == 0 {
        return Vec::new();
    }
    let x = detrend(y);
    if x.iter().map(|v| v * v).sum::<f64>() <= f64::EPSILON * n as f64 {
        return Vec::new();
    }
    let max_lag = n / 2;
    let acf = |lag: usize| autocorrelation(&x, lag);

    let mut candidates: Vec<usize> = Vec::new();
    // Bands from the periodogram of the (block-averaged) series.
    let f = n.div_ceil(MAX_PERIODOGRAM_POINTS).max(1);
    let z: Vec<f64> = x
        .chunks(f)
        .map(|c| c.iter().sum::<f64>() / c.len() as f64)
        .collect();
    if z.len() >= 16 {
        let detector = PeriodogramDetector::builder()
            .min_period(2)
            .max_period((z.len() / 2).max(3) as u32)
            .build();
        for peak in detector.periodogram(&z).peaks(0.3) {
            let lo = peak.next_period.min(peak.prev_period);
            let hi = peak.next_period.max(peak.prev_period);
            let lo = if lo == 0 { peak.period / 2 } else { lo } as usize;
            let hi = if hi == 0 { peak.period * 2 } else { hi } as usize;
            // Coarse search on the averaged series, then exact at full resolution.
            let coarse = (lo.max(2)..=hi.min(z.len() / 2))
                .max_by(|&a, &b| autocorrelation(&z, a).total_cmp(&autocorrelation(&z, b)));
            if let Some(c) = coarse {
                let (a, b) = ((c * f).saturating_sub(f).max(2), (c * f + f).min(max_lag));
                if let Some(best) = (a..=b).max_by(|&p, &q| acf(p).total_cmp(&acf(q))) {
                    // A wide band can peak at a multiple of the period: try its divisors too.
                    for k in 1..=4 {
                        let d = (best as f64 / k as f64).round() as usize;
                        if let Some(r) = (d.saturating_sub(1).max(2)..=d + 1)
                            .max_by(|&p, &q| acf(p).total_cmp(&acf(q)))
                        {
                            candidates.push(r);
                        }
                    }
                }
            }
        }
    }
    // Calendar periods (hour, day, week) are exact: a day is 1440 one-minute steps.
    let calendar: Vec<usize> = [3600_u64, 86_400, 604_800]
        .into_iter()
        .filter(|secs| secs % step_seconds == 0)
        .map(|secs| (secs / step_seconds) as usize)
        .filter(|&p| p >= 2 && p <= max_lag)
        .collect();
    // A band the periodogram found near a calendar period is that calendar period.
    for c in &mut candidates {
        if let Some(&cal) = calendar
            .iter()
            .find(|&&cal| (*c as f64 - cal as f64).abs() <= 0.05 * cal as f64)
        {
            *c = cal;
        }
    }
    candidates.extend(calendar.iter().copied());
    candidates.sort_unstable();
    candidates.dedup();

    // Keep autocorrelation peaks that are strong enough. A calendar period needs a peak
    // within 2% of it and to correlate nearly as well as that peak.
    let is_peak = |p: usize| {
        let w = (p / 50).max(1);
        let (lo, hi) = (p.saturating_sub(w).max(1), (p + w).min(max_lag));
        let best = (lo..=hi).map(acf).fold(f64::NEG_INFINITY, f64::max);
        let interior = best > acf(lo.saturating_sub(1).max(1)) && best > acf((hi + 1).min(max_lag));
        // A real cycle dips between its peaks: smooth series correlate well at every short
        // lag, which is no season.
        let dips = acf(p) - acf((p / 2).max(1)) >= 0.2;
        interior && dips && acf(p) >= best - 0.02
    };
    let mut scored: Vec<(usize, f64)> = candidates
        .into_iter()
        .filter(|&p| p >= 2 && p <= max_lag)
        .map(|p| (p, acf(p)))
        .filter(|&(p, r)| r >= MIN_ACF && is_peak(p))
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1));
    let is_multiple = |big: usize, small: usize| {
        let ratio = big as f64 / small as f64;
        big > small && ratio.round() >= 2.0 && (ratio - ratio.round()).abs() < 0.05
    };
    // Prefer the fundamental: a divisor of `p` that correlates about as well is the period.
    let fundamental = |p: usize, r: f64| {
        (2..=8)
            .rev()
            .filter_map(|k| {
                let d = (p as f64 / k as f64).round() as usize;
                (d >= 2)
                    .then(|| (d - 1..=d + 1).max_by(|&a, &b| acf(a).total_cmp(&acf(b))))
                    .flatten()
            })
            .map(|d| (d, acf(d)))
            .find(|&(d, rd)| rd >= r - 0.05 && is_peak(d))
            .unwrap_or((p, r))
    };
    let mut chosen: Vec<(usize, f64)> = Vec::new();
    for &(p, r) in &scored {
        let (p, r) = fundamental(p, r);
        let near = chosen
            .iter()
            .any(|&(q, _)| (p as f64 - q as f64).abs() <= 0.05 * q as f64);
        // A multiple of a chosen period only adds information if it correlates better.
        let weak_multiple = chosen
            .iter()
            .any(|&(q, rq)| is_multiple(p, q) && r <= rq + 0.05);
        // A weak divisor of a chosen period is a harmonic, not a season of its own.
        let harmonic = chosen
            .iter()
            .any(|&(q, _)| is_multiple(q, p) && r < MIN_ACF + 0.1);
        if !near && !weak_multiple && !harmonic {
            chosen.push((p, r));
        }
        if chosen.len() == max_periods {
            break;
        }
    }
    chosen.into_iter().map(|(p, _)| p).collect()
}

/// `y` minus its least-squares line.
fn detrend(y: &[f64]) -> Vec<f64> {
    let n = y.len() as f64;
    let mx = (n - 1.0) / 2.0;
    let my = y.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (i, v) in y.iter().enumerate() {
        let dx = i as f64 - mx;
        sxy += dx * (v - my);
        sxx += dx * dx;
    }
    let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    y.iter()
        .enumerate()
        .map(|(i, v)| v - my - slope * (i as f64 - mx))
        .collect()
}

/// Pearson correlation of `x` with itself `lag` steps later (over the overlap, so long lags
/// are not shrunk by the shorter overlap).
fn autocorrelation(x: &[f64], lag: usize) -> f64 {
    if lag == 0 || lag + 2 > x.len() {
        return 0.0;
    }
    let (a, b) = (&x[..x.len() - lag], &x[lag..]);
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (u, v) in a.iter().zip(b) {
        let (du, dv) = (u - ma, v - mb);
        sab += du * dv;
        saa += du * du;
        sbb += dv * dv;
    }
    if saa <= 0.0 || sbb <= 0.0 {
        0.0
    } else {
        sab / (saa * sbb).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    fn sine(n: usize, p: f64, noise: f64) -> Vec<f64> {
        // Deterministic pseudo-noise keeps the test reproducible.
        let mut s = 12345_u64;
        (0..n)
            .map(|i| {
                let u = crate::testutil::uniform(&mut s) - 0.5;
                100.0 + 30.0 * (2.0 * PI * i as f64 / p).sin() + noise * u
            })
            .collect()
    }

    #[test]
    fn a_sine_of_any_period_is_detected_as_that_period() {
        for p in [7, 12, 37, 100, 144, 250, 1000] {
            let y = sine(p * 8, p as f64, 0.0);
            let found = detect_periods(&y, 1, 2);
            assert_eq!(found, vec![p], "period {p}");
        }
    }

    #[test]
    fn a_noisy_sine_is_detected_within_one_percent() {
        for p in [12, 37, 100, 250] {
            let y = sine(p * 8, p as f64, 30.0);
            let found = detect_periods(&y, 1, 2);
            let got = *found.first().unwrap_or(&0) as f64;
            assert!(
                (got - p as f64).abs() <= 0.01 * p as f64 + 1.0,
                "period {p}: {found:?}"
            );
        }
    }

    #[test]
    fn a_daily_cycle_in_one_minute_data_is_found() {
        let y = sine(1440 * 14, 1440.0, 10.0);
        let found = detect_periods(&y, 60, 2);
        assert_eq!(found.first(), Some(&1440), "{found:?}");
    }

    #[test]
    fn noise_and_constants_have_no_season() {
        let y = sine(2000, 1e12, 20.0); // period far longer than the data: a near-line plus noise
        assert!(detect_periods(&y, 60, 2).is_empty());
        assert!(detect_periods(&[5.0; 500], 60, 2).is_empty());
    }

    #[test]
    fn daily_and_weekly_are_both_found_at_an_hourly_step() {
        let y: Vec<f64> = (0..24 * 7 * 6)
            .map(|i| {
                let d = (2.0 * PI * i as f64 / 24.0).sin() * 20.0;
                let w = if (i / 24) % 7 >= 5 { -40.0 } else { 0.0 };
                200.0 + d + w
            })
            .collect();
        let mut found = detect_periods(&y, 3600, 2);
        found.sort_unstable();
        assert_eq!(found, vec![24, 168]);
    }
}
