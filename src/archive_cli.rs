//! `berth export` and `berth import` on the command line: `--config` works
//! on a stopped berth's cache (refused, naming `--url`, while one holds its
//! lock); `--url` asks a running berth's admin surface, which streams the
//! archive back (`GET /_berth/export`) or takes it as the request body
//! (`POST /_berth/import`). Progress on a terminal, plain lines otherwise;
//! a summary at the end. Exit 0 done, 1 refused or failed, 2 bad usage.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use berth::archive::{ArchiveError, ExportRequest, ExportSummary, ImportOptions, ImportSummary};
use berth::cache::{Cache, CacheError, WarmStep};
use berth::config::Config;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

/// The header carrying an export's summary (the body is the archive).
const SUMMARY_HEADER: &str = "x-berth-export-summary";

fn exit(e: &ArchiveError) -> ExitCode {
    eprintln!("berth: {e}");
    if e.is_usage() {
        ExitCode::from(2)
    } else {
        ExitCode::FAILURE
    }
}

/// Open the cache of `config` and its upstreams; refused naming `--url`.
async fn open(config: &Config, command: &str) -> Result<(Cache, Vec<Arc<berth::upstream::Upstream>>), String> {
    let events = Arc::new(berth::events::Events::default());
    let upstreams = config
        .upstreams
        .iter()
        .map(|u| berth::upstream::Upstream::new(u, events.clone()).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let cache = Cache::open(config, events).await.map_err(|e| match &e {
        CacheError::Lock(l) if l.is_held() => format!(
            "{e}; a running berth owns this cache: ask it with `berth {command} --url http://<its admin_listen>`"
        ),
        _ => e.to_string(),
    })?;
    Ok((cache, upstreams))
}

/// A progress bar on a terminal; None: plain lines.
pub fn export_local(config: &Config, output: &Path, request: &ExportRequest) -> ExitCode {
    let Some(runtime) = super::runtime() else {
        return ExitCode::FAILURE;
    };
    let bar = super::progress_bar();
    let images = request.images.clone();
    let shown = bar.clone();
    let progress = move |n: usize, step: WarmStep<'_>| {
        let image = images.get(n).map(String::as_str).unwrap_or_default();
        match (&shown, step) {
            (Some(bar), WarmStep::Manifest { .. }) => bar.set_message(image.to_string()),
            (Some(bar), WarmStep::Fetching { size, .. }) => bar.inc_length(size),
            (Some(bar), WarmStep::Bytes(n)) => bar.inc(n),
            (None, WarmStep::Fetching { digest, size }) => {
                eprintln!("{image}: fetching {digest} ({})", berth::units::format_size(size));
            }
            (None, WarmStep::Manifest { digest }) => eprintln!("{image}: manifest {digest}"),
            _ => {}
        }
    };
    let done = runtime.block_on(async {
        let (cache, upstreams) = open(config, "export").await.map_err(ArchiveError::Usage)?;
        let summary = berth::archive::export(&cache, &upstreams, request, output, &progress).await;
        let _ = cache.flush().await;
        summary
    });
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    match done {
        Ok(summary) => {
            print!("{}", summary.render(&output.display().to_string()));
            ExitCode::SUCCESS
        }
        Err(e) => exit(&e),
    }
}

fn temp_next_to(archive: &Path) -> PathBuf {
    let name = archive
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "archive".into());
    archive.with_file_name(format!(".{name}.partial-{}", std::process::id()))
}

pub fn export_remote(base: &str, output: &Path, platform: Option<&str>, images: &[String]) -> ExitCode {
    let Some(runtime) = super::runtime() else {
        return ExitCode::FAILURE;
    };
    let mut query: Vec<(&str, &str)> = images.iter().map(|i| ("image", i.as_str())).collect();
    if let Some(p) = platform {
        query.push(("platform", p));
    }
    let url = format!("{}/_berth/export", base.trim_end_matches('/'));
    let temp = temp_next_to(output);
    let done = runtime.block_on(async {
        let resp = reqwest::Client::new()
            .get(&url)
            .query(&query)
            .send()
            .await
            .map_err(|e| format!("cannot reach {url}: {e}"))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(format!("{url} answered {status}: {text}"));
        }
        let summary: ExportSummary = resp
            .headers()
            .get(SUMMARY_HEADER)
            .and_then(|v| serde_json::from_slice(v.as_bytes()).ok())
            .unwrap_or_default();
        let mut file = tokio::fs::File::create(&temp)
            .await
            .map_err(|e| format!("{}: {e}", temp.display()))?;
        let mut body = resp.bytes_stream();
        while let Some(piece) = body.next().await {
            let piece = piece.map_err(|e| format!("{url}: {e}"))?;
            file.write_all(&piece)
                .await
                .map_err(|e| format!("{}: {e}", temp.display()))?;
        }
        file.sync_all().await.map_err(|e| format!("{}: {e}", temp.display()))?;
        tokio::fs::rename(&temp, output)
            .await
            .map_err(|e| format!("{}: {e}", output.display()))?;
        Ok(summary)
    });
    match done {
        Ok(summary) => {
            print!("{}", summary.render(&output.display().to_string()));
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            eprintln!("berth: {e}");
            ExitCode::FAILURE
        }
    }
}

pub fn import_local(config: &Config, options: &ImportOptions, archives: &[PathBuf]) -> ExitCode {
    let Some(runtime) = super::runtime() else {
        return ExitCode::FAILURE;
    };
    let progress = |line: &str| eprintln!("{line}");
    let done = runtime.block_on(async {
        let (cache, upstreams) = open(config, "import").await.map_err(ArchiveError::Usage)?;
        let mut all = Vec::new();
        for archive in archives {
            let summary = berth::archive::import(&cache, &upstreams, archive, options, &progress).await;
            match summary {
                Ok(s) => all.push(s),
                Err(e) => {
                    let _ = cache.flush().await;
                    return Err(e);
                }
            }
        }
        Ok(all)
    });
    match done {
        Ok(all) => {
            for s in all {
                print!("{}", s.render());
            }
            ExitCode::SUCCESS
        }
        Err(e) => exit(&e),
    }
}

pub fn import_remote(base: &str, options: &ImportOptions, archives: &[PathBuf]) -> ExitCode {
    let Some(runtime) = super::runtime() else {
        return ExitCode::FAILURE;
    };
    let url = format!("{}/_berth/import", base.trim_end_matches('/'));
    let mut query = Vec::new();
    if let Some(u) = &options.upstream {
        query.push(("upstream", u.clone()));
    }
    if options.docker_save {
        query.push(("docker_save", "true".to_string()));
    }
    for archive in archives {
        let done = runtime.block_on(async {
            let file = tokio::fs::File::open(archive)
                .await
                .map_err(|e| format!("{}: {e}", archive.display()))?;
            let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
            let resp = reqwest::Client::new()
                .post(&url)
                .query(&query)
                .body(body)
                .send()
                .await
                .map_err(|e| format!("cannot reach {url}: {e}"))?;
            let status = resp.status();
            let text = resp.text().await.map_err(|e| format!("{url}: {e}"))?;
            if !status.is_success() {
                let error = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_string))
                    .unwrap_or(text);
                return Err(format!("{}: {error}", archive.display()));
            }
            serde_json::from_str::<ImportSummary>(&text).map_err(|e| format!("{url}: not an import summary: {e}"))
        });
        match done {
            Ok(summary) => print!("{}", summary.render()),
            Err(e) => {
                eprintln!("berth: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
