//! The command line: `serve`, `check-config`, `failures`, `doctor`, `gc`,
//! `prefetch`, `export` and `import`.

use std::path::PathBuf;
use std::process::ExitCode;

use berth::cache::CacheError;
use berth::config::{Config, ConfigSource, LogFormat, Overrides};
use berth::server::StartError;
use clap::{Parser, Subcommand};

mod archive_cli;

#[derive(Parser)]
#[command(name = "berth", version, about = "A pull-through caching container registry mirror")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the registry mirror (the embedded default config when no --config).
    Serve {
        #[command(flatten)]
        opts: ConfigOpts,
        /// Address to listen on, e.g. 0.0.0.0:5000 (overrides BERTH_LISTEN and the file).
        #[arg(long)]
        listen: Option<String>,
        /// Address of the admin surface (metrics, failures), e.g. 127.0.0.1:5001;
        /// "" puts it on --listen (overrides BERTH_ADMIN_LISTEN and the file).
        #[arg(long)]
        admin_listen: Option<String>,
        /// Cache directory (overrides BERTH_CACHE_DIR and the file).
        #[arg(long)]
        cache_dir: Option<String>,
    },
    /// Validate the configuration and print the effective config.
    CheckConfig {
        #[command(flatten)]
        opts: ConfigOpts,
    },
    /// Check the config, the cache directory and every upstream step by step,
    /// then resolve each IMAGE; exit 0 all good, 1 a problem found, 2 bad
    /// usage or config.
    Doctor {
        #[command(flatten)]
        opts: ConfigOpts,
        /// Print the steps as JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Images as given to docker: [registry/]repo[:tag|@digest].
        images: Vec<String>,
    },
    /// Show the recent failed pulls of a running berth, with their causes.
    Failures {
        /// Base URL of the berth's admin surface.
        #[arg(long, default_value = "http://127.0.0.1:5001")]
        url: String,
        /// Only failures of this client: an IP address (any port) or a network (10.0.0.0/24).
        #[arg(long, value_name = "IP")]
        client: Option<String>,
        /// Only failures of this image, as given to docker: busybox, busybox:1.36,
        /// ghcr.io/org/app@sha256:…
        #[arg(long, value_name = "REPO[:TAG]")]
        image: Option<String>,
        /// Only failures with this cause (e.g. manifest_unknown, rate_limited).
        #[arg(long)]
        cause: Option<String>,
        /// Only failures this recent: 90s, 15m, 1h, 2d.
        #[arg(long, value_name = "DURATION")]
        since: Option<String>,
        /// Print the raw JSON report instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Warm images from their upstreams into the cache (every manifest and
    /// blob), so an outage finds them whole. On a running berth with --url;
    /// on a stopped one's cache with --config. Exit 1 if any image failed.
    Prefetch {
        #[command(flatten)]
        opts: ConfigOpts,
        /// Base URL of a running berth's admin surface, e.g. http://127.0.0.1:5001.
        #[arg(long, conflicts_with = "config")]
        url: Option<String>,
        /// Only this platform of multi-platform images: os/arch[/variant].
        #[arg(long)]
        platform: Option<String>,
        /// A file of images, one per line (# comments).
        #[arg(long)]
        file: Option<PathBuf>,
        /// Print the report as JSON instead of a summary.
        #[arg(long)]
        json: bool,
        /// Images as given to docker: [registry/]repo[:tag|@digest].
        images: Vec<String>,
    },
    /// Write images (every manifest, config and layer, as the registry
    /// served them, and their referrers) into an OCI image-layout tar,
    /// fetching what the cache lacks. On a running berth with --url; on a
    /// stopped one's cache with --config.
    Export {
        #[command(flatten)]
        opts: ConfigOpts,
        /// Base URL of a running berth's admin surface, e.g. http://127.0.0.1:5001.
        #[arg(long, conflicts_with = "config")]
        url: Option<String>,
        /// The archive to write (replaced only once it is complete).
        #[arg(short, long = "output", value_name = "ARCHIVE")]
        output: PathBuf,
        /// Only this platform of multi-platform images: os/arch[/variant].
        #[arg(long)]
        platform: Option<String>,
        /// Images as given to docker: [registry/]repo[:tag|@digest].
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Import archives written by `berth export` (or, with --docker-save,
    /// by `docker save`): every digest is verified and each image made
    /// visible only once it is whole. Exit 1 if an archive is refused.
    Import {
        #[command(flatten)]
        opts: ConfigOpts,
        /// Base URL of a running berth's admin surface, e.g. http://127.0.0.1:5001.
        #[arg(long, conflicts_with = "config")]
        url: Option<String>,
        /// File the images under this configured upstream instead of the archive's.
        #[arg(long)]
        upstream: Option<String>,
        /// Accept a classic `docker save` archive: berth writes manifests for it,
        /// so its digests differ from the origin's (pulls by tag only).
        #[arg(long)]
        docker_save: bool,
        #[arg(required = true, value_name = "ARCHIVE")]
        archives: Vec<PathBuf>,
    },
    /// Run cache eviction now (what berth does over cache.max_size), or with
    /// --dry-run list what it would remove and why. On a running berth with
    /// --url; on a stopped one's cache with --config.
    Gc {
        #[command(flatten)]
        opts: ConfigOpts,
        /// Base URL of a running berth's admin surface, e.g. http://127.0.0.1:5001.
        #[arg(long, conflicts_with = "config")]
        url: Option<String>,
        /// Only say what would be removed.
        #[arg(long)]
        dry_run: bool,
        /// Print the report as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct ConfigOpts {
    /// Config file (TOML); without it, the embedded default.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Failures {
        url,
        client,
        image,
        cause,
        since,
        json,
    } = &cli.command
    {
        let filters = [("client", client), ("image", image), ("cause", cause), ("since", since)]
            .map(|(name, value)| (name, value.as_deref().unwrap_or_default()));
        return failures(url, &filters, *json);
    }
    if let Command::Prefetch {
        url,
        platform,
        file,
        json,
        images,
        ..
    } = &cli.command
    {
        let request = match prefetch_request(images, file.as_deref(), platform.as_deref()) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("berth: {e}");
                return ExitCode::from(2);
            }
        };
        if let Some(url) = url {
            return prefetch_remote(url, &request, *json);
        }
    }
    if let Command::Export {
        url: Some(url),
        output,
        platform,
        images,
        ..
    } = &cli.command
    {
        return archive_cli::export_remote(url, output, platform.as_deref(), images);
    }
    if let Command::Import { docker_save: true, .. } = &cli.command {
        // Before anything is read or written: the trap, said first.
        eprintln!("berth: {}", berth::archive::DOCKER_SAVE_WARNING);
    }
    if let Command::Import {
        url: Some(url),
        upstream,
        docker_save,
        archives,
        ..
    } = &cli.command
    {
        let options = berth::archive::ImportOptions {
            upstream: upstream.clone(),
            docker_save: *docker_save,
        };
        return archive_cli::import_remote(url, &options, archives);
    }
    if let Command::Gc {
        url: Some(url),
        dry_run,
        json,
        ..
    } = &cli.command
    {
        return gc_remote(url, *dry_run, *json);
    }
    let env = Overrides::from_env(|k| std::env::var(k).ok());
    let (opts, flags) = match &cli.command {
        Command::Serve {
            opts,
            listen,
            admin_listen,
            cache_dir,
        } => (
            opts,
            Overrides {
                listen: listen.clone(),
                admin_listen: admin_listen.clone(),
                cache_dir: cache_dir.clone(),
                ..Overrides::default()
            },
        ),
        Command::CheckConfig { opts }
        | Command::Doctor { opts, .. }
        | Command::Gc { opts, .. }
        | Command::Export { opts, .. }
        | Command::Import { opts, .. }
        | Command::Prefetch { opts, .. } => (opts, Overrides::default()),
        Command::Failures { .. } => return ExitCode::FAILURE,
    };
    // Kept for `serve`: SIGHUP reads the config again the same way.
    let source = ConfigSource {
        file: opts.config.clone(),
        overrides: env.then(flags),
    };
    let config = match source.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("berth: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::CheckConfig { .. } => {
            if let Some(warning) = berth::server::exposure_warning(&config) {
                eprintln!("berth: warning: {warning}");
            }
            print!("{}", config.to_toml_redacted());
            ExitCode::SUCCESS
        }
        Command::Serve { .. } => serve(config, source),
        Command::Doctor { opts, json, images } => doctor(&config, opts.config.as_deref(), json, &images),
        Command::Gc { dry_run, json, .. } => gc_local(&config, dry_run, json),
        Command::Prefetch {
            platform,
            file,
            json,
            images,
            ..
        } => match prefetch_request(&images, file.as_deref(), platform.as_deref()) {
            Ok(request) => prefetch_local(&config, &request, json),
            Err(e) => {
                eprintln!("berth: {e}");
                ExitCode::from(2)
            }
        },
        Command::Export {
            output,
            platform,
            images,
            ..
        } => {
            let request = berth::archive::ExportRequest { images, platform };
            archive_cli::export_local(&config, &output, &request)
        }
        Command::Import {
            upstream,
            docker_save,
            archives,
            ..
        } => {
            let options = berth::archive::ImportOptions { upstream, docker_save };
            archive_cli::import_local(&config, &options, &archives)
        }
        Command::Failures { .. } => ExitCode::FAILURE,
    }
}

/// A bar for long work (prefetch, export) when a person watches stderr;
/// None otherwise, and the work prints plain lines instead.
fn progress_bar() -> Option<indicatif::ProgressBar> {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return None;
    }
    let bar = indicatif::ProgressBar::new(0);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    Some(bar)
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("berth: cannot start the runtime: {e}");
            None
        }
    }
}

fn print_gc(report: &berth::cache::GcReport, json: bool) -> ExitCode {
    if json {
        match serde_json::to_string_pretty(report) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("berth: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", berth::gc_table::render(report, berth::events::now_ms()));
    }
    ExitCode::SUCCESS
}

/// `gc --url`: the running berth runs it (it owns the cache).
fn gc_remote(url: &str, dry_run: bool, json: bool) -> ExitCode {
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(berth::gc_table::fetch(url, dry_run)) {
        Ok((report, _)) => print_gc(&report, json),
        Err(e) => {
            eprintln!("berth: {e}");
            if e.is_usage() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// `gc --config`: on the cache directly, which needs its lock: refused
/// (naming --url) while a berth serves it.
fn gc_local(config: &Config, dry_run: bool, json: bool) -> ExitCode {
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let events = std::sync::Arc::new(berth::events::Events::default());
    let report = runtime.block_on(async {
        let cache = berth::cache::Cache::open(config, events).await?;
        let report = cache.gc(dry_run).await?;
        cache.flush().await?;
        Ok::<_, CacheError>(report)
    });
    match report {
        Ok(report) => print_gc(&report, json),
        Err(e @ CacheError::Lock(_)) if matches!(&e, CacheError::Lock(l) if l.is_held()) => {
            eprintln!(
                "berth: {e}; a running berth owns this cache: ask it with `berth gc --url http://<its admin_listen>`"
            );
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("berth: {e}");
            ExitCode::FAILURE
        }
    }
}

fn doctor(config: &Config, file: Option<&std::path::Path>, json: bool, images: &[String]) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let origin = file.map_or_else(|| "embedded default config".to_string(), |f| f.display().to_string());
    match runtime.block_on(berth::doctor::run(config, &origin, images)) {
        Ok(report) => {
            if json {
                println!("{}", berth::doctor::json(&report));
            } else {
                print!("{}", berth::doctor::table(&report));
            }
            if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("berth: {e}");
            ExitCode::from(2)
        }
    }
}

fn failures(base: &str, filters: &[(&str, &str)], json: bool) -> ExitCode {
    // Checked here too, so a typo is told at once and the same way whether
    // or not a berth is running.
    let filter = match berth::failure_filter::FailureFilter::from_pairs(filters.iter().copied()) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("berth: --{}: {e}", e.parameter());
            return ExitCode::from(2);
        }
    };
    let described: Vec<String> = filters
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(name, value)| format!("{name} {value}"))
        .collect();
    let described = (!filter.is_empty()).then(|| described.join(", "));
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shown = berth::failures_table::report_url(base, filters).and_then(|url| {
        runtime.block_on(async {
            if json {
                berth::failures_table::fetch_text(&url).await
            } else {
                let report = berth::failures_table::fetch(&url).await?;
                let now = berth::events::now_ms();
                Ok(berth::failures_table::render(&report, now, described.as_deref()))
            }
        })
    });
    match shown {
        Ok(text) if json => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Ok(table) => {
            print!("{table}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("berth: {e}");
            if e.is_usage() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn serve(config: Config, source: ConfigSource) -> ExitCode {
    init_logging(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(berth::server::serve(config, source)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "berth cannot start");
            eprintln!("berth: {e}");
            // Another berth owns the cache directory: a usage problem, not a crash.
            let held = matches!(&e, StartError::Cache { source: CacheError::Lock(l), .. } if l.is_held());
            if held { ExitCode::from(2) } else { ExitCode::FAILURE }
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only for a person at a terminal, never into a log file.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// The images of the command line and of `--file`, checked before any work.
fn prefetch_request(
    images: &[String],
    file: Option<&std::path::Path>,
    platform: Option<&str>,
) -> Result<berth::prefetch::PrefetchRequest, String> {
    let mut all = images.to_vec();
    if let Some(file) = file {
        let text = std::fs::read_to_string(file).map_err(|e| format!("--file {}: {e}", file.display()))?;
        all.extend(berth::prefetch::read_list(&text));
    }
    if all.is_empty() {
        return Err("prefetch: name at least one IMAGE, or --file LIST".into());
    }
    if let Some(p) = platform {
        berth::image_ref::Platform::parse(p).map_err(|e| format!("--platform: {e}"))?;
    }
    Ok(berth::prefetch::PrefetchRequest {
        images: all,
        platform: platform.map(str::to_string),
    })
}

fn print_prefetch(report: &berth::prefetch::PrefetchReport, json: bool) -> ExitCode {
    if json {
        match serde_json::to_string_pretty(report) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("berth: {e}"),
        }
    } else {
        print!("{}", berth::prefetch::render(report));
    }
    if report.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `prefetch --url`: the running berth warms them (it owns the cache).
fn prefetch_remote(base: &str, request: &berth::prefetch::PrefetchRequest, json: bool) -> ExitCode {
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let url = format!("{}/_berth/prefetch", base.trim_end_matches('/'));
    let answer = runtime.block_on(async {
        let resp = reqwest::Client::new()
            .post(&url)
            .json(request)
            .send()
            .await
            .map_err(|e| format!("cannot reach {url}: {e}"))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| format!("{url}: {e}"))?;
        if !status.is_success() {
            return Err(format!("{url} answered {status}: {text}"));
        }
        serde_json::from_str::<berth::prefetch::PrefetchReport>(&text)
            .map_err(|e| format!("{url}: not a prefetch report: {e}"))
    });
    match answer {
        Ok(report) => print_prefetch(&report, json),
        Err(e) => {
            eprintln!("berth: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `prefetch --config`: on the cache directly (refused, naming --url, while
/// a berth serves it), with a progress bar on a terminal, plain lines otherwise.
fn prefetch_local(config: &Config, request: &berth::prefetch::PrefetchRequest, json: bool) -> ExitCode {
    use berth::cache::WarmStep;
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let events = std::sync::Arc::new(berth::events::Events::default());
    let upstreams: Result<Vec<_>, _> = config
        .upstreams
        .iter()
        .map(|u| berth::upstream::Upstream::new(u, events.clone()).map(std::sync::Arc::new))
        .collect();
    let upstreams = match upstreams {
        Ok(u) => u,
        Err(e) => {
            eprintln!("berth: {e}");
            return ExitCode::from(2);
        }
    };
    let bar = progress_bar();
    let images = request.images.clone();
    let finish = bar.clone();
    let progress = move |n: usize, step: WarmStep<'_>| {
        let image = images.get(n).map(String::as_str).unwrap_or_default();
        match (&bar, step) {
            (Some(bar), WarmStep::Manifest { .. }) => bar.set_message(image.to_string()),
            (Some(bar), WarmStep::Fetching { size, .. }) => bar.inc_length(size),
            (Some(bar), WarmStep::Bytes(n)) => bar.inc(n),
            (Some(_), WarmStep::Cached { .. }) => {}
            (None, WarmStep::Fetching { digest, size }) => {
                eprintln!("{image}: fetching {digest} ({})", berth::units::format_size(size));
            }
            (None, WarmStep::Cached { digest, .. }) => eprintln!("{image}: {digest} already cached"),
            (None, _) => {}
        }
    };
    let report = runtime.block_on(async {
        let cache = berth::cache::Cache::open(config, events).await.map_err(|e| match &e {
            CacheError::Lock(l) if l.is_held() => format!(
                "{e}; a running berth owns this cache: ask it with `berth prefetch --url http://<its admin_listen>`"
            ),
            _ => e.to_string(),
        })?;
        let report = berth::prefetch::run(&cache, &upstreams, request, &progress).await;
        if let Some(bar) = &finish {
            bar.finish_and_clear();
        }
        let report = report?;
        cache.flush().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(report)
    });
    match report {
        Ok(report) => print_prefetch(&report, json),
        Err(e) => {
            eprintln!("berth: {e}");
            ExitCode::from(2)
        }
    }
}
