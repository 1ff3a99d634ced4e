//! `kube-template k8s-sidecar`: k8s-sidecar's environment made into a
//! config, then an ordinary `run`.

use std::path::PathBuf;
use std::process::ExitCode;

use super::run::{Preset, RunArgs, run};
use super::{EXIT_CONFIG, config_failure};
use crate::admin;
use crate::k8s_sidecar;
use crate::pipeline;
use crate::source::kubernetes;
use crate::telemetry::{self, LogFormat};

/// The arguments of `k8s-sidecar`; the rest comes from the environment.
#[derive(Debug, clap::Args)]
pub struct SidecarArgs {
    /// Use manifest files or directories instead of a cluster.
    #[arg(long, num_args = 1..)]
    pub from: Vec<PathBuf>,
    /// Kubeconfig file (default: KUBECONFIG, ~/.kube/config, or the in-cluster config).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (default: its current context).
    #[arg(long)]
    pub context: Option<String>,
    /// File holding the username for REQ_URL (overrides REQ_USERNAME).
    #[arg(long)]
    pub req_username_file: Option<PathBuf>,
    /// File holding the password for REQ_URL (overrides REQ_PASSWORD).
    #[arg(long)]
    pub req_password_file: Option<PathBuf>,
    /// Print the config made from the environment and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// Reads the environment, starts logging as it says (`--log-level` wins),
/// and runs.
pub async fn main(args: SidecarArgs, log_level: Option<&str>) -> ExitCode {
    let SidecarArgs {
        from,
        kubeconfig,
        context,
        req_username_file,
        req_password_file,
        print_config,
    } = args;
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
    if let Err(e) = telemetry::init(format, Some(log_level.unwrap_or(settings.log_level))) {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    for note in &settings.notes {
        tracing::info!(%note, "k8s-sidecar variable");
    }
    match prepare(settings, from, kubeconfig, context, print_config).await {
        Ok(Some((args, preset))) => run(args, Some(preset)).await,
        Ok(None) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}

/// Turns k8s-sidecar's settings into a `run` and what it needs; `None` when
/// there is nothing to run (`--print-config`).
async fn prepare(
    settings: k8s_sidecar::Settings,
    from: Vec<PathBuf>,
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
    print_config: bool,
) -> Result<Option<(RunArgs, Preset)>, ExitCode> {
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
    let run = RunArgs {
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
    Ok(Some((run, preset)))
}
