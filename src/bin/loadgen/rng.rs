//! A small deterministic random number generator (xorshift64*), so the soak mode's mix of
//! joins, pauses and resets needs no extra crate and a seed reproduces a schedule.

/// xorshift64* (Vigna, "An experimental exploration of Marsaglia's xorshift generators"):
/// plenty for picking rooms and delays, and never zero once seeded with a non-zero state.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (zero is replaced, since xorshift would stay at zero).
    pub fn new(seed: u64) -> Self {
        Rng(if seed == 0 { 0x9E37_79B9_7F4A_7C15 } else { seed })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (0 when `n` is 0); the modulo bias is irrelevant at these sizes.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// A number of milliseconds in `low..high`.
    pub fn millis(&mut self, low: u64, high: u64) -> std::time::Duration {
        std::time::Duration::from_millis(low + self.below(high.saturating_sub(low)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_in_range_and_moves() {
        let mut rng = Rng::new(0);
        let draws: Vec<u64> = (0..1000).map(|_| rng.below(7)).collect();
        assert!(draws.iter().all(|&d| d < 7));
        assert!((0..7).all(|v| draws.contains(&v)), "every value comes up in 1,000 draws");
    }
}
