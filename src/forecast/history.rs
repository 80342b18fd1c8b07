//! History clean-up before fitting: robust outlier clipping and level-shift detection.

use augurs::changepoint::{Detector, NormalGammaDetector};

/// Scale factor from median absolute deviation to a normal standard deviation.
const MAD_TO_SD: f64 = 1.4826;

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mid = v.len() / 2;
    let (_, m, _) = v.select_nth_unstable_by(mid, f64::total_cmp);
    *m
}

/// Noise scale of a series from its first differences (robust to level and season).
fn noise_sd(y: &[f64]) -> f64 {
    let mut d: Vec<f64> = y.windows(2).map(|w| (w[1] - w[0]).abs()).collect();
    MAD_TO_SD * median(&mut d) / std::f64::consts::SQRT_2
}

/// Clips isolated spikes and dips: a point further than `k` robust standard deviations from
/// the median of its `2 * half_window + 1` neighbours is moved to that bound. Runs of more
/// than `half_window` extreme points are kept (they are demand, not glitches). Returns how
/// many points were clipped.
pub fn clip_outliers(y: &mut [f64], k: f64, half_window: usize) -> usize {
    let n = y.len();
    if n < 2 * half_window + 2 {
        return 0;
    }
    let mut buf = Vec::with_capacity(2 * half_window + 1);
    let meds: Vec<f64> = (0..n)
        .map(|i| {
            buf.clear();
            buf.extend_from_slice(&y[i.saturating_sub(half_window)..(i + half_window + 1).min(n)]);
            median(&mut buf)
        })
        .collect();
    let mut resid: Vec<f64> = y.iter().zip(&meds).map(|(v, m)| (v - m).abs()).collect();
    let sd = MAD_TO_SD * median(&mut resid);
    if sd <= 0.0 {
        return 0;
    }
    let mut clipped = 0;
    for (v, m) in y.iter_mut().zip(meds) {
        let bound = k * sd;
        if (*v - m).abs() > bound {
            *v = (m + bound.copysign(*v - m)).max(0.0);
            clipped += 1;
        }
    }
    clipped
}

/// Finds the start of the latest lasting level shift in `y`, if any.
///
/// Bayesian online changepoint detection (augurs) runs on block means; a changepoint counts
/// only when the median level after it differs from the median before it by more than four
/// noise standard deviations of the block means, and at least `min_after` points follow it
/// (so a seasonal swing shorter than that cannot pass for a shift).
pub fn level_shift_start(y: &[f64], min_after: usize) -> Option<usize> {
    let n = y.len();
    let block = (n / 300).max(1);
    let z: Vec<f64> = y
        .chunks(block)
        .map(|c| c.iter().sum::<f64>() / c.len() as f64)
        .collect();
    if z.len() < 10 {
        return None;
    }
    let sd = noise_sd(&z).max(1e-9);
    let mut sorted = z.clone();
    let centre = median(&mut sorted);
    let standardized: Vec<f64> = z.iter().map(|v| (v - centre) / sd).collect();
    let cps = NormalGammaDetector::default().detect_changepoints(&standardized);
    for &cp in cps.iter().rev() {
        let start = cp * block;
        if cp == 0 || cp >= z.len() || n - start < min_after {
            continue;
        }
        let mut after = z[cp..].to_vec();
        let mut before = z[cp.saturating_sub(z.len() - cp)..cp].to_vec();
        let shift = (median(&mut after) - median(&mut before)).abs();
        if shift > 4.0 * sd {
            return Some(start);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(n: usize, amp: f64) -> Vec<f64> {
        let mut s = 99_u64;
        (0..n)
            .map(|_| amp * (crate::testutil::uniform(&mut s) - 0.5))
            .collect()
    }

    #[test]
    fn isolated_spikes_are_clipped_but_plateaus_kept() {
        let mut y: Vec<f64> = noise(200, 2.0).iter().map(|e| 50.0 + e).collect();
        y[50] = 500.0;
        for v in &mut y[100..120] {
            *v = 300.0; // a plateau of real demand
        }
        let n = clip_outliers(&mut y, 6.0, 3);
        assert!(y[50] < 70.0, "spike kept: {}", y[50]);
        assert!(y[110] == 300.0, "plateau clipped");
        assert!(n >= 1);
    }

    #[test]
    fn a_step_in_level_is_found_near_where_it_happened() {
        let y: Vec<f64> = noise(2000, 4.0)
            .iter()
            .enumerate()
            .map(|(i, e)| if i < 1400 { 40.0 + e } else { 10.0 + e })
            .collect();
        let at = level_shift_start(&y, 100).expect("shift found");
        assert!((1380..=1420).contains(&at), "found at {at}");
    }

    #[test]
    fn a_stationary_series_has_no_shift() {
        let y: Vec<f64> = noise(2000, 4.0).iter().map(|e| 40.0 + e).collect();
        assert_eq!(level_shift_start(&y, 100), None);
    }
}
