//! The `kube-template` command line (DESIGN section 6); the commands are
//! in [`kube_template::cli`].

use std::process::ExitCode;

use clap::Parser;
use kube_template::cli::{self, Cli};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // Now, while this is the process's only thread (see the function).
    kube_template::output::grow_open_files_table();
    cli::main(Cli::parse()).await
}
