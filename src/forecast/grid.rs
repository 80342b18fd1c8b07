//! The history grid at rest: demand per grid step, the newest block exact, older blocks
//! quantised to 16 bits over their own range.
//!
//! A week at one minute is 10,080 values per workload, held by every workload all the time.
//! Each sealed block of [`BLOCK`] values keeps its minimum and a step (its range / 65,535) and
//! one `u16` code per value: 2.1 bytes a value instead of 4, and a value reads back within
//! half a step of what was stored, a few millionths of the block's own range, far below any
//! demand signal's noise. A flat block is exact.

use serde::{Deserialize, Serialize};

/// Values per sealed block. The grid also drops old history a whole block at a time.
pub(super) const BLOCK: usize = 64;

const LEVELS: f32 = u16::MAX as f32;

/// Blocks a grid trimmed to `keep` values ever holds (`trim` lets it reach `keep + BLOCK`,
/// and the value that triggers a trim is pushed first).
fn blocks_for(keep: usize) -> usize {
    (keep + BLOCK).div_ceil(BLOCK) + 1
}

/// A sealed value, from its block's (minimum, step) widened and its code.
fn decode((min, step): (f64, f64), code: u16) -> f64 {
    min + f64::from(code) * step
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct Grid {
    /// (minimum, step) of every sealed block, oldest first.
    heads: Vec<(f32, f32)>,
    /// `BLOCK` codes per sealed block.
    codes: Vec<u16>,
    /// The newest values, exact: 1 to `BLOCK` of them once anything was pushed.
    tail: Vec<f32>,
}

impl Grid {
    /// The same grid with room for all it holds when trimmed to `keep` values, so it never
    /// grows by doubling (one read from a snapshot holds only what it has).
    pub(super) fn with_room(mut self, keep: usize) -> Self {
        let blocks = blocks_for(keep);
        self.heads
            .reserve_exact(blocks.saturating_sub(self.heads.len()));
        self.codes
            .reserve_exact((blocks * BLOCK).saturating_sub(self.codes.len()));
        self.tail.reserve_exact(BLOCK - self.tail.len().min(BLOCK));
        self
    }

    pub(super) fn len(&self) -> usize {
        self.codes.len() + self.tail.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.tail.is_empty()
    }

    /// Appends a value (finite, not negative: the engine checks).
    pub(super) fn push(&mut self, v: f64) {
        // Sealed lazily, when the next value comes: the last value always stays exact and
        // can still be replaced.
        if self.tail.len() == BLOCK {
            self.seal();
        }
        self.tail.push(v as f32);
    }

    fn seal(&mut self) {
        let min = self.tail.iter().copied().fold(f32::INFINITY, f32::min);
        let max = self.tail.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let step = (max - min) / LEVELS;
        self.heads.push((min, step));
        self.codes.extend(self.tail.iter().map(|&v| {
            if step > 0.0 {
                ((v - min) / step).round().clamp(0.0, LEVELS) as u16
            } else {
                0
            }
        }));
        self.tail.clear();
    }

    /// Replaces the newest value.
    pub(super) fn set_last(&mut self, v: f64) {
        if let Some(last) = self.tail.last_mut() {
            *last = v as f32;
        }
    }

    pub(super) fn last(&self) -> Option<f64> {
        self.tail.last().map(|&v| f64::from(v))
    }

    /// Value at position `i` (from the oldest held), if held.
    pub(super) fn get(&self, i: usize) -> Option<f64> {
        if i < self.codes.len() {
            Some(decode(self.head(i / BLOCK), self.codes[i]))
        } else {
            self.tail.get(i - self.codes.len()).map(|&v| f64::from(v))
        }
    }

    /// Block `b`'s (minimum, step), widened.
    fn head(&self, b: usize) -> (f64, f64) {
        let (min, step) = self.heads[b];
        (f64::from(min), f64::from(step))
    }

    /// Positions `from..to` as f64, for the models (a copy: compact at rest, f64 in use).
    pub(super) fn to_vec(&self, from: usize, to: usize) -> Vec<f64> {
        let to = to.min(self.len());
        let mut out = Vec::with_capacity(to.saturating_sub(from));
        let sealed = to.min(self.codes.len());
        let mut i = from.min(sealed);
        while i < sealed {
            // A block (or the part of it asked for) at a time: one head per block.
            let head = self.head(i / BLOCK);
            let end = ((i / BLOCK + 1) * BLOCK).min(sealed);
            out.extend(self.codes[i..end].iter().map(|&c| decode(head, c)));
            i = end;
        }
        let t = from.saturating_sub(self.codes.len());
        let u = to.saturating_sub(self.codes.len());
        out.extend(self.tail[t.min(u)..u].iter().map(|&v| f64::from(v)));
        out
    }

    /// Once more than `keep + BLOCK` values are held, drops the oldest whole blocks while at
    /// least `keep` values remain (one move of the grid per block, not per step); the count
    /// of values dropped.
    pub(super) fn trim(&mut self, keep: usize) -> usize {
        if self.len() <= keep + BLOCK {
            return 0;
        }
        let blocks = ((self.len() - keep) / BLOCK).min(self.heads.len());
        self.heads.drain(..blocks);
        self.codes.drain(..blocks * BLOCK);
        // A long gap filled at once grew the grid past its size: give that back.
        let cap = blocks_for(keep);
        self.heads.shrink_to(cap);
        self.codes.shrink_to(cap * BLOCK);
        blocks * BLOCK
    }

    /// Whether a grid read from a snapshot is well formed (every value readable, finite and
    /// not negative).
    pub(super) fn is_valid(&self) -> bool {
        let finite = |v: f32| v.is_finite() && v >= 0.0;
        self.codes.len() == self.heads.len() * BLOCK
            && self.tail.len() <= BLOCK
            && (!self.tail.is_empty() || self.codes.is_empty())
            && self
                .heads
                .iter()
                .all(|&(m, s)| finite(m) && finite(s) && finite(m + s * LEVELS))
            && self.tail.iter().all(|&v| finite(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(n: usize) -> (Grid, Vec<f64>) {
        let mut g = Grid::default().with_room(n);
        let v: Vec<f64> = (0..n)
            .map(|i| 1000.0 + 300.0 * (i as f64 / 37.0).sin() + (i % 7) as f64 * 0.123)
            .collect();
        v.iter().for_each(|&x| g.push(x));
        (g, v)
    }

    #[test]
    fn values_read_back_within_half_a_step_of_their_block_range() {
        let (g, v) = filled(1000);
        assert_eq!(g.len(), 1000);
        let all = g.to_vec(0, 1000);
        for (b, chunk) in v.chunks(BLOCK).enumerate() {
            let lo = chunk.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = chunk.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            for (j, &x) in chunk.iter().enumerate() {
                let i = b * BLOCK + j;
                let tol = (hi - lo) / 65535.0 + 1e-3;
                assert!((all[i] - x).abs() <= tol, "{i}: {} vs {x}", all[i]);
                assert_eq!(g.get(i), Some(all[i]));
            }
        }
        // The unsealed tail is exact (to f32).
        assert_eq!(g.last(), Some(f64::from(*v.last().unwrap() as f32)));
        assert_eq!(g.to_vec(990, 1000), all[990..].to_vec());
        assert_eq!(g.to_vec(10, 20), all[10..20].to_vec());
        assert_eq!(g.get(1000), None);
    }

    #[test]
    fn flat_blocks_are_exact_and_the_last_value_can_be_replaced() {
        let mut g = Grid::default().with_room(200);
        (0..130).for_each(|_| g.push(42.5));
        assert!(g.to_vec(0, 130).iter().all(|&x| x == 42.5));
        g.set_last(7.0);
        assert_eq!(g.last(), Some(7.0));
        assert_eq!(g.get(129), Some(7.0));
        assert!(g.is_valid());
    }

    #[test]
    fn trimming_drops_whole_blocks_and_keeps_at_least_what_is_asked() {
        let (mut g, _) = filled(650);
        assert_eq!(g.trim(600), 0, "within keep + one block: nothing dropped");
        let (mut g2, _) = filled(900);
        let dropped = g2.trim(600);
        assert_eq!(dropped % BLOCK, 0);
        assert!(g2.len() >= 600 && g2.len() < 600 + BLOCK, "{}", g2.len());
        assert_eq!(g2.len() + dropped, 900);
        // The values keep their positions relative to the end.
        let (g3, _) = filled(900);
        assert_eq!(g2.to_vec(g2.len() - 100, g2.len()), g3.to_vec(800, 900));
    }

    #[test]
    fn malformed_grids_are_refused() {
        let (g, _) = filled(300);
        assert!(g.is_valid());
        let mut bad = g.clone();
        bad.codes.pop();
        assert!(!bad.is_valid());
        let mut bad = g.clone();
        bad.heads[0].1 = f32::NAN;
        assert!(!bad.is_valid());
        let mut bad = g;
        bad.tail.extend([1.0; BLOCK]);
        assert!(!bad.is_valid());
        assert!(Grid::default().is_valid());
    }
}
