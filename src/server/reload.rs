//! SIGHUP: read the config again from where it came from at start, validate
//! it as at start (every problem at once), and put what can change while
//! serving in force for the requests that start from then on: the
//! `[[upstream]]` set (routing table and clients; an unchanged upstream keeps
//! its client, circuit breaker and tokens), `[auth]` and `[[access]]` (the
//! htpasswd file read now) and the TLS files. Requests in flight finish on
//! what they started with. An invalid config changes nothing. Keys that
//! only a restart applies are named in a warning each.

use std::sync::Arc;

use thiserror::Error;

use crate::api::{AppState, Live};
use crate::config::{Config, ConfigError, ConfigSource, TlsConfig};
use crate::metrics::ReloadOutcome;
use crate::upstream::{Upstream, UpstreamError};

#[derive(Debug, Error)]
enum ReloadError {
    /// Shown without the file's lines: a syntax error's excerpt could be a
    /// password's line.
    #[error("{}", without_source_lines(&.0.to_string()))]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Auth(#[from] crate::auth::StartError),
    #[error("cannot set up upstream {name}: {source}")]
    Upstream { name: String, source: UpstreamError },
    #[error("the reload task failed: {0}")]
    Task(String),
}

/// What a reload found changed, for its log line and the status page.
#[derive(Debug, Default)]
struct Changes {
    added: Vec<String>,
    removed: Vec<String>,
    changed: Vec<String>,
    /// Users in the htpasswd file read now; None when `[auth]` was kept.
    auth: Option<usize>,
}

impl Changes {
    fn summary(&self) -> String {
        let list = |v: &[String]| if v.is_empty() { "none".to_string() } else { v.join(", ") };
        let auth = match self.auth {
            Some(users) => format!("auth reloaded ({users} htpasswd users)"),
            None => "auth unchanged".to_string(),
        };
        format!(
            "upstreams added: {}; removed: {}; changed: {}; {auth}",
            list(&self.added),
            list(&self.removed),
            list(&self.changed)
        )
    }
}

/// Reload on SIGHUP. `tls_files` and `tls` are the accept loop's: new
/// connections get the acceptor left there.
pub(super) async fn reload(
    state: &AppState,
    source: &ConfigSource,
    tls_files: &mut Option<TlsConfig>,
    tls: &mut Option<tokio_rustls::TlsAcceptor>,
) {
    let outcome = match apply(state, source, tls_files, tls).await {
        Ok(changes) => {
            let summary = changes.summary();
            tracing::info!(
                upstreams_added = ?changes.added,
                upstreams_removed = ?changes.removed,
                upstreams_changed = ?changes.changed,
                auth_reloaded = changes.auth.is_some(),
                htpasswd_users = changes.auth,
                summary = %summary,
                "SIGHUP: config reloaded"
            );
            ReloadOutcome {
                at_unix_ms: crate::events::now_ms(),
                ok: true,
                summary,
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "SIGHUP: config reload failed; still serving the previous config");
            ReloadOutcome {
                at_unix_ms: crate::events::now_ms(),
                ok: false,
                summary: e.to_string(),
            }
        }
    };
    state.events.metrics.reloaded(outcome);
}

async fn apply(
    state: &AppState,
    source: &ConfigSource,
    tls_files: &mut Option<TlsConfig>,
    tls: &mut Option<tokio_rustls::TlsAcceptor>,
) -> Result<Changes, ReloadError> {
    let old = state.live();
    // Reading the files (config, password files, htpasswd) is blocking I/O.
    let (src, old_auth, auth_was_on) = (source.clone(), old.auth.clone(), state.config.auth.is_some());
    let (next, auth) = tokio::task::spawn_blocking(move || -> Result<_, ReloadError> {
        let next = src.load()?;
        // Turning access control on or off also changes how the cache
        // scopes content by repository, which is set at start.
        let auth = match next.auth.is_some() == auth_was_on {
            true => Some(Arc::new(old_auth.reloaded(next.auth.as_ref(), &next.access)?)),
            false => None,
        };
        Ok((next, auth))
    })
    .await
    .map_err(|e| ReloadError::Task(e.to_string()))??;

    let (upstreams, mut changes) = next_upstreams(&old.upstreams, &next.upstreams, &state.events)?;

    let mut restart = needs_restart(&state.config, &next);
    let auth = match auth {
        Some(a) => {
            changes.auth = Some(a.users());
            a
        }
        None => {
            restart.push("auth");
            old.auth.clone()
        }
    };
    match (tls_files.as_ref(), next.tls.as_ref()) {
        (Some(_), Some(files)) => {
            if super::reload_tls(files, tls) {
                *tls_files = Some(files.clone());
            }
        }
        (None, None) => {}
        _ => restart.push("tls"),
    }
    for key in restart {
        tracing::warn!(key, "SIGHUP: {key} needs a restart; still using the old value");
    }
    if let Some(warning) = super::exposure_warning(&next) {
        tracing::warn!("{warning}");
    }
    state.swap_live(Live { upstreams, auth });
    Ok(changes)
}

/// The upstream clients for `configs`: an unchanged one is the one in use
/// (its breaker, tokens and rate-limit window go on), others are new.
fn next_upstreams(
    old: &[Arc<Upstream>],
    configs: &[crate::config::UpstreamConfig],
    events: &Arc<crate::events::Events>,
) -> Result<(Vec<Arc<Upstream>>, Changes), ReloadError> {
    let mut changes = Changes::default();
    let mut upstreams = Vec::with_capacity(configs.len());
    for cfg in configs {
        match old.iter().find(|u| u.name == cfg.name) {
            Some(u) if u.config == *cfg => upstreams.push(u.clone()),
            found => {
                let fresh = Upstream::new(cfg, events.clone()).map_err(|source| ReloadError::Upstream {
                    name: cfg.name.clone(),
                    source,
                })?;
                match found {
                    Some(_) => changes.changed.push(cfg.name.clone()),
                    None => changes.added.push(cfg.name.clone()),
                }
                upstreams.push(Arc::new(fresh));
            }
        }
    }
    changes.removed = old
        .iter()
        .filter(|u| !configs.iter().any(|c| c.name == u.name))
        .map(|u| u.name.clone())
        .collect();
    Ok((upstreams, changes))
}

/// A config error without the excerpt of the file a TOML syntax error
/// carries (lines like `3 | password = "…`).
fn without_source_lines(message: &str) -> String {
    let excerpt = |line: &str| {
        let t = line.trim_start();
        let digits = t.chars().take_while(char::is_ascii_digit).count();
        t.starts_with('|') || (digits > 0 && t[digits..].trim_start().starts_with('|'))
    };
    message.lines().filter(|l| !excerpt(l)).collect::<Vec<_>>().join("\n")
}

/// The keys whose new value only a restart applies, by their dotted names.
fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let s = (&old.server, &new.server);
    let checks = [
        ("listen", old.listen != new.listen),
        ("admin_listen", old.admin_listen != new.admin_listen),
        ("cache_dir", old.cache_dir != new.cache_dir),
        ("log_format", old.log_format != new.log_format),
        ("cache.max_size", old.max_size != new.max_size),
        ("cache.tag_ttl", old.tag_ttl != new.tag_ttl),
        ("cache.finish_abandoned", old.finish_abandoned != new.finish_abandoned),
        ("server.header_timeout", s.0.header_timeout != s.1.header_timeout),
        ("server.idle_timeout", s.0.idle_timeout != s.1.idle_timeout),
        (
            "server.handshake_timeout",
            s.0.handshake_timeout != s.1.handshake_timeout,
        ),
        ("server.write_timeout", s.0.write_timeout != s.1.write_timeout),
        ("server.shutdown_grace", s.0.shutdown_grace != s.1.shutdown_grace),
        ("server.max_connections", s.0.max_connections != s.1.max_connections),
        (
            "server.max_connections_per_client",
            s.0.max_connections_per_client != s.1.max_connections_per_client,
        ),
        (
            "server.client_requests_per_second",
            s.0.client_requests_per_second != s.1.client_requests_per_second,
        ),
        ("server.client_burst", s.0.client_burst != s.1.client_burst),
        ("prefetch", old.prefetch != new.prefetch),
        ("storage", old.s3 != new.s3),
        ("cluster", old.cluster != new.cluster),
        ("cache.keep_recent", old.keep_recent != new.keep_recent),
    ];
    checks
        .into_iter()
        .filter(|(_, changed)| *changed)
        .map(|(k, _)| k)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overrides;

    fn config(text: &str) -> Config {
        Config::from_toml(text, "test", Overrides::default()).unwrap()
    }

    #[test]
    fn restart_keys_are_named_and_the_rest_is_not() {
        let up = "[[upstream]]\nname = \"docker.io\"\nendpoints = [\"https://a\"]\ndefault = true\n";
        let old = config(&format!("listen = \"127.0.0.1:1\"\n{up}"));
        let same_but_upstream = config(
            "listen = \"127.0.0.1:1\"\n[[upstream]]\nname = \"docker.io\"\nendpoints = [\"https://b\"]\ndefault = true\n",
        );
        assert!(needs_restart(&old, &same_but_upstream).is_empty());
        let moved = config(&format!(
            "listen = \"127.0.0.1:2\"\n[cache]\ntag_ttl = \"1m\"\n[server]\nmax_connections = 7\n{up}"
        ));
        assert_eq!(
            needs_restart(&old, &moved),
            ["listen", "cache.tag_ttl", "server.max_connections"]
        );
    }

    fn upstream(name: &str, endpoint: &str, password: &str) -> String {
        format!(
            "[[upstream]]\nname = \"{name}\"\nendpoints = [\"{endpoint}\"]\nusername = \"u\"\npassword = \"{password}\"\n"
        )
    }

    #[test]
    fn an_unchanged_upstream_keeps_its_client_and_the_others_are_new() {
        let events = Arc::new(crate::events::Events::default());
        let before = config(&format!(
            "{}{}{}",
            upstream("docker.io", "https://a", "p"),
            upstream("ghcr.io", "https://g", "p"),
            upstream("quay.io", "https://q", "p")
        ));
        let old: Vec<Arc<Upstream>> = before
            .upstreams
            .iter()
            .map(|c| Arc::new(Upstream::new(c, events.clone()).unwrap()))
            .collect();
        // docker.io's password rotated, ghcr.io as it was, quay.io gone, gcr.io new.
        let after = config(&format!(
            "{}{}{}",
            upstream("ghcr.io", "https://g", "p"),
            upstream("docker.io", "https://a", "rotated"),
            upstream("gcr.io", "https://c", "p")
        ));
        let (next, changes) = next_upstreams(&old, &after.upstreams, &events).unwrap();
        let names: Vec<&str> = next.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["ghcr.io", "docker.io", "gcr.io"], "in the new order");
        assert!(Arc::ptr_eq(&next[0], &old[1]), "ghcr.io keeps its client");
        assert!(!Arc::ptr_eq(&next[1], &old[0]), "docker.io's credentials changed");
        assert_eq!(
            next[1].config.credentials.as_ref().map(|c| c.password.as_str()),
            Some("rotated")
        );
        assert_eq!(
            (changes.added, changes.removed, changes.changed),
            (
                vec!["gcr.io".to_string()],
                vec!["quay.io".to_string()],
                vec!["docker.io".to_string()]
            )
        );
    }

    #[test]
    fn a_syntax_error_is_shown_without_the_line_it_is_on() {
        let e = Config::from_toml(
            "[[upstream]]\npassword = \"hunter2\nname = 1\n",
            "f.toml",
            Overrides::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("hunter2"), "the excerpt is there to strip: {e}");
        let shown = ReloadError::from(e).to_string();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("f.toml") && shown.contains("line 2"), "{shown}");
    }

    #[test]
    fn the_summary_names_what_changed() {
        let c = Changes {
            added: vec!["ghcr.io".into()],
            removed: vec![],
            changed: vec!["docker.io".into()],
            auth: Some(2),
        };
        assert_eq!(
            c.summary(),
            "upstreams added: ghcr.io; removed: none; changed: docker.io; auth reloaded (2 htpasswd users)"
        );
    }
}
