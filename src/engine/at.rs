//! An instant as a lead's state holds it (issue 13): 8 bytes, and `Option<At>` 8 too, where a
//! [`Timestamp`] takes 16 and an optional one 24. A lead keeps a dozen times besides one per
//! field, so a third of its state was times.
//!
//! Nanoseconds since the Unix epoch, so every time of an event is kept exactly (alert ids are
//! made of clock starts written out to the nanosecond): exact from 1677-09-21 to 2262-04-11.
//! Earlier or later instants are held as [`Timestamp::MIN`] and [`Timestamp::MAX`] (and read back
//! as those): no CRM stamps a lead outside that span, ingest clamps times ahead of the arrival,
//! and the engine's own far-off instants ("never") are those two.
//!
//! Written to the changelog, and read back, exactly as a [`Timestamp`] is there (see
//! [`super::record::time`]): an RFC 3339 string in JSON, `[seconds, nanoseconds]` in MessagePack.

use std::num::NonZeroU64;

use jiff::Timestamp;

/// An instant, as a lead's state holds it.
///
/// The nanoseconds `n` are kept as `n ^ SIGN` (a niche at `i64::MIN`, so `Option<At>` takes no
/// more room), which orders as `n` does.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct At(NonZeroU64);

const SIGN: u64 = 1 << 63;

impl At {
    /// [`Timestamp::MIN`], and every instant before 1677-09-21.
    pub const MIN: At = At::raw(i64::MIN + 1);
    /// [`Timestamp::MAX`], and every instant after 2262-04-11.
    pub const MAX: At = At::raw(i64::MAX);

    const fn raw(nanos: i64) -> At {
        match NonZeroU64::new(nanos as u64 ^ SIGN) {
            Some(n) => At(n),
            None => panic!("i64::MIN is the niche"),
        }
    }

    fn nanos(self) -> i64 {
        (self.0.get() ^ SIGN) as i64
    }

    /// `t`, exactly when it is in the span kept (else the end of the span it is beyond).
    pub fn new(t: Timestamp) -> At {
        let n = t.as_nanosecond();
        if n >= i128::from(At::MAX.nanos()) {
            At::MAX
        } else if n <= i128::from(At::MIN.nanos()) {
            At::MIN
        } else {
            At::raw(n as i64)
        }
    }

    /// The instant as a [`Timestamp`].
    pub fn ts(self) -> Timestamp {
        match self {
            At::MIN => Timestamp::MIN,
            At::MAX => Timestamp::MAX,
            at => Timestamp::from_nanosecond(i128::from(at.nanos())).expect("in jiff's range"),
        }
    }
}

impl From<Timestamp> for At {
    fn from(t: Timestamp) -> At {
        At::new(t)
    }
}

impl From<At> for Timestamp {
    fn from(at: At) -> Timestamp {
        at.ts()
    }
}

impl std::fmt::Debug for At {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.ts(), f)
    }
}

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.ts(), f)
    }
}

impl std::str::FromStr for At {
    type Err = jiff::Error;
    fn from_str(s: &str) -> Result<At, jiff::Error> {
        s.parse::<Timestamp>().map(At::new)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn an_instant_takes_eight_bytes_optional_or_not() {
        assert_eq!(size_of::<At>(), 8);
        assert_eq!(size_of::<Option<At>>(), 8);
    }

    #[test]
    fn the_ends_of_time_are_kept_as_they_are() {
        assert_eq!(At::new(Timestamp::MAX).ts(), Timestamp::MAX);
        assert_eq!(At::new(Timestamp::MIN).ts(), Timestamp::MIN);
        // Beyond the span: held as the end it is past, in order with everything inside.
        let far: Timestamp = "2400-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(At::new(far), At::MAX);
        let early: Timestamp = "1500-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(At::new(early), At::MIN);
        assert!(At::MIN < At::new(Timestamp::UNIX_EPOCH));
        assert!(At::new(Timestamp::UNIX_EPOCH) < At::MAX);
    }

    proptest! {
        /// Any instant of the span comes back to the nanosecond, and instants order as their
        /// timestamps do.
        #[test]
        fn instants_are_exact_and_ordered(
            a in -9_223_372_036_854_775_807i64..=i64::MAX,
            b in -9_223_372_036_854_775_807i64..=i64::MAX,
        ) {
            let (ta, tb) = (
                Timestamp::from_nanosecond(i128::from(a)).unwrap(),
                Timestamp::from_nanosecond(i128::from(b)).unwrap(),
            );
            let (x, y) = (At::new(ta), At::new(tb));
            let inside = |t: At| t != At::MIN && t != At::MAX;
            if inside(x) {
                prop_assert_eq!(x.ts(), ta);
            }
            // At the ends of the span too, still in order.
            if ta <= tb {
                prop_assert!(x <= y);
            }
            if inside(x) && inside(y) {
                prop_assert_eq!(x.cmp(&y), ta.cmp(&tb));
            }
        }
    }
}
