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
    let Some(n) = v.as_u64() else {
        return "–".to_string();
    };
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", units[unit])
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
#upstreams,#failures{grid-column:1/-1}header .ok{color:#8ee6b0}header .bad{color:#ffb3b3}";

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
    html.push_str(&format!(
        "<header><h1>berth {}</h1><p>{state} · up {}</p></header><main>",
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
    }

    #[test]
    fn sizes_read_as_a_person_reads_them() {
        assert_eq!(bytes(&serde_json::json!(512)), "512 B");
        assert_eq!(bytes(&serde_json::json!(1536)), "1.5 KiB");
        assert_eq!(bytes(&serde_json::json!(50u64 << 30)), "50.0 GiB");
        assert_eq!(percent(&serde_json::json!(0.5)), "50 %");
        assert_eq!(percent(&serde_json::Value::Null), "–");
    }
}
