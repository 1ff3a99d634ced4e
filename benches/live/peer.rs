//! The programs `kube-template k8s-sidecar` replaces, run on the same jobs as
//! the `k8s-sidecar:` rows (README, Replacing k8s-sidecar) against the same
//! fake server: kiwigrid/k8s-sidecar (Python) and a lean Rust rewrite of it
//! (vplme/k8s-sidecar-rs: kube-rs, paged lists of 5, no store).
//!
//! Their code is not part of this repository: the rows run existing builds
//! named by the environment, and are skipped without them:
//! - `K8S_SIDECAR_SRC`: a k8s-sidecar checkout's directory holding
//!   `sidecar.py`; `K8S_SIDECAR_PYTHON`: a python with its requirements
//!   installed (default `python3`);
//! - `K8S_SIDECAR_RS_BIN`: the Rust rewrite's binary (a checkout of
//!   vplme/k8s-sidecar-rs, built with `cargo build --release`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use super::fake_api::FakeApiServer;
use super::{proc_kib, rss, sidecar_job};

/// The pod's namespace file, which both programs open at start whatever
/// `NAMESPACE` says (outside a pod there is none).
const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// Starts `sidecar.py` as `python sidecar.py` would, except that the pod's
/// namespace file reads `default` when this machine has none.
const LAUNCHER: &str = r#"
import builtins, io, os, runpy, sys
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
if not os.path.exists(SERVICE_ACCOUNT_NAMESPACE):
    real_open = builtins.open
    def pod_open(file, *args, **kwargs):
        if file == SERVICE_ACCOUNT_NAMESPACE:
            return io.StringIO("default")
        return real_open(file, *args, **kwargs)
    builtins.open = pod_open
script = os.path.join(sys.argv[1], "sidecar.py")
sys.path.insert(0, sys.argv[1])
sys.argv = [script]
runpy.run_path(script, run_name="__main__")
"#;

/// A k8s-sidecar implementation run beside ours, on the same job description.
pub enum Peer {
    /// kiwigrid/k8s-sidecar: a checkout and the python to run it with.
    Python { src: PathBuf, python: PathBuf },
    /// The Rust rewrite's binary.
    Rust { binary: PathBuf },
}

impl Peer {
    /// The peers named by the environment, and for each one that is not, a
    /// note saying why its rows were skipped and how to enable them. Panics
    /// on a variable naming nothing runnable (a wrong path should not pass
    /// for a skipped row).
    pub fn from_env() -> (Vec<Peer>, Vec<String>) {
        let (mut peers, mut skipped) = (Vec::new(), Vec::new());
        match std::env::var_os("K8S_SIDECAR_SRC") {
            Some(src) => {
                let src = PathBuf::from(src);
                assert!(
                    src.join("sidecar.py").is_file(),
                    "K8S_SIDECAR_SRC={}: no sidecar.py there",
                    src.display()
                );
                let python = std::env::var_os("K8S_SIDECAR_PYTHON").map_or_else(|| PathBuf::from("python3"), PathBuf::from);
                peers.push(Peer::Python { src, python });
            }
            None => skipped.push("kiwigrid/k8s-sidecar rows skipped: set K8S_SIDECAR_SRC to a checkout's directory holding sidecar.py, and K8S_SIDECAR_PYTHON to a python with its requirements installed (default python3)".to_string()),
        }
        match std::env::var_os("K8S_SIDECAR_RS_BIN") {
            Some(binary) => {
                let binary = PathBuf::from(binary);
                assert!(binary.is_file(), "K8S_SIDECAR_RS_BIN={}: no such file", binary.display());
                // It has no way around the file, and the bench writes only in
                // its scratch directories.
                if Path::new(SERVICE_ACCOUNT_NAMESPACE).is_file() {
                    peers.push(Peer::Rust { binary });
                } else {
                    skipped.push(format!(
                        "k8s-sidecar-rs rows skipped: it reads {SERVICE_ACCOUNT_NAMESPACE} at start whatever NAMESPACE says, and this machine has none (it is not a pod); create it (one line: default) to run them"
                    ));
                }
            }
            None => skipped.push("k8s-sidecar-rs rows skipped: set K8S_SIDECAR_RS_BIN to its binary (a checkout of vplme/k8s-sidecar-rs, built with cargo build --release)".to_string()),
        }
        (peers, skipped)
    }

    /// How its rows are named.
    pub fn name(&self) -> &'static str {
        match self {
            Peer::Python { .. } => "kiwigrid/k8s-sidecar (Python)",
            Peer::Rust { .. } => "k8s-sidecar-rs (Rust rewrite)",
        }
    }

    /// The program with k8s-sidecar's variables `env`, writing to `dir/out`
    /// (`METHOD=LIST` when `once`, else `WATCH`).
    pub fn spawn(&self, server: &FakeApiServer, dir: &Path, env: &[(&str, &str)], once: bool) -> Child {
        let (mut command, program) = match self {
            Peer::Python { src, python } => {
                let mut command = Command::new(python);
                command.arg("-c").arg(LAUNCHER).arg(src);
                (command, format!("K8S_SIDECAR_PYTHON={}", python.display()))
            }
            Peer::Rust { binary } => (Command::new(binary), format!("K8S_SIDECAR_RS_BIN={}", binary.display())),
        };
        command.env("KUBECONFIG", server.kubeconfig_path());
        sidecar_job(&mut command, dir, env, once)
            .spawn()
            .unwrap_or_else(|e| panic!("{program}: {e}"))
    }
}

/// `pid` and its descendants (kiwigrid/k8s-sidecar forks one watcher
/// process per resource and namespace).
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut tree = vec![pid];
    let mut next = 0;
    while next < tree.len() {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", tree[next]))
            .into_iter()
            .flatten();
        for task in tasks.flatten() {
            let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            tree.extend(children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
        }
        next += 1;
    }
    tree
}

/// Resident memory of a process tree.
pub struct TreeMemory {
    /// (total, anonymous, file-backed), summed over the processes: pages a
    /// fork shares count once per process.
    pub rss: (u64, u64, u64),
    /// Proportional set sizes summed: shared pages split between sharers.
    pub pss: u64,
    pub processes: usize,
}

impl TreeMemory {
    /// The memory of `pid` and its descendants, now.
    pub fn of(pid: u32) -> TreeMemory {
        let tree = process_tree(pid);
        let mut memory = TreeMemory {
            rss: (0, 0, 0),
            pss: 0,
            processes: tree.len(),
        };
        for pid in tree {
            let (total, anon, file) = rss(pid).expect("the process is running");
            memory.rss = (memory.rss.0 + total, memory.rss.1 + anon, memory.rss.2 + file);
            memory.pss += proportional(pid).expect("the process is running");
        }
        memory
    }
}

/// Kills `child` and its descendants (kiwigrid/k8s-sidecar's watcher
/// processes do not end with it), and reaps it.
pub fn kill_tree(mut child: Child) {
    let tree = process_tree(child.id());
    let _ = child.kill();
    let _ = child.wait();
    for pid in tree.into_iter().skip(1) {
        let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
    }
}

/// A process's proportional set size in bytes, from /proc.
fn proportional(pid: u32) -> Option<u64> {
    proc_kib(pid, "smaps_rollup", "Pss:")
}

/// Checks that two output directories hold the same file names, and the same
/// contents in every `stride`-th file: kube-template and `peer` did the same
/// job. Returns the number of files.
pub fn same_files(ours: &Path, theirs: &Path, peer: &Peer, stride: usize) -> usize {
    let names = |dir: &Path| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect()
    };
    let (ours_names, theirs_names) = (names(ours), names(theirs));
    assert_eq!(
        ours_names.len(),
        theirs_names.len(),
        "kube-template wrote {} files, {} {}",
        ours_names.len(),
        peer.name(),
        theirs_names.len()
    );
    assert!(
        ours_names == theirs_names,
        "kube-template and {} wrote different file names",
        peer.name()
    );
    for name in ours_names.iter().step_by(stride.max(1)) {
        let read = |dir: &Path| std::fs::read(dir.join(name)).unwrap();
        assert!(
            read(ours) == read(theirs),
            "{name}: kube-template and {} wrote different contents",
            peer.name()
        );
    }
    ours_names.len()
}
