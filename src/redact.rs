//! Secrets that ride inside URLs, kept out of what berth prints: the
//! `user:password@` of an endpoint URL, and the query string of any URL in an
//! error message (a CDN's signed redirect, `?X-Amz-Signature=…`, is a
//! credential for as long as it is valid). Pure string work on ASCII markers,
//! so it never splits a character and never fails.

/// What replaces the userinfo of a URL.
pub const USERINFO: &str = "<redacted>@";
/// What replaces the query (and fragment) of a URL in a message.
pub const QUERY: &str = "?<redacted>";

/// `scheme://user:pass@host/…` → `scheme://<redacted>@host/…`; anything else
/// (no userinfo, not a URL) unchanged.
pub fn userinfo(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}{USERINFO}{}", &url[..start], &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// Every `http://` / `https://` URL in `text` with its userinfo and its
/// query string redacted. A URL ends at whitespace or a character that
/// cannot appear unescaped in one (`"`, `'`, `<`, `>`, `` ` ``, `)`),
/// which covers reqwest's "for url (…)" and Debug quoting.
pub fn message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = find_scheme(rest) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`' | ')'))
            .unwrap_or(tail.len());
        out.push_str(&url(&tail[..end]));
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// One URL: userinfo and query (with any fragment) redacted.
fn url(u: &str) -> String {
    let u = userinfo(u);
    match u.find(['?', '#']) {
        Some(q) => format!("{}{QUERY}", &u[..q]),
        None => u,
    }
}

fn find_scheme(s: &str) -> Option<usize> {
    let lower = s.to_ascii_lowercase();
    match (lower.find("http://"), lower.find("https://")) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_redacted() {
        let cases = [
            (
                "https://bob:hunter2@mirror.example/v2",
                "https://<redacted>@mirror.example/v2",
            ),
            ("https://bob@mirror.example", "https://<redacted>@mirror.example"),
            ("http://a:b@c@h:5000/x?y@z", "http://<redacted>@h:5000/x?y@z"),
            ("https://mirror.example/a@b", "https://mirror.example/a@b"),
            ("https://mirror.example", "https://mirror.example"),
            ("not a url", "not a url"),
        ];
        for (input, want) in cases {
            assert_eq!(userinfo(input), want, "{input}");
        }
    }

    #[test]
    fn queries_and_userinfo_in_messages_are_redacted() {
        let cases = [
            (
                "error sending request for url (https://cdn.example/blob?X-Amz-Signature=abc&X-Amz-Credential=AKIA)",
                "error sending request for url (https://cdn.example/blob?<redacted>)",
            ),
            (
                "GET \"http://u:p@h/x?sig=1#frag\" failed; then HTTPS://h2/y?t=2 too",
                "GET \"http://<redacted>@h/x?<redacted>\" failed; then HTTPS://h2/y?<redacted> too",
            ),
            ("no url here? none", "no url here? none"),
            ("https://h/plain", "https://h/plain"),
            ("ünïcode https://h/ä?ö=ü ende", "ünïcode https://h/ä?<redacted> ende"),
        ];
        for (input, want) in cases {
            assert_eq!(message(input), want, "{input}");
        }
    }
}
