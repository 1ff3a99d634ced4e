//! The command line (DESIGN section 6): each subcommand ties the stages
//! together; `main.rs` only parses the arguments and calls [`main`].
//!
//! - [`run`] — `run`: sources, the pipeline loop, the admin server,
//!   reporters and exec mode's child, started and stopped together;
//! - [`sidecar`] — `k8s-sidecar`: its environment made into a `run`;
//! - [`offline`] — `check`, `render` and `test`, which need no cluster;
//! - [`accept`] — `accept`: asks the running sidecar to write the losses
//!   its guard refused;
//! - [`signals`] — SIGTERM and SIGINT during a run.

pub mod accept;
mod offline;
pub mod run;
mod sidecar;
mod signals;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config;
use crate::telemetry::{self, LogFormat};
use run::RunArgs;
use sidecar::SidecarArgs;

/// Exit status for a bad config (EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;

/// The parsed command line.
#[derive(Debug, Parser)]
#[command(
    name = "kube-template",
    version,
    about = "Render config files from Kubernetes resources with Jinja templates"
)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log level or filter (e.g. `debug`, `kube_template=trace`); default from RUST_LOG, else `info`.
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Watch and render until SIGTERM (or once, with --once).
    Run(RunArgs),
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
    K8sSidecar(SidecarArgs),
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
    /// Tell the sidecar running in this pod to write the shrinks its loss guard refused, once.
    Accept {
        /// The config file of the running sidecar.
        #[arg(short, long)]
        config: PathBuf,
        /// The template whose shrink to accept (default: every guarded template).
        template: Option<String>,
    },
    /// Print the JSON Schema of the config file, for editors.
    Schema,
}

/// Runs the command `cli` names, and gives the process's exit status.
pub async fn main(cli: Cli) -> ExitCode {
    let log_level = cli.log_level.as_deref();
    let command = match cli.command {
        // Logs as its environment says.
        Command::K8sSidecar(args) => return sidecar::main(args, log_level).await,
        Command::Schema => {
            print!("{}", config::schema::json());
            return ExitCode::SUCCESS;
        }
        command => command,
    };
    if let Err(e) = telemetry::init(cli.log_format, log_level) {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    match command {
        Command::Run(args) => run::run(args, None).await,
        Command::Check { config } => offline::check(&config),
        Command::Render { config, from, out } => offline::render(&config, &from, out.as_deref()).await,
        Command::Test { config, update, names } => offline::test(&config, &names, update).await,
        Command::Accept { config, template } => accept::main(&config, template.as_deref()).await,
        Command::K8sSidecar(_) | Command::Schema => unreachable!("answered above"),
    }
}

/// Prints a config's problems and gives the bad-config exit status.
fn config_failure(e: &config::Error) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(EXIT_CONFIG)
}
