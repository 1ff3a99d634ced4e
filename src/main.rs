//! The `kube-template` command line (DESIGN section 6).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use kube_template::admin;
use kube_template::config;
use kube_template::exec;
use kube_template::k8s_sidecar;
use kube_template::pipeline::{self, Prepared, Stopped};
use kube_template::report;
use kube_template::source::{self, kubernetes, manifests};
use kube_template::telemetry::{self, LogFormat, Telemetry};
use kube_template::template_tests;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Exit status for a bad config (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "kube-template",
    version,
    about = "Render config files from Kubernetes resources with Jinja templates"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log level or filter (e.g. `debug`, `kube_template=trace`); default from RUST_LOG, else `info`.
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Watch and render until SIGTERM (or once, with --once).
    Run {
        /// The config file.
        #[arg(short, long)]
        config: PathBuf,
        /// Use manifest files or directories instead of a cluster; changes on disk are picked up.
        #[arg(long, num_args = 1..)]
        from: Vec<PathBuf>,
        /// Render once after the initial sync, run the actions, and exit (init-container mode).
        #[arg(long)]
        once: bool,
        /// Kubeconfig file (default: KUBECONFIG, ~/.kube/config, or the in-cluster config).
        // Not `env = "KUBECONFIG"`: that variable may list several files, which
        // kube reads and merges itself when this is absent.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Kubeconfig context (default: its current context).
        #[arg(long)]
        context: Option<String>,
        /// Use streaming lists (WatchList, Kubernetes 1.32+) instead of paged LISTs for initial syncs.
        #[arg(long)]
        streaming_lists: bool,
        /// Server-side timeout of each watch request; a watch whose connection is open but silent for longer (plus 5s) fails /healthz.
        #[arg(long, default_value = "290s", value_parser = humantime::parse_duration)]
        watch_timeout: std::time::Duration,
        /// With --once: exit 1 if the initial sync is not done after this long (an error that lasts,
        /// such as 403 Forbidden, or an API server that cannot be reached).
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        sync_timeout: std::time::Duration,
        /// Exec mode: after the first good render, run this command as a child, reload it on
        /// changes and exit with its status (with --once: replace kube-template with it).
        #[arg(last = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Validate the config and compile its templates; exit 64 listing every problem.
    Check {
        /// The config file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Render once from manifests (files or directories of YAML/JSON) and exit.
    Render {
        /// The config file.
        #[arg(short, long)]
        config: PathBuf,
        /// Manifest files or directories.
        #[arg(long, required = true, num_args = 1..)]
        from: Vec<PathBuf>,
        /// Re-root every output under this directory.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// A drop-in for kiwigrid/k8s-sidecar: configured by its environment variables (LABEL, FOLDER, …).
    K8sSidecar {
        /// Use manifest files or directories instead of a cluster.
        #[arg(long, num_args = 1..)]
        from: Vec<PathBuf>,
        /// Kubeconfig file (default: KUBECONFIG, ~/.kube/config, or the in-cluster config).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Kubeconfig context (default: its current context).
        #[arg(long)]
        context: Option<String>,
        /// File holding the username for REQ_URL (overrides REQ_USERNAME).
        #[arg(long)]
        req_username_file: Option<PathBuf>,
        /// File holding the password for REQ_URL (overrides REQ_PASSWORD).
        #[arg(long)]
        req_password_file: Option<PathBuf>,
        /// Print the config made from the environment and exit.
        #[arg(long)]
        print_config: bool,
    },
    /// Run the template tests beside the config (tests/NAME/manifests + expect/ or expect_error).
    Test {
        /// The config file.
        #[arg(short, long)]
        config: PathBuf,
        /// Rewrite each case's expect/ from the current render instead of comparing.
        #[arg(long)]
        update: bool,
        /// Only these cases (default: all).
        names: Vec<String>,
    },
    /// Print the JSON Schema of the config file, for editors.
    Schema,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let (command, mut preset) = match cli.command {
        Command::K8sSidecar {
            from,
            kubeconfig,
            context,
            req_username_file,
            req_password_file,
            print_config,
        } => {
            let flags = k8s_sidecar::Flags {
                req_username_file,
                req_password_file,
            };
            // Not `env::vars`, which panics on a variable that is not UTF-8.
            let vars = std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect();
            let settings = match k8s_sidecar::Settings::from_env(&vars, &flags) {
                Ok(settings) => settings,
                Err(errors) => {
                    for e in errors {
                        eprintln!("error: {e}");
                    }
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let format = if settings.log_json {
                LogFormat::Json
            } else {
                LogFormat::Text
            };
            telemetry::init(format, Some(cli.log_level.as_deref().unwrap_or(settings.log_level)));
            for note in &settings.notes {
                tracing::info!(%note, "k8s-sidecar variable");
            }
            match k8s_sidecar_run(settings, from, kubeconfig, context, print_config).await {
                Ok(Some(started)) => started,
                Ok(None) => return ExitCode::SUCCESS,
                Err(code) => return code,
            }
        }
        command => {
            telemetry::init(cli.log_format, cli.log_level.as_deref());
            (command, None)
        }
    };
    match command {
        Command::Run {
            config,
            from,
            once,
            kubeconfig,
            context,
            streaming_lists,
            watch_timeout,
            sync_timeout,
            command,
        } => {
            let sync_deadline = once.then(|| tokio::time::Instant::now() + sync_timeout);
            let (prepared, healthz, skip_tls_verify) = match preset.take() {
                Some(preset) => (Ok(preset.prepared), preset.healthz, preset.skip_tls_verify),
                None => (pipeline::prepare(&config), admin::Healthz::default(), false),
            };
            let prepared = match prepared {
                Ok(p) => Arc::new(p),
                Err(e) => return config_failure(&e),
            };
            // Checked before connecting: `status:` needs a namespace.
            let report_plan = match report::Plan::new(prepared.config.status.as_ref(), &report::Environment::from_env())
            {
                Ok(plan) => plan,
                Err(e) => {
                    eprintln!("error: {}: {e}", config.display());
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            // Listen before connecting, so that a signal during a slow start
            // (discovery, initial lists) is honoured too.
            let signals = match Signals::listen() {
                Ok(signals) => signals,
                Err(e) => {
                    eprintln!("error: cannot listen for signals: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let telemetry = Arc::new(Telemetry::default());
            // Exec mode: the child follows the renders from the first one on,
            // and its end stops the run as a signal does.
            let mut child = (!once && !command.is_empty()).then(|| {
                let exec = &prepared.config.exec;
                let settings = exec::Settings {
                    reload_signal: exec.reload_signal,
                    kill_signal: exec.kill_signal,
                    kill_timeout: exec.kill_timeout,
                };
                Supervised::start(command.clone(), settings, &telemetry)
            });
            let child_ended = child.as_mut().and_then(|c| c.ended.take());
            let mut shutdown = std::pin::pin!(async {
                match child_ended {
                    Some(ended) => tokio::select! {
                        () = signals.first() => {}
                        _ = ended => {}
                    },
                    None => signals.first().await,
                }
            });
            // The admin server serves probes and metrics for the whole run (not
            // in init-container mode, which exits after one render).
            let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
            let admin = if once {
                None
            } else {
                match start_admin(&prepared.config.admin.listen, &telemetry, healthz, admin_stopped).await {
                    Ok(task) => Some(task),
                    // Charts run several k8s-sidecars in one pod, all on the
                    // default HEALTH_PORT: k8s-sidecar goes on without its
                    // health server then, and so does this mode.
                    Err(error) if healthz == admin::Healthz::K8sSidecar => {
                        tracing::warn!(%error, "running without the health server (HEALTH_HOST, HEALTH_PORT)");
                        None
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            };
            let start = async {
                if from.is_empty() {
                    let connect = kubernetes::Connect {
                        kubeconfig: kubeconfig.as_deref(),
                        context: context.as_deref(),
                    };
                    let options = kubernetes::WatchOptions {
                        streaming_lists,
                        timeout: watch_timeout,
                    };
                    let mut client_config = kubernetes::client_config(&connect).await.map_err(|e| e.to_string())?;
                    client_config.accept_invalid_certs |= skip_tls_verify;
                    let client = kube::Client::try_from(client_config.clone()).map_err(|e| e.to_string())?;
                    let sources = source::start_kubernetes(&prepared.config, client_config, options, &telemetry)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok::<_, String>((sources, Some(client)))
                } else {
                    let sources =
                        source::start_manifests(&prepared.config, from, &telemetry).map_err(|e| e.to_string())?;
                    Ok((sources, None))
                }
            };
            let not_synced = async {
                match sync_deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            let sources = tokio::select! {
                sources = start => sources,
                () = &mut shutdown => return stopped_early(once),
                () = not_synced => {
                    let why = telemetry.status.sync_problems().join("; ");
                    eprintln!("error: the initial sync did not finish within --sync-timeout: {why}");
                    return ExitCode::FAILURE;
                }
            };
            let (sources, client) = match sources {
                Ok(started) => started,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            // Events and the status ConfigMap report to the cluster watched.
            let reporters = match client {
                Some(client) if !report_plan.is_empty() => Some(report::start(
                    report_plan,
                    client,
                    &telemetry,
                    report::Options::default(),
                )),
                None if report_plan.status.is_some() => {
                    tracing::warn!("status: is written only when watching a cluster, not with --from");
                    None
                }
                _ => None,
            };
            let trimmer = (!once).then(|| trim_after_first_render(&telemetry));
            let options = pipeline::RunOptions { once, sync_deadline };
            let result = pipeline::run(prepared, sources, options, Arc::clone(&telemetry), shutdown).await;
            if let Some(trimmer) = trimmer {
                trimmer.abort();
            }
            if let Some(reporters) = reporters {
                reporters.stop().await;
            }
            let child_status = match child {
                Some(child) => Some(child.stop().await),
                None => None,
            };
            let _ = admin_stop.send(());
            if let Some(admin) = admin {
                let _ = admin.await;
            }
            if let Some(status) = child_status {
                if let Err(e) = &result {
                    eprintln!("error: {e}");
                }
                return status;
            }
            match result {
                // With --once a render returns: a shutdown came before it.
                Ok(Stopped::Shutdown) => stopped_early(once),
                Ok(Stopped::Rendered) if !command.is_empty() => {
                    // Only returns when the exec failed.
                    let error = exec::exec(&command);
                    eprintln!("error: {error}");
                    ExitCode::FAILURE
                }
                Ok(Stopped::Rendered) => ExitCode::SUCCESS,
                Ok(Stopped::RenderFailed) => {
                    eprintln!("error: the render failed (see the log)");
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check { config } => match pipeline::prepare(&config) {
            Ok(prepared) => {
                println!(
                    "{}: ok ({} watched resources, {} templates)",
                    config.display(),
                    prepared.config.watched_resources.len(),
                    prepared.config.templates.len()
                );
                // Which stores re-render which group, and where that cannot
                // be narrowed (every change then re-renders the group).
                for group in pipeline::group::plan(&prepared.config, &prepared.renderer) {
                    let templates = group.templates.iter().cloned().collect::<Vec<_>>().join(", ");
                    println!(
                        "  group {}: templates {templates}; reads {}",
                        group.name,
                        group.describe_reads()
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => config_failure(&e),
        },
        Command::Render { config, from, out } => {
            let prepared = match pipeline::prepare(&config) {
                Ok(p) => p,
                Err(e) => return config_failure(&e),
            };
            render(&prepared, &from, out.as_deref()).await
        }
        Command::K8sSidecar { .. } => unreachable!("k8s-sidecar becomes a run above"),
        Command::Test { config, update, names } => {
            let prepared = match pipeline::prepare(&config) {
                Ok(p) => p,
                Err(e) => return config_failure(&e),
            };
            test(&prepared, &config, &names, update).await
        }
        Command::Schema => {
            print!("{}", config::schema::json());
            ExitCode::SUCCESS
        }
    }
}

/// Runs the template test cases and prints one line per case, the diffs of
/// failing ones, and a closing count.
async fn test(prepared: &Prepared, config: &std::path::Path, names: &[String], update: bool) -> ExitCode {
    let dir = config
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let cases = match template_tests::discover(dir, names) {
        Ok(cases) => cases,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let (mut passed, mut failed) = (0, 0);
    for case in &cases {
        let outcome = template_tests::run(prepared, case, update).await;
        for line in &outcome.updated {
            println!("  {line}");
        }
        if outcome.passed() {
            passed += 1;
            println!("ok   {}", case.name);
        } else {
            failed += 1;
            println!("FAIL {}", case.name);
            for failure in &outcome.failures {
                println!("{}", failure.trim_end());
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// How a run stopped by a signal before its first render exits: as it should
/// when watching (0), but not with `--once`, whose caller waits for files that
/// were never written (an init container that exited 0 would start the pod).
fn stopped_early(once: bool) -> ExitCode {
    if once {
        eprintln!("error: stopped by a signal before the first render; nothing was written");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// SIGTERM and SIGINT, listened for by a task of their own so that they are
/// seen even while a render runs: the first one asks for a graceful shutdown
/// (the current render finishes first), a second one exits at once. The task
/// stops when this is dropped.
struct Signals {
    first: Option<oneshot::Receiver<()>>,
    task: JoinHandle<()>,
}

impl Signals {
    fn listen() -> std::io::Result<Signals> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let (first_tx, first) = oneshot::channel();
        let task = tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!("shutting down after the current render; a second signal exits at once");
            let _ = first_tx.send(());
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::warn!("second signal; exiting now");
            std::process::exit(130);
        });
        Ok(Signals {
            first: Some(first),
            task,
        })
    }

    /// Resolves on the first signal. A second signal exits at once, also
    /// while a render in flight keeps this future from being polled.
    async fn first(mut self) {
        if let Some(first) = self.first.take() {
            // The sender only goes away with the task, which only `Drop` stops.
            let _ = first.await;
        }
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The child of exec mode, run by [`exec::supervise`] on a task of its own.
struct Supervised {
    task: JoinHandle<exec::Result<Option<std::process::ExitStatus>>>,
    stop: oneshot::Sender<()>,
    /// Resolves (with an error) when the child has ended, or could not be
    /// started; taken by the run's shutdown.
    ended: Option<oneshot::Receiver<()>>,
}

impl Supervised {
    fn start(argv: Vec<String>, settings: exec::Settings, telemetry: &Telemetry) -> Supervised {
        let renders = telemetry.outcomes();
        let (stop, stopped) = oneshot::channel::<()>();
        let (ended_tx, ended) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let result = exec::supervise(&argv, settings, renders, async {
                let _ = stopped.await;
            })
            .await;
            // Dropped on any end, also a failure to start: the run stops.
            drop(ended_tx);
            result
        });
        Supervised {
            task,
            stop,
            ended: Some(ended),
        }
    }

    /// Stops the child (if it still runs) and gives the exit code that
    /// passes its status on.
    async fn stop(self) -> ExitCode {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(Ok(Some(status))) => ExitCode::from(exec::exit_code(status)),
            Ok(Ok(None)) => {
                eprintln!("error: stopped before the first good render; the command never ran");
                ExitCode::FAILURE
            }
            Ok(Err(e)) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("error: the exec task failed: {e}");
                ExitCode::FAILURE
            }
        }
    }
}

/// After the first successful render, gives back the memory that only the
/// start needed (`telemetry::resident`). Aborted when the run ends.
fn trim_after_first_render(telemetry: &Telemetry) -> JoinHandle<()> {
    let mut outcomes = telemetry.outcomes();
    tokio::spawn(async move {
        loop {
            match outcomes.recv().await {
                Ok(outcome) if outcome.error.is_none() => break,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
        let trimmed = telemetry::resident::trim();
        tracing::debug!(
            mapped_bytes = trimmed.mapped_bytes,
            mappings = trimmed.mappings,
            "memory only the start needed given back"
        );
    })
}

/// Binds the admin server and serves it in the background until `stopped`.
async fn start_admin(
    listen: &str,
    telemetry: &Arc<Telemetry>,
    healthz: admin::Healthz,
    stopped: tokio::sync::oneshot::Receiver<()>,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("admin.listen `{listen}`: cannot listen: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(%addr, "admin server listening");
    let telemetry = Arc::clone(telemetry);
    Ok(tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        if let Err(error) = admin::serve_with(listener, telemetry, healthz, shutdown).await {
            tracing::error!(%error, "admin server failed");
        }
    }))
}

/// What `run` takes from `k8s-sidecar` besides its arguments.
struct Preset {
    prepared: Prepared,
    healthz: admin::Healthz,
    skip_tls_verify: bool,
}

/// Turns k8s-sidecar's settings into a `run` and what it needs; `None` when
/// there is nothing to run (`--print-config`).
async fn k8s_sidecar_run(
    settings: k8s_sidecar::Settings,
    from: Vec<PathBuf>,
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
    print_config: bool,
) -> Result<Option<(Command, Option<Preset>)>, ExitCode> {
    // k8s-sidecar's default is the pod's namespace, which kube's in-cluster
    // config reads too; outside a pod, the kubeconfig context's.
    let own_namespace = if settings.namespaces == k8s_sidecar::Namespaces::Own && from.is_empty() {
        let connect = kubernetes::Connect {
            kubeconfig: kubeconfig.as_deref(),
            context: context.as_deref(),
        };
        match kubernetes::client_config(&connect).await {
            Ok(config) => Some(config.default_namespace),
            Err(e) => {
                eprintln!("error: NAMESPACE is not set and the default namespace is unknown: {e}");
                return Err(ExitCode::FAILURE);
            }
        }
    } else {
        None
    };
    let text = if print_config {
        settings.printed_config_yaml(own_namespace.as_deref())
    } else {
        settings.config_yaml(own_namespace.as_deref())
    };
    let text = match text {
        Ok(text) => text,
        Err(e) => {
            eprintln!("error: {e}");
            return Err(ExitCode::from(EXIT_CONFIG));
        }
    };
    if print_config {
        print!("{text}");
        return Ok(None);
    }
    let name = PathBuf::from("k8s-sidecar");
    let prepared = pipeline::prepare_text(&text, &name, std::path::Path::new("")).map_err(|e| config_failure(&e))?;
    let run = Command::Run {
        config: name,
        from,
        once: settings.once(),
        kubeconfig,
        context,
        streaming_lists: false,
        watch_timeout: settings.watch_timeout.unwrap_or(std::time::Duration::from_secs(290)),
        sync_timeout: std::time::Duration::from_secs(60),
        command: Vec::new(),
    };
    let preset = Preset {
        prepared,
        healthz: admin::Healthz::K8sSidecar,
        skip_tls_verify: settings.skip_tls_verify,
    };
    Ok(Some((run, Some(preset))))
}

fn config_failure(e: &config::Error) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(EXIT_CONFIG)
}

async fn render(prepared: &Prepared, from: &[PathBuf], out: Option<&std::path::Path>) -> ExitCode {
    let objects = match manifests::load(from) {
        Ok(objects) => objects,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stores = pipeline::stores_from(&prepared.config, &objects);
    for (name, store) in &stores {
        tracing::info!(store = %name, objects = store.len(), skipped = store.skipped(), "store loaded");
    }
    match pipeline::render_and_write(prepared, &pipeline::snapshot(&stores), out).await {
        Ok(report) => {
            for path in &report.written {
                tracing::info!(path = %path.display(), "file written");
            }
            for path in &report.removed {
                tracing::info!(path = %path.display(), "stale file removed");
            }
            if !report.changed() {
                tracing::info!("outputs unchanged");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
