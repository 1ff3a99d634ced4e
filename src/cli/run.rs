//! `kube-template run`: the sources, the pipeline loop, the admin server,
//! the reporters and (in exec mode) the child, started and stopped together.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::signals::Signals;
use super::{EXIT_CONFIG, config_failure};
use crate::admin;
use crate::exec;
use crate::pipeline::{self, Prepared, Stopped};
use crate::report;
use crate::source::{self, kubernetes};
use crate::telemetry::{self, Telemetry};

/// The arguments of `run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The config file.
    #[arg(short, long)]
    pub config: PathBuf,
    /// Use manifest files or directories instead of a cluster; changes on disk are picked up.
    #[arg(long, num_args = 1..)]
    pub from: Vec<PathBuf>,
    /// Render once after the initial sync, run the actions, and exit (init-container mode).
    #[arg(long)]
    pub once: bool,
    /// Kubeconfig file (default: KUBECONFIG, ~/.kube/config, or the in-cluster config).
    // Not `env = "KUBECONFIG"`: that variable may list several files, which
    // kube reads and merges itself when this is absent.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (default: its current context).
    #[arg(long)]
    pub context: Option<String>,
    /// Use streaming lists (WatchList, Kubernetes 1.32+) instead of paged LISTs for initial syncs.
    #[arg(long)]
    pub streaming_lists: bool,
    /// Server-side timeout of each watch request; a watch whose connection is open but silent for longer (plus 5s) fails /healthz.
    #[arg(long, default_value = "290s", value_parser = humantime::parse_duration)]
    pub watch_timeout: std::time::Duration,
    /// With --once: exit 1 if the initial sync is not done after this long (an error that lasts,
    /// such as 403 Forbidden, or an API server that cannot be reached).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub sync_timeout: std::time::Duration,
    /// Exec mode: after the first good render, run this command as a child, reload it on
    /// changes and exit with its status (with --once: replace kube-template with it).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// What `run` takes from `k8s-sidecar` besides its arguments.
pub struct Preset {
    pub prepared: Prepared,
    pub healthz: admin::Healthz,
    pub skip_tls_verify: bool,
}

/// Runs until a signal (or once): the config from `args.config`, or the one
/// `preset` made.
pub async fn run(args: RunArgs, preset: Option<Preset>) -> ExitCode {
    let RunArgs {
        config,
        from,
        once,
        kubeconfig,
        context,
        streaming_lists,
        watch_timeout,
        sync_timeout,
        command,
    } = args;
    let sync_deadline = once.then(|| tokio::time::Instant::now() + sync_timeout);
    let (prepared, healthz, skip_tls_verify) = match preset {
        Some(preset) => (Ok(preset.prepared), preset.healthz, preset.skip_tls_verify),
        None => (pipeline::prepare(&config), admin::Healthz::default(), false),
    };
    let prepared = match prepared {
        Ok(p) => Arc::new(p),
        Err(e) => return config_failure(&e),
    };
    // Checked before connecting: `status:` needs a namespace.
    let report_plan = match report::Plan::new(prepared.config.status.as_ref(), &report::Environment::from_env()) {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("error: {}: {e}", config.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // Listen before connecting, so that a signal during a slow start
    // (discovery, initial lists) is honoured too.
    let child_pid = exec::ChildPid::default();
    let mut signals = match Signals::listen(child_pid.clone()) {
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
        Supervised::start(command.clone(), settings, &telemetry, child_pid)
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
            let sources = source::start_manifests(&prepared.config, from, &telemetry).map_err(|e| e.to_string())?;
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
    // The start (the config, TLS, discovery) is over: its code pages need
    // not stay resident while the listings fill the stores, where a run's
    // memory peaks. What the listing and the render run is mapped back.
    let trimmed = telemetry::resident::trim();
    tracing::debug!(
        mapped_bytes = trimmed.mapped_bytes,
        mappings = trimmed.mappings,
        "memory only the start-up needed given back"
    );
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

/// The child of exec mode, run by [`exec::supervise`] on a task of its own.
struct Supervised {
    task: JoinHandle<exec::Result<Option<std::process::ExitStatus>>>,
    stop: oneshot::Sender<()>,
    /// Resolves (with an error) when the child has ended, or could not be
    /// started; taken by the run's shutdown.
    ended: Option<oneshot::Receiver<()>>,
}

impl Supervised {
    fn start(argv: Vec<String>, settings: exec::Settings, telemetry: &Telemetry, pid: exec::ChildPid) -> Supervised {
        let renders = telemetry.outcomes();
        let (stop, stopped) = oneshot::channel::<()>();
        let (ended_tx, ended) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let stop = async {
                let _ = stopped.await;
            };
            let result = exec::supervise(&argv, settings, renders, stop, pid).await;
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
