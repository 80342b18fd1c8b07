//! Helpers shared by the unit tests: a reproducible pseudo-random stream.

/// Advances `s` one step of a 64-bit linear congruential generator (Knuth's MMIX constants)
/// and returns the new state; its high bits are the random ones.
pub fn next_u64(s: &mut u64) -> u64 {
    *s = s
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *s
}

/// A uniform draw in [0, 1) from the top 53 bits of the next state.
pub fn uniform(s: &mut u64) -> f64 {
    (next_u64(s) >> 11) as f64 / (1u64 << 53) as f64
}
