//! `berth failures`: the recent failures of a running berth, fetched from its
//! `/_berth/failures` (with the person's filters in the query) and laid out
//! as a table for a person at a terminal.

use serde::Deserialize;
use thiserror::Error;

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
    /// `ip:port`, or `-` when unknown.
    #[serde(default)]
    pub client: Option<String>,
    #[serde(default)]
    pub identity: Option<String>,
    pub request_id: String,
    pub hint: String,
}

#[derive(Debug, Error)]
pub enum FetchError {
    #[error("{url:?} is not a URL: {source}")]
    BadUrl { url: String, source: url::ParseError },
    #[error("cannot reach {url}: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    /// The berth refused the filter (a 400): its message names the parameter.
    #[error("{message}")]
    Refused { message: String },
    #[error("{url} answered {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: not a failures report: {reason}")]
    NotReport { url: String, reason: String },
}

impl FetchError {
    /// The person asked for something wrong (exit 2), rather than the berth
    /// failing to answer.
    pub fn is_usage(&self) -> bool {
        matches!(self, FetchError::BadUrl { .. } | FetchError::Refused { .. })
    }
}

/// `/_berth/failures` of the berth at `base` (e.g. `http://127.0.0.1:5001`),
/// with the non-empty filters as its query.
pub fn report_url(base: &str, filters: &[(&str, &str)]) -> Result<url::Url, FetchError> {
    let text = format!("{}/_berth/failures", base.trim_end_matches('/'));
    let mut url = url::Url::parse(&text).map_err(|source| FetchError::BadUrl {
        url: base.to_string(),
        source,
    })?;
    let given: Vec<_> = filters.iter().filter(|(_, v)| !v.is_empty()).collect();
    if !given.is_empty() {
        let mut query = url.query_pairs_mut();
        for (name, value) in given {
            query.append_pair(name, value);
        }
    }
    Ok(url)
}

/// The report as the berth sent it (JSON text).
pub async fn fetch_text(url: &url::Url) -> Result<String, FetchError> {
    let shown = url.to_string();
    let unreachable = |source| FetchError::Unreachable {
        url: shown.clone(),
        source,
    };
    let resp = reqwest::get(url.clone()).await.map_err(unreachable)?;
    let status = resp.status();
    let text = resp.text().await.map_err(unreachable)?;
    if status == reqwest::StatusCode::BAD_REQUEST {
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(text);
        return Err(FetchError::Refused { message });
    }
    if !status.is_success() {
        return Err(FetchError::Status {
            url: shown,
            status: status.as_u16(),
        });
    }
    Ok(text)
}

/// Fetch and read the report.
pub async fn fetch(url: &url::Url) -> Result<Report, FetchError> {
    let text = fetch_text(url).await?;
    serde_json::from_str(&text).map_err(|e| FetchError::NotReport {
        url: url.to_string(),
        reason: e.to_string(),
    })
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

fn cause_hint(cause: &str) -> Option<&'static str> {
    crate::failure::FailureCause::from_name(cause).map(crate::failure::FailureCause::hint)
}

/// The address of a client without its port: the node a person looks for.
fn client_ip(client: &str) -> String {
    client
        .parse::<std::net::SocketAddr>()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| client.to_string())
}

/// The table; `filter` describes what was asked for (`client 10.0.0.7,
/// image busybox`), `None` when everything was.
pub fn render(report: &Report, now_ms: u64, filter: Option<&str>) -> String {
    let today = now_ms / 1000 / 86_400;
    let mut out = String::new();
    if report.failures.is_empty() {
        match filter {
            Some(f) => out.push_str(&format!("No failures match {f}.\n")),
            None => out.push_str("No failed pulls recorded.\n"),
        }
        return out;
    }
    // CLIENT and IDENTITY only when some row has one: an old berth sends no
    // client, and most berths check no identities.
    let with_client = report
        .failures
        .iter()
        .any(|f| f.client.as_deref().is_some_and(|c| c != "-"));
    let with_identity = report
        .failures
        .iter()
        .any(|f| f.identity.as_deref().is_some_and(|i| i != "anonymous"));
    let mut header = vec!["TIME", "CAUSE", "UPSTREAM", "GOT", "SENT", "TRIES"];
    header.extend(with_client.then_some("CLIENT"));
    header.extend(with_identity.then_some("IDENTITY"));
    header.extend(["IMAGE", "REQUEST"]);
    let dash = || "-".to_string();
    let rows: Vec<Vec<String>> = report
        .failures
        .iter()
        .map(|f| {
            let image = match (&f.repository, &f.reference) {
                (Some(r), Some(t)) if t.starts_with("sha256:") => format!("{r}@{}", fit(t, 19)),
                (Some(r), Some(t)) => format!("{r}:{t}"),
                (Some(r), None) => r.clone(),
                _ => dash(),
            };
            let mut row = vec![
                when(f.at_unix_ms, today),
                f.cause.clone(),
                f.upstream.clone().unwrap_or_else(dash),
                f.upstream_status.map(|s| s.to_string()).unwrap_or_else(dash),
                f.status.to_string(),
                f.attempts.to_string(),
            ];
            if with_client {
                // 39: the longest IPv6 address.
                row.push(fit(&f.client.as_deref().map(client_ip).unwrap_or_else(dash), 39));
            }
            if with_identity {
                row.push(fit(f.identity.as_deref().unwrap_or("-"), 24));
            }
            row.extend([fit(&image, 48), f.request_id.clone()]);
            row
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
    out.push_str(&line(header.clone()));
    for r in &rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out.push_str("(GOT: the upstream's status; SENT: the status the client got; TRIES: upstream attempts)\n");
    if let Some(f) = filter {
        let n = report.failures.len();
        out.push_str(&format!(
            "{n} recent failure{} match {f}.\n",
            if n == 1 { "" } else { "s" }
        ));
    }
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
            // A cause the filter left out of the rows has its hint all the same.
            .or_else(|| cause_hint(cause))
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
        let text = render(&report, 1_795_400_000_000, None);
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

    fn row(client: &str, identity: Option<&str>) -> serde_json::Value {
        serde_json::json!({
            "at_unix_ms": 0, "cause": "manifest_unknown", "upstream": "docker.io", "upstream_status": 404,
            "repository": "library/busybox", "reference": "nope", "status": 404, "attempts": 1,
            "client": client, "identity": identity, "request_id": "r1", "hint": "h"
        })
    }

    #[test]
    fn client_and_identity_columns_only_when_known() {
        let report: Report = serde_json::from_value(serde_json::json!({
            "failures": [row("[fd00::1234:5678:9abc:def0]:50123", None), row("10.0.0.7:4242", Some("ci-bot"))],
            "counts": {"manifest_unknown": 2}
        }))
        .unwrap();
        let text = render(&report, 0, Some("client 10.0.0.0/8"));
        let mut lines = text.lines();
        let header = lines.next().unwrap();
        assert!(
            header.contains("  CLIENT  ") && header.contains("  IDENTITY  "),
            "{text}"
        );
        let (v6, v4) = (lines.next().unwrap(), lines.next().unwrap());
        assert!(
            v6.contains("fd00::1234:5678:9abc:def0  ") && !v6.contains("50123"),
            "{text}"
        );
        assert!(v4.contains("10.0.0.7  ") && v4.contains("ci-bot"), "{text}");
        // Columns line up: IMAGE starts at the same place in every line.
        let at = header.find("IMAGE").unwrap();
        assert_eq!(v6.find("library/busybox"), Some(at), "{text}");
        assert_eq!(v4.find("library/busybox"), Some(at), "{text}");
        assert!(text.contains("2 recent failures match client 10.0.0.0/8."), "{text}");

        let unknown: Report = serde_json::from_value(serde_json::json!({
            "failures": [row("-", None), row("-", Some("anonymous"))], "counts": {}
        }))
        .unwrap();
        let header = render(&unknown, 0, None).lines().next().unwrap().to_string();
        assert!(!header.contains("CLIENT") && !header.contains("IDENTITY"), "{header}");
    }

    #[test]
    fn empty_reports() {
        let none: Report =
            serde_json::from_value(serde_json::json!({"failures": [], "counts": {"internal": 1}})).unwrap();
        assert_eq!(render(&none, 0, None), "No failed pulls recorded.\n");
        assert_eq!(
            render(&none, 0, Some("image busybox")),
            "No failures match image busybox.\n"
        );
    }

    #[test]
    fn urls_carry_the_given_filters() {
        let url = report_url(
            "http://127.0.0.1:5001/",
            &[("client", "10.0.0.7"), ("image", ""), ("image", "a/b:1")],
        );
        assert_eq!(
            url.unwrap().as_str(),
            "http://127.0.0.1:5001/_berth/failures?client=10.0.0.7&image=a%2Fb%3A1"
        );
        assert_eq!(
            report_url("http://h:1", &[]).unwrap().as_str(),
            "http://h:1/_berth/failures"
        );
        let bad = report_url("not a url", &[]).unwrap_err();
        assert!(bad.is_usage(), "{bad}");
    }
}
