//! Human-written durations ("5m", "1h30m", "250ms") and sizes ("50GiB", "512MB").
//!
//! Config values are strings so that one parse pass can report every bad value
//! with its key instead of stopping at serde's first error.

use std::time::Duration;

/// Ten years: longer than any timeout or TTL anyone means, short enough that
/// adding it to an `Instant` or a timestamp cannot overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(3650 * 86400);

/// Bytes in the largest binary unit that keeps a whole number in front:
/// 1536 → "1.5 KiB".
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    // Up a unit also where one decimal would round to 1024.0 of this one.
    while value >= 1023.95 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A duration as a person reads it: 45s, 3m, 2h 5m, 3d.
pub fn format_age(ms: u64) -> String {
    let secs = ms / 1000;
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86_400 => format!("{}h {}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d", secs / 86_400),
    }
}

/// Parse a duration made of `<number><unit>` parts: ms, s, m, h, d.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return Err(format!("{s:?} is not a duration like 30s, 5m, 1h30m, 250ms"));
        }
        let n: u64 = rest[..digits].parse().map_err(|_| format!("{s:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86400)),
            "" => return Err(format!("{s:?}: missing unit (ms, s, m, h, d)")),
            other => return Err(format!("{s:?}: unknown unit {other:?} (ms, s, m, h, d)")),
        };
        total = total.saturating_add(part);
    }
    // Durations are added to clocks; a bound keeps that arithmetic exact.
    if total > MAX_DURATION {
        return Err(format!(
            "{s:?} is longer than the longest duration berth accepts (3650d)"
        ));
    }
    Ok(total)
}

/// Parse a byte size: a number with an optional unit B, KB, MB, GB, TB
/// (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.bytes().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return Err(format!("{s:?} is not a size like 50GiB or 512MB"));
    }
    let n: u64 = t[..digits].parse().map_err(|_| format!("{s:?}: number too large"))?;
    let mult: u64 = match t[digits..].trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1000,
        "MB" => 1000u64.pow(2),
        "GB" => 1000u64.pow(3),
        "TB" => 1000u64.pow(4),
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        other => {
            return Err(format!(
                "{s:?}: unknown unit {other:?} (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
            ));
        }
    };
    n.checked_mul(mult).ok_or_else(|| format!("{s:?}: size too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "5", "m", "5x", "five minutes", "-5s", "1.5s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("50GiB"), Ok(50 << 30));
        assert_eq!(parse_size("512MB"), Ok(512_000_000));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("3 KiB"), Ok(3072));
        for bad in ["", "GiB", "5 parsecs", "-1", "99999999999999999999TiB"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }
}
