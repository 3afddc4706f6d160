//! The report for a person (a table grouped by what was checked, a hint
//! under each failure or warning) and as JSON (the same steps).

use std::fmt::Write as _;

use super::{Outcome, Report};

const STEP_WIDTH: usize = 28;

pub fn table(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<STEP_WIDTH$} {:<6} {:>7}  {:<20} DETAIL",
        "STEP", "RESULT", "TIME", "CAUSE"
    );
    let mut group = None;
    for step in &report.steps {
        if group != Some(&step.group) {
            let _ = writeln!(out, "{}", step.group);
            group = Some(&step.group);
        }
        let cause = step.cause.map(|c| c.name()).unwrap_or("-");
        let time = format!("{} ms", step.elapsed_ms);
        let _ = writeln!(
            out,
            "  {:<w$} {:<6} {:>7}  {:<20} {}",
            step.step,
            step.result.as_str(),
            time,
            cause,
            step.detail,
            w = STEP_WIDTH - 2
        );
        if matches!(step.result, Outcome::Fail | Outcome::Warn)
            && let Some(hint) = step.hint
        {
            let _ = writeln!(
                out,
                "  {:<w$} hint: {hint}",
                "",
                w = STEP_WIDTH + 1 + 6 + 1 + 7 + 2 + 20 - 2
            );
        }
    }
    let count = |o: Outcome| report.steps.iter().filter(|s| s.result == o).count();
    let _ = writeln!(
        out,
        "{}: {} passed, {} failed, {} warnings, {} info, {} skipped",
        if report.ok { "ok" } else { "problems found" },
        count(Outcome::Pass),
        count(Outcome::Fail),
        count(Outcome::Warn),
        count(Outcome::Info),
        count(Outcome::Skip),
    );
    out
}

pub fn json(report: &Report) -> String {
    // Plain data with string keys: serialising it cannot fail.
    serde_json::to_string_pretty(report).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

#[cfg(test)]
mod tests {
    use super::super::Step;
    use super::*;
    use crate::failure::FailureCause;

    #[test]
    fn failures_carry_their_hint_and_the_summary_counts() {
        let step = |result, cause: Option<FailureCause>| Step {
            group: "upstream docker.io http://127.0.0.1:1".into(),
            step: "tcp".into(),
            result,
            cause,
            category: cause.map(FailureCause::category),
            hint: cause.map(FailureCause::hint),
            detail: "d".into(),
            elapsed_ms: 3,
        };
        let report = Report {
            ok: false,
            steps: vec![
                step(Outcome::Fail, Some(FailureCause::ConnectionRefused)),
                step(Outcome::Skip, None),
            ],
        };
        let text = table(&report);
        assert!(text.contains("connection_refused"), "{text}");
        assert!(
            text.contains(&format!("hint: {}", FailureCause::ConnectionRefused.hint())),
            "{text}"
        );
        assert!(
            text.ends_with("problems found: 0 passed, 1 failed, 0 warnings, 0 info, 1 skipped\n"),
            "{text}"
        );
        let v: serde_json::Value = serde_json::from_str(&json(&report)).unwrap();
        assert_eq!(v["steps"][0]["cause"], "connection_refused");
        assert_eq!(v["steps"][0]["category"], "network");
        assert_eq!(v["steps"][1]["result"], "skip");
    }
}
