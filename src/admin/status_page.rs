//! The status page at the admin listener's `/`: server-rendered HTML from the
//! same value `/_berth/status` serves, no script (the browser reloads it every
//! 10 s), one column on a phone, a grid on a wide screen. Every string from
//! outside (repository names, references, hints) is escaped.

use serde_json::Value;

/// `&`, `<`, `>`, `"` and `'` as entities: text and attribute safe.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => esc(s),
        Value::Null => "–".to_string(),
        other => esc(&other.to_string()),
    }
}

/// 1536 → "1.5 KiB".
fn bytes(v: &Value) -> String {
    match v.as_u64() {
        Some(n) => crate::units::format_size(n),
        None => "–".to_string(),
    }
}

fn percent(v: &Value) -> String {
    v.as_f64().map_or("–".to_string(), |r| format!("{:.0} %", r * 100.0))
}

fn uptime(secs: u64) -> String {
    let (d, h, m) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    match (d, h) {
        (0, 0) => format!("{m} min"),
        (0, _) => format!("{h} h {m} min"),
        _ => format!("{d} d {h} h"),
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;background:#f5f6f8;color:#1c1e21}\
header{background:#1f3a5f;color:#fff;padding:.8rem 1rem}header h1{margin:0;font-size:1.3rem}\
header p{margin:.2rem 0 0;opacity:.85;font-size:.9rem}\
main{display:grid;gap:1rem;padding:1rem;grid-template-columns:repeat(auto-fit,minmax(18rem,1fr))}\
section{background:#fff;border-radius:.5rem;padding:.8rem 1rem;box-shadow:0 1px 2px #0002;overflow-x:auto}\
h2{font-size:1rem;margin:.2rem 0 .6rem}table{border-collapse:collapse;width:100%;font-size:.9rem}\
td,th{text-align:left;padding:.25rem .4rem;border-bottom:1px solid #eee;vertical-align:top}\
.big{font-size:1.6rem;font-weight:600}.ok{color:#1a7f37}.bad{color:#cf222e}.hint{color:#57606a;font-size:.85rem}\
#upstreams,#failures,#inflight,#top-images{grid-column:1/-1}\
progress{width:6rem;vertical-align:middle}code{font-size:.85rem}header .ok{color:#8ee6b0}header .bad{color:#ffb3b3}";

pub fn render(s: &Value) -> String {
    let mut html = String::new();
    html.push_str("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">");
    html.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
    html.push_str("<meta http-equiv=\"refresh\" content=\"10\"><title>berth status</title>");
    html.push_str(&format!("<style>{STYLE}</style></head><body>"));
    let state = if s["stopping"].as_bool() == Some(true) {
        "<span class=\"bad\">stopping</span>"
    } else {
        "<span class=\"ok\">serving</span>"
    };
    let reloads = &s["config_reloads"];
    let reloaded = match &reloads["last"] {
        Value::Null => String::new(),
        last => format!(
            " · <span id=\"reloads\" class=\"{}\" title=\"{}\">config reloads: {} ok, {} failed</span>",
            if last["ok"].as_bool() == Some(true) {
                "ok"
            } else {
                "bad"
            },
            text(&last["summary"]),
            text(&reloads["ok"]),
            text(&reloads["failed"]),
        ),
    };
    html.push_str(&format!(
        "<header><h1>berth {}</h1><p>{state} · up {}{reloaded}</p></header><main>",
        text(&s["version"]),
        uptime(s["uptime_secs"].as_u64().unwrap_or(0))
    ));

    let cache = &s["cache"];
    let traffic = &s["traffic"];
    html.push_str(&format!(
        "<section id=\"cache\"><h2>Cache</h2><p class=\"big\">{} <span class=\"hint\">of {}</span></p>\
         <table><tr><th></th><th>hits</th><th>misses</th><th>hit ratio</th></tr>\
         <tr><td>manifests</td><td>{}</td><td>{}</td><td>{}</td></tr>\
         <tr><td>blobs</td><td>{}</td><td>{}</td><td>{}</td></tr></table></section>",
        bytes(&cache["used_bytes"]),
        bytes(&cache["max_bytes"]),
        text(&s["manifests"]["hits"]),
        text(&s["manifests"]["misses"]),
        percent(&s["manifests"]["hit_ratio"]),
        text(&s["blobs"]["hits"]),
        text(&s["blobs"]["misses"]),
        percent(&s["blobs"]["hit_ratio"]),
    ));
    html.push_str(&format!(
        "<section id=\"traffic\"><h2>Traffic</h2><p class=\"big\">{} <span class=\"hint\">saved</span></p>\
         <table><tr><td>served to clients</td><td>{}</td></tr><tr><td>fetched from upstreams</td><td>{}</td></tr></table></section>",
        bytes(&traffic["saved_bytes"]),
        bytes(&traffic["served_bytes"]),
        bytes(&traffic["fetched_bytes"]),
    ));

    html.push_str("<section id=\"upstreams\"><h2>Upstreams</h2><table><tr><th>upstream</th><th>state</th><th>rate limit</th><th>last failure</th></tr>");
    for u in s["upstreams"].as_array().into_iter().flatten() {
        let st = &u["state"];
        let circuit = if st["offline"].as_bool() == Some(true) {
            "<span class=\"bad\">offline</span>".to_string()
        } else if st["circuit_open"].is_null() {
            "<span class=\"ok\">up</span>".to_string()
        } else {
            format!("<span class=\"bad\">down ({})</span>", text(&st["circuit_open"]))
        };
        let window = st["rate_limited_secs"].as_u64().map_or(String::new(), |w| {
            format!("<br><span class=\"bad\">limited for {w} s</span>")
        });
        let headroom = match (u["ratelimit"]["remaining"].as_i64(), u["ratelimit"]["limit"].as_i64()) {
            (Some(r), Some(l)) => format!("{r} of {l} left"),
            _ => "not announced".to_string(),
        };
        let last = &u["last_failure"];
        let failure = if last.is_null() {
            "none".to_string()
        } else {
            format!(
                "{} <span class=\"hint\">{}:{}</span><br><span class=\"hint\">{}</span>",
                text(&last["cause"]),
                text(&last["repository"]),
                text(&last["reference"]),
                text(&last["hint"])
            )
        };
        html.push_str(&format!(
            "<tr><td>{}</td><td>{circuit}</td><td>{headroom}{window}</td><td>{failure}</td></tr>",
            text(&u["name"])
        ));
    }
    html.push_str("</table></section>");

    inflight_section(&mut html, s);
    top_images_section(&mut html, s);

    html.push_str("<section id=\"failures\"><h2>Failures, last hour</h2>");
    let failures: Vec<&Value> = s["failures_last_hour"].as_array().into_iter().flatten().collect();
    if failures.is_empty() {
        html.push_str("<p class=\"ok\">none</p>");
    } else {
        html.push_str("<table><tr><th>cause</th><th>count</th><th>what to do</th></tr>");
        for f in failures {
            html.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td class=\"hint\">{}</td></tr>",
                text(&f["cause"]),
                text(&f["count"]),
                text(&f["hint"])
            ));
        }
        html.push_str("</table>");
    }
    html.push_str(
        "<p class=\"hint\">Each failure: <code>berth failures --since 1h</code>; as JSON: <a href=\"/_berth/status\">/_berth/status</a></p></section>",
    );
    html.push_str("</main></body></html>");
    html
}

/// Fetches from upstreams under way: what, how far, who waits.
fn inflight_section(html: &mut String, s: &Value) {
    html.push_str("<section id=\"inflight\"><h2>Fetching from upstreams</h2>");
    let fetches: Vec<&Value> = s["inflight"].as_array().into_iter().flatten().collect();
    if fetches.is_empty() {
        html.push_str("<p class=\"hint\">nothing in flight</p></section>");
        return;
    }
    html.push_str("<table><tr><th>blob</th><th>repository</th><th>upstream</th><th>received</th><th>clients</th><th>age</th></tr>");
    for f in fetches {
        let received = &f["received_bytes"];
        let progress = match (received.as_u64(), f["expected_bytes"].as_u64()) {
            (Some(r), Some(e)) if e > 0 => format!(
                "{} of {} <progress value=\"{r}\" max=\"{e}\"></progress> {:.0} %",
                bytes(received),
                bytes(&f["expected_bytes"]),
                r as f64 * 100.0 / e as f64
            ),
            _ => format!("{} <span class=\"hint\">of an unknown size</span>", bytes(received)),
        };
        html.push_str(&format!(
            "<tr><td><code title=\"{}\">{}</code></td><td>{}</td><td>{}</td><td>{progress}</td><td>{}</td><td>{} s</td></tr>",
            text(&f["digest"]),
            text(&f["short_digest"]),
            text(&f["repository"]),
            text(&f["upstream"]),
            text(&f["clients"]),
            text(&f["age_secs"]),
        ));
    }
    html.push_str("</table></section>");
}

/// The most-pulled images since start.
fn top_images_section(html: &mut String, s: &Value) {
    html.push_str("<section id=\"top-images\"><h2>Top images</h2>");
    let images: Vec<&Value> = s["top_images"].as_array().into_iter().flatten().collect();
    if images.is_empty() {
        html.push_str("<p class=\"hint\">no pulls yet</p></section>");
        return;
    }
    html.push_str("<table><tr><th>image</th><th>upstream</th><th>pulls</th><th>last pulled</th></tr>");
    let now_ms = s["now_unix_ms"].as_u64();
    for i in images {
        let reference = i["reference"].as_str().unwrap_or_default();
        let sep = if reference.contains(':') { "@" } else { ":" };
        let ago = match (now_ms, i["last_pulled_unix_ms"].as_u64()) {
            (Some(now), Some(at)) => format!("{} s ago", now.saturating_sub(at) / 1000),
            _ => "–".to_string(),
        };
        html.push_str(&format!(
            "<tr><td>{}{sep}{}</td><td>{}</td><td>{}</td><td>{ago}</td></tr>",
            text(&i["repository"]),
            esc(reference),
            text(&i["upstream"]),
            text(&i["count"]),
        ));
    }
    html.push_str("</table></section>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_strings_are_escaped() {
        let s = serde_json::json!({
            "version": "1", "uptime_secs": 90061,
            "upstreams": [{"name": "<script>x</script>", "state": {"circuit_open": "connection_refused"},
                "ratelimit": {"limit": 100, "remaining": 5},
                "last_failure": {"cause": "manifest_unknown", "repository": "a\"b", "reference": "t'1", "hint": "x & y"}}],
            "failures_last_hour": [],
        });
        let html = render(&s);
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;x&lt;/script&gt;"));
        assert!(html.contains("a&quot;b") && html.contains("t&#39;1") && html.contains("x &amp; y"));
        assert!(html.contains("down (connection_refused)") && html.contains("5 of 100 left"));
        assert!(html.contains("up 1 d 1 h"), "{html}");
        assert!(
            html.contains("nothing in flight") && html.contains("no pulls yet"),
            "{html}"
        );
    }

    #[test]
    fn fetches_and_top_images_are_shown_escaped() {
        let s = serde_json::json!({
            "version": "1", "uptime_secs": 5, "now_unix_ms": 10_000,
            "inflight": [{"digest": "sha256:abc", "short_digest": "sha256:abc", "repository": "a<b",
                "upstream": "docker.io", "received_bytes": 1536, "expected_bytes": 3072, "clients": 2, "age_secs": 3},
                {"digest": "sha256:def", "short_digest": "sha256:def", "repository": "x", "upstream": "u",
                "received_bytes": 10, "expected_bytes": null, "clients": 1, "age_secs": 0}],
            "top_images": [{"upstream": "docker.io", "repository": "library/app", "reference": "1.0<",
                "count": 3, "last_pulled_unix_ms": 4_000}],
        });
        let html = render(&s);
        assert!(html.contains("a&lt;b") && !html.contains("a<b"), "{html}");
        assert!(html.contains("1.5 KiB of 3.0 KiB") && html.contains("50 %"), "{html}");
        assert!(html.contains("10 B <span class=\"hint\">of an unknown size"), "{html}");
        assert!(
            html.contains("library/app:1.0&lt;") && html.contains("<td>3</td>") && html.contains("6 s ago"),
            "{html}"
        );
    }

    #[test]
    fn sizes_read_as_a_person_reads_them() {
        assert_eq!(bytes(&serde_json::json!(512)), "512 B");
        assert_eq!(bytes(&serde_json::json!(1536)), "1.5 KiB");
        assert_eq!(bytes(&serde_json::json!(50u64 << 30)), "50.0 GiB");
        assert_eq!(bytes(&serde_json::json!((1u64 << 20) - 1)), "1.0 MiB");
        assert_eq!(bytes(&serde_json::json!(1023)), "1023 B");
        assert_eq!(percent(&serde_json::json!(0.5)), "50 %");
        assert_eq!(percent(&serde_json::Value::Null), "–");
    }
}
