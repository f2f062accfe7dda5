//! Exponential backoff with jitter between retry rounds of the client.
//!
//! Pure arithmetic: the caller supplies the random number, so the schedule is
//! deterministic under test. Never sleeps itself.

use std::time::Duration;

/// Backoff schedule: round `n` waits between half and all of
/// `min(max, base * 2^n)` ("equal jitter"), so retries from many clients
/// spread out while each still waits a predictable minimum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Ceiling of the first round's delay.
    pub base: Duration,
    /// Largest ceiling any round may reach.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(50),
            max: Duration::from_secs(1),
        }
    }
}

impl Backoff {
    /// The delay ceiling of round `round` (0-based): `min(max, base * 2^round)`.
    pub fn ceiling(&self, round: u32) -> Duration {
        let factor = 1u32.checked_shl(round.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The delay before retry round `round + 1`, given `unit`, a random number
    /// in `[0, 1)` (values outside are clamped).
    ///
    /// ```
    /// use std::time::Duration;
    /// use warden_client::Backoff;
    /// let b = Backoff { base: Duration::from_millis(100), max: Duration::from_secs(1) };
    /// // Round 2's ceiling is 400 ms; the delay lies in its upper half.
    /// assert_eq!(b.delay(2, 0.0), Duration::from_millis(200));
    /// assert_eq!(b.delay(2, 1.0), Duration::from_millis(400));
    /// // Never above the cap.
    /// assert_eq!(b.delay(30, 1.0), Duration::from_secs(1));
    /// ```
    pub fn delay(&self, round: u32, unit: f64) -> Duration {
        let ceiling = self.ceiling(round);
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let half = ceiling / 2;
        half + (ceiling - half).mul_f64(unit)
    }

    /// [`Backoff::delay`] with a fresh random number.
    pub fn delay_random(&self, round: u32) -> Duration {
        self.delay(round, rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn ceiling_doubles_then_caps() {
        let b = Backoff {
            base: ms(50),
            max: ms(1000),
        };
        let got: Vec<_> = (0..7).map(|r| b.ceiling(r)).collect();
        assert_eq!(
            got,
            vec![
                ms(50),
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1000),
                ms(1000)
            ]
        );
        // Huge round numbers must not overflow.
        assert_eq!(b.ceiling(u32::MAX), ms(1000));
    }

    #[test]
    fn jitter_stays_between_half_and_full_ceiling() {
        let b = Backoff {
            base: ms(100),
            max: ms(1000),
        };
        assert_eq!(b.delay(0, 0.0), ms(50));
        assert_eq!(b.delay(0, 0.5), ms(75));
        assert_eq!(b.delay(0, 1.0), ms(100));
        assert_eq!(b.delay(3, 0.0), ms(400));
        // Out-of-range randomness is clamped, never panics.
        assert_eq!(b.delay(0, -3.0), ms(50));
        assert_eq!(b.delay(0, 7.0), ms(100));
        assert_eq!(b.delay(0, f64::NAN), ms(50));
        for round in 0..40 {
            let d = b.delay_random(round);
            let c = b.ceiling(round);
            assert!(d >= c / 2 && d <= c, "round {round}: {d:?} vs {c:?}");
        }
    }

    #[test]
    fn zero_base_means_no_wait() {
        let b = Backoff {
            base: Duration::ZERO,
            max: ms(10),
        };
        assert_eq!(b.delay(5, 0.9), Duration::ZERO);
    }
}
