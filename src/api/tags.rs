//! `GET /v2/<name>/tags/list` with `n` / `last` pagination and a `Link` header.
//! berth fetches the whole list from the upstream and paginates itself, so
//! the links it hands out name its own paths, not the upstream's.

use axum::Json;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::Request;
use super::errors::{ApiError, Code, Subject};
use crate::failure::FailureCause;

/// Largest page a client may ask for; Distribution's own bound.
const MAX_PAGE: usize = 10_000;

#[derive(Serialize)]
struct TagList<'a> {
    name: &'a str,
    tags: Vec<String>,
}

pub async fn list(req: &Request<'_>, name: &str) -> Result<Response, ApiError> {
    let (client_name, route) = req.route(name)?;
    let n = match req.query_param("n") {
        None => None,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n <= MAX_PAGE => Some(n),
            _ => {
                return Err(ApiError::new(
                    Code::PaginationNumberInvalid,
                    FailureCause::InvalidRequest,
                    format!("n={v:?} must be a number from 0 to {MAX_PAGE}"),
                ));
            }
        },
    };
    let last = req.query_param("last");
    let what = format!("tags of {}", route.repo);
    let mut tags = req
        .state
        .cache
        .tags(&route)
        .await
        .map_err(|e| ApiError::from_cache(e, Subject::Tags, &what))?;
    tags.sort();
    tags.dedup();
    let (page, more) = paginate(tags, last.as_deref(), n);
    let link = match (&more, n) {
        (true, Some(n)) => page.last().map(|l| {
            let mut q = url::form_urlencoded::Serializer::new(String::new());
            q.append_pair("n", &n.to_string()).append_pair("last", l);
            if let Some(ns) = req.query_param("ns") {
                q.append_pair("ns", &ns);
            }
            format!("</v2/{client_name}/tags/list?{}>; rel=\"next\"", q.finish())
        }),
        _ => None,
    };
    let mut resp = Json(TagList {
        name: client_name.as_str(),
        tags: page,
    })
    .into_response();
    if let Some(v) = link.and_then(|l| HeaderValue::from_str(&l).ok()) {
        resp.headers_mut().insert(header::LINK, v);
    }
    Ok(resp)
}

/// Tags after `last` (lexically), at most `n`; and whether more follow.
fn paginate(sorted: Vec<String>, last: Option<&str>, n: Option<usize>) -> (Vec<String>, bool) {
    let after: Vec<String> = sorted
        .into_iter()
        .filter(|t| last.is_none_or(|l| t.as_str() > l))
        .collect();
    match n {
        Some(n) if after.len() > n => (after[..n].to_vec(), true),
        _ => (after, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn pages() {
        let all = tags(&["a", "b", "c", "d"]);
        assert_eq!(paginate(all.clone(), None, Some(2)), (tags(&["a", "b"]), true));
        assert_eq!(paginate(all.clone(), Some("b"), Some(2)), (tags(&["c", "d"]), false));
        assert_eq!(paginate(all.clone(), Some("d"), Some(2)), (tags(&[]), false));
        assert_eq!(paginate(all.clone(), None, None), (all.clone(), false));
        assert_eq!(paginate(all, None, Some(0)), (tags(&[]), true));
    }
}
