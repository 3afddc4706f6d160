//! `berth failures`: the recent failures of a running berth, fetched from its
//! `/_berth/failures` and laid out as a table for a person at a terminal.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct Report {
    pub failures: Vec<Entry>,
    pub counts: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug, Deserialize)]
pub struct Entry {
    pub at_unix_ms: u64,
    pub cause: String,
    pub upstream: Option<String>,
    pub upstream_status: Option<u16>,
    pub repository: Option<String>,
    pub reference: Option<String>,
    pub status: u16,
    pub attempts: u32,
    pub request_id: String,
    pub hint: String,
}

/// Fetch the report from a berth at `base` (e.g. `http://127.0.0.1:5000`).
pub async fn fetch(base: &str) -> Result<Report, String> {
    let url = format!("{}/_berth/failures", base.trim_end_matches('/'));
    let resp = reqwest::get(&url)
        .await
        .map_err(|e| format!("cannot reach {url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("{url} answered {}", resp.status()));
    }
    resp.json()
        .await
        .map_err(|e| format!("{url}: not a failures report: {e}"))
}

/// Cut `s` to `width` characters, marking the cut.
fn fit(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// `HH:MM:SS` (UTC) of a Unix time in milliseconds, with the date when it is
/// not `today` (days since the epoch).
fn when(ms: u64, today: u64) -> String {
    let secs = ms / 1000;
    let days = secs / 86_400;
    let t = secs % 86_400;
    let time = format!("{:02}:{:02}:{:02}", t / 3600, t % 3600 / 60, t % 60);
    if days == today {
        return time;
    }
    let (y, m, d) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{d:02} {time}")
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

pub fn render(report: &Report, now_ms: u64) -> String {
    let today = now_ms / 1000 / 86_400;
    let mut out = String::new();
    if report.failures.is_empty() {
        out.push_str("No failed pulls recorded.\n");
        return out;
    }
    let header = ["TIME", "CAUSE", "UPSTREAM", "GOT", "SENT", "TRIES", "IMAGE", "REQUEST"];
    let rows: Vec<[String; 8]> = report
        .failures
        .iter()
        .map(|f| {
            let image = match (&f.repository, &f.reference) {
                (Some(r), Some(t)) if t.starts_with("sha256:") => format!("{r}@{}", fit(t, 19)),
                (Some(r), Some(t)) => format!("{r}:{t}"),
                (Some(r), None) => r.clone(),
                _ => "-".into(),
            };
            [
                when(f.at_unix_ms, today),
                f.cause.clone(),
                f.upstream.clone().unwrap_or_else(|| "-".into()),
                f.upstream_status.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
                f.status.to_string(),
                f.attempts.to_string(),
                fit(&image, 48),
                f.request_id.clone(),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}", w = *w))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    out.push_str(&line(header.to_vec()));
    for r in &rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out.push_str("(GOT: the upstream's status; SENT: the status the client got; TRIES: upstream attempts)\n");
    out.push_str("\nFailures by cause since start:\n");
    let mut counts: Vec<(&String, &u64)> = report.counts.iter().collect();
    counts.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let cause_width = counts.iter().map(|(c, _)| c.len()).max().unwrap_or(0);
    for (cause, n) in counts {
        let hint = report
            .failures
            .iter()
            .find(|f| &f.cause == cause)
            .map(|f| f.hint.as_str())
            .unwrap_or("");
        out.push_str(&format!("  {cause:<cause_width$}  {n:>5}  {hint}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_rows_counts_and_hints() {
        let report: Report = serde_json::from_value(serde_json::json!({
            "failures": [{
                "at_unix_ms": 1_795_400_000_000u64, "cause": "rate_limited", "upstream": "docker.io",
                "upstream_status": 429, "repository": "library/busybox", "reference": "latest",
                "status": 429, "attempts": 4, "request_id": "abc123",
                "hint": "upstream rate limit: authenticate or pull less", "extra": "ignored"
            }],
            "counts": {"rate_limited": 3, "manifest_unknown": 1}
        }))
        .unwrap();
        let text = render(&report, 1_795_400_000_000);
        let mut lines = text.lines();
        let header = lines.next().unwrap();
        assert!(header.starts_with("TIME") && header.contains("CAUSE"), "{text}");
        let row = lines.next().unwrap();
        for cell in ["rate_limited", "docker.io", "429", "library/busybox:latest", "abc123"] {
            assert!(row.contains(cell), "{cell} in {row}");
        }
        let count_line = text
            .lines()
            .find(|l| l.trim_start().starts_with("rate_limited"))
            .unwrap();
        assert!(count_line.contains(" 3  upstream rate limit"), "{text}");
        assert!(text.find("rate_limited      ").unwrap() < text.find("manifest_unknown  ").unwrap());
    }

    #[test]
    fn dates_other_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_780), (2026, 11, 23));
        assert_eq!(when(86_400_000 + 3_661_000, 5), "1970-01-02 01:01:01");
        assert_eq!(when(86_400_000 + 3_661_000, 1), "01:01:01");
    }
}
