//! The `kube-template` command line (DESIGN section 6); the commands are
//! in [`kube_template::cli`].

use std::process::ExitCode;

use clap::Parser;
use kube_template::cli::{self, Cli};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    cli::main(Cli::parse()).await
}
