//! The `Range` request header: one `bytes=` range, resolved against a size.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `a-b` (inclusive) or `a-`.
    From { start: u64, end: Option<u64> },
    /// `-n`: the last n bytes.
    Suffix(u64),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("malformed Range header {0:?}: expected a single bytes=start-end")]
    Malformed(String),
    #[error("range {0:?} is not satisfiable for a blob of {1} bytes")]
    Unsatisfiable(String, u64),
}

impl ByteRange {
    pub fn parse(header: &str) -> Result<ByteRange, RangeError> {
        let bad = || RangeError::Malformed(header.to_string());
        let spec = header.trim().strip_prefix("bytes=").ok_or_else(bad)?;
        if spec.contains(',') {
            return Err(bad());
        }
        let (a, b) = spec.trim().split_once('-').ok_or_else(bad)?;
        let num = |s: &str| {
            (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
                .then(|| s.parse::<u64>().ok())
                .flatten()
                .ok_or_else(bad)
        };
        match (a.is_empty(), b.is_empty()) {
            (true, true) => Err(bad()),
            (true, false) => Ok(ByteRange::Suffix(num(b)?)),
            (false, true) => Ok(ByteRange::From {
                start: num(a)?,
                end: None,
            }),
            (false, false) => {
                let (start, end) = (num(a)?, num(b)?);
                if end < start {
                    return Err(bad());
                }
                Ok(ByteRange::From { start, end: Some(end) })
            }
        }
    }

    /// Resolve to a half-open `[start, end)` within `size` bytes.
    pub fn resolve(self, size: u64, header: &str) -> Result<(u64, u64), RangeError> {
        let unsatisfiable = || RangeError::Unsatisfiable(header.to_string(), size);
        match self {
            ByteRange::From { start, end } => {
                if start >= size {
                    return Err(unsatisfiable());
                }
                let end = end.map_or(size, |e| e.saturating_add(1).min(size));
                Ok((start, end))
            }
            // RFC 9110 14.1.3: a suffix range of an empty representation
            // selects nothing, so it is not satisfiable.
            ByteRange::Suffix(0) => Err(unsatisfiable()),
            ByteRange::Suffix(_) if size == 0 => Err(unsatisfiable()),
            ByteRange::Suffix(n) => Ok((size.saturating_sub(n), size)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(h: &str, size: u64) -> Result<(u64, u64), RangeError> {
        ByteRange::parse(h)?.resolve(size, h)
    }

    #[test]
    fn ranges() {
        assert_eq!(r("bytes=0-9", 100), Ok((0, 10)));
        assert_eq!(r("bytes=90-", 100), Ok((90, 100)));
        assert_eq!(r("bytes=90-200", 100), Ok((90, 100)));
        assert_eq!(r("bytes=-10", 100), Ok((90, 100)));
        assert_eq!(r("bytes=-200", 100), Ok((0, 100)));
        assert_eq!(r("bytes=99-99", 100), Ok((99, 100)));
    }

    #[test]
    fn bad_ranges() {
        assert!(matches!(r("bytes=100-", 100), Err(RangeError::Unsatisfiable(..))));
        assert!(matches!(r("bytes=-0", 100), Err(RangeError::Unsatisfiable(..))));
        assert!(matches!(r("bytes=-5", 0), Err(RangeError::Unsatisfiable(..))));
        assert!(matches!(r("bytes=0-", 0), Err(RangeError::Unsatisfiable(..))));
        for h in [
            "bytes=",
            "bytes=-",
            "bytes=5-1",
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes=a-b",
            "bytes=+1-2",
        ] {
            assert!(matches!(ByteRange::parse(h), Err(RangeError::Malformed(_))), "{h}");
        }
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        /// The header text for a range (what a client would send).
        fn render(r: ByteRange) -> String {
            match r {
                ByteRange::From { start, end: None } => format!("bytes={start}-"),
                ByteRange::From { start, end: Some(end) } => format!("bytes={start}-{end}"),
                ByteRange::Suffix(n) => format!("bytes=-{n}"),
            }
        }

        fn size() -> impl Strategy<Value = u64> {
            prop_oneof![Just(0u64), Just(1), 0u64..64, any::<u64>(), Just(u64::MAX)]
        }

        fn range() -> impl Strategy<Value = ByteRange> {
            prop_oneof![
                (any::<u64>(), proptest::option::of(any::<u64>())).prop_map(|(start, end)| ByteRange::From {
                    start,
                    end: end.map(|e| e.max(start)),
                }),
                (0u64..8, proptest::option::of(0u64..8)).prop_map(|(start, end)| ByteRange::From {
                    start,
                    end: end.map(|e| e.max(start)),
                }),
                any::<u64>().prop_map(ByteRange::Suffix),
                (0u64..8).prop_map(ByteRange::Suffix),
            ]
        }

        proptest! {
            #![proptest_config(crate::fuzz_config())]

            /// Any header, any size (0 included): no panic; a satisfiable
            /// range is a non-empty span inside the blob; an accepted header
            /// rendered again parses to the same range.
            #[test]
            fn fuzz_range_parse_resolve(
                header in prop_oneof![
                    any::<String>(),
                    "bytes=[0-9]{0,21}-[0-9]{0,21}",
                    " ?bytes= ?-?[0-9]{0,3}-?[0-9]{0,3}(,[0-9]-[0-9])? ?",
                ],
                size in size(),
            ) {
                if let Ok(r) = ByteRange::parse(&header) {
                    prop_assert_eq!(ByteRange::parse(&render(r)), Ok(r));
                    if let Ok((start, end)) = r.resolve(size, &header) {
                        prop_assert!(start < end && end <= size, "{header:?} on {size}: {start}..{end}");
                    }
                }
            }

            #[test]
            fn fuzz_every_range_resolves_within_the_size(r in range(), size in size()) {
                prop_assert_eq!(ByteRange::parse(&render(r)), Ok(r));
                if let Ok((start, end)) = r.resolve(size, "") {
                    prop_assert!(start < end && end <= size, "{r:?} on {size}: {start}..{end}");
                }
            }
        }
    }
}
