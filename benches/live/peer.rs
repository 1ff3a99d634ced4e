//! kiwigrid/k8s-sidecar, the Python program `kube-template k8s-sidecar`
//! replaces, run on the same jobs as the `k8s-sidecar:` rows (README,
//! Replacing k8s-sidecar) against the same fake server.
//!
//! Its code is not part of this repository: the rows run an existing checkout
//! named by the environment, and are skipped without one:
//! - `K8S_SIDECAR_SRC`: the checkout's directory holding `sidecar.py`;
//! - `K8S_SIDECAR_PYTHON`: a python with its requirements installed (default
//!   `python3`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use super::fake_api::FakeApiServer;
use super::{proc_kib, rss, sidecar_job};

/// How to enable the rows, printed when they are skipped.
pub const HOW_TO_ENABLE: &str = "kiwigrid/k8s-sidecar rows skipped: set K8S_SIDECAR_SRC to a checkout's directory holding sidecar.py, and K8S_SIDECAR_PYTHON to a python with its requirements installed (default python3)";

/// Starts `sidecar.py` as `python sidecar.py` would, except that the pod's
/// namespace file, which it opens at start whatever `NAMESPACE` says, reads
/// `default` when this machine has none (outside a pod it does not).
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

/// A k8s-sidecar checkout and the python to run it with.
pub struct Peer {
    src: PathBuf,
    python: PathBuf,
}

impl Peer {
    /// The checkout named by `K8S_SIDECAR_SRC`, if set; panics if it has no
    /// `sidecar.py` (a wrong path should not pass for a skipped row).
    pub fn from_env() -> Option<Peer> {
        let src = PathBuf::from(std::env::var_os("K8S_SIDECAR_SRC")?);
        assert!(
            src.join("sidecar.py").is_file(),
            "K8S_SIDECAR_SRC={}: no sidecar.py there",
            src.display()
        );
        let python = std::env::var_os("K8S_SIDECAR_PYTHON").map_or_else(|| PathBuf::from("python3"), PathBuf::from);
        Some(Peer { src, python })
    }

    /// k8s-sidecar with its variables `env`, writing to `dir/out`
    /// (`METHOD=LIST` when `once`, else `WATCH`).
    pub fn spawn(&self, server: &FakeApiServer, dir: &Path, env: &[(&str, &str)], once: bool) -> Child {
        let mut command = Command::new(&self.python);
        command
            .arg("-c")
            .arg(LAUNCHER)
            .arg(&self.src)
            .env("KUBECONFIG", server.kubeconfig_path());
        sidecar_job(&mut command, dir, env, once)
            .spawn()
            .unwrap_or_else(|e| panic!("K8S_SIDECAR_PYTHON={}: {e}", self.python.display()))
    }
}

/// `pid` and its descendants (k8s-sidecar forks one watcher process per
/// resource and namespace).
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

/// Kills `child` and its descendants (its watcher processes do not end with
/// it), and reaps it.
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
/// contents in every `stride`-th file: the two programs did the same job.
/// Returns the number of files.
pub fn same_files(ours: &Path, theirs: &Path, stride: usize) -> usize {
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
        "kube-template wrote {} files, k8s-sidecar {}",
        ours_names.len(),
        theirs_names.len()
    );
    assert!(ours_names == theirs_names, "the two wrote different file names");
    for name in ours_names.iter().step_by(stride.max(1)) {
        let read = |dir: &Path| std::fs::read(dir.join(name)).unwrap();
        assert!(read(ours) == read(theirs), "{name}: the two wrote different contents");
    }
    ours_names.len()
}
