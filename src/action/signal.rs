//! Signal actions: a signal sent to every process with a given name, or to
//! the pid a pid file holds, so that a daemon is reloaded without a shell or
//! `kill` in the image. Processes are found through `/proc`; in a pod, the
//! daemon's container is visible there with `shareProcessNamespace: true`.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Where a signal action sends its signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalTarget {
    /// Every process whose comm or `argv[0]` basename is this name.
    Process(String),
    /// The pid written in this file.
    PidFile(PathBuf),
}

impl std::fmt::Display for SignalTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignalTarget::Process(name) => write!(f, "process `{name}`"),
            SignalTarget::PidFile(path) => write!(f, "pid_file `{}`", path.display()),
        }
    }
}

/// Why a signal could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No process has the name; in a pod, the daemon's container is only
    /// visible with `shareProcessNamespace: true`.
    #[error("no process named `{name}` (comm or argv[0]) in {}; in a pod, set shareProcessNamespace: true", proc.display())]
    NoProcess { name: String, proc: PathBuf },
    /// The process table could not be read.
    #[error("cannot list processes in {}: {source}", proc.display())]
    Proc {
        proc: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The pid file could not be read.
    #[error("pid_file `{}`: cannot read: {source}", path.display())]
    PidFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The pid file holds no pid.
    #[error("pid_file `{}` holds no pid: `{content}`", path.display())]
    NoPid { path: PathBuf, content: String },
    /// The pid file names a process that has exited.
    #[error("process {pid} of pid_file `{}` is gone", path.display())]
    Gone { pid: i32, path: PathBuf },
    /// The signal was refused (permissions) or the process vanished.
    #[error("cannot send {} to process {pid} ({target}): {source}", name(*signal))]
    Send {
        signal: Signal,
        pid: i32,
        target: SignalTarget,
        #[source]
        source: Errno,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The short name of a signal, as configs write it: `HUP`.
pub fn name(signal: Signal) -> &'static str {
    let full = signal.as_str();
    full.strip_prefix("SIG").unwrap_or(full)
}

/// Sends `signal` to the processes of `target`, found under `proc` (the
/// `/proc` directory); returns their pids. Reading `/proc` touches no disk,
/// so this runs on the caller's thread.
pub fn send(signal: Signal, target: &SignalTarget, proc: &Path) -> Result<Vec<i32>> {
    let pids = match target {
        SignalTarget::Process(name) => {
            let pids = find(proc, name)?;
            if pids.is_empty() {
                return Err(Error::NoProcess {
                    name: name.clone(),
                    proc: proc.to_path_buf(),
                });
            }
            pids
        }
        SignalTarget::PidFile(path) => vec![read_pid_file(path)?],
    };
    for &pid in &pids {
        match kill(Pid::from_raw(pid), signal) {
            Ok(()) => {}
            Err(Errno::ESRCH) if matches!(target, SignalTarget::PidFile(_)) => {
                let SignalTarget::PidFile(path) = target else {
                    unreachable!()
                };
                return Err(Error::Gone {
                    pid,
                    path: path.clone(),
                });
            }
            Err(source) => {
                return Err(Error::Send {
                    signal,
                    pid,
                    target: target.clone(),
                    source,
                });
            }
        }
    }
    Ok(pids)
}

/// The pids under `proc` whose comm or `argv[0]` basename is `name`, in
/// order, leaving out this process (a signal meant for a daemon must not stop
/// kube-template itself).
pub fn find(proc: &Path, name: &str) -> Result<Vec<i32>> {
    let entries = std::fs::read_dir(proc).map_err(|source| Error::Proc {
        proc: proc.to_path_buf(),
        source,
    })?;
    let own = std::process::id() as i32;
    let mut pids: Vec<i32> = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != own && is_named(&proc.join(pid.to_string()), name))
        .collect();
    pids.sort_unstable();
    Ok(pids)
}

/// Whether the process whose `/proc` entry is `dir` is called `name`. A
/// process that exits while it is looked at is not.
fn is_named(dir: &Path, name: &str) -> bool {
    let comm = std::fs::read(dir.join("comm")).unwrap_or_default();
    if comm.strip_suffix(b"\n").unwrap_or(&comm) == name.as_bytes() {
        return true;
    }
    // comm is cut at 15 bytes and is the executable's name; argv[0] is what
    // the process was started as (`nginx: master process` included).
    let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
    let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
    let basename = argv0.rsplit(|&b| b == b'/').next().unwrap_or_default();
    !basename.is_empty() && basename == name.as_bytes()
}

fn read_pid_file(path: &Path) -> Result<i32> {
    let content = std::fs::read_to_string(path).map_err(|source| Error::PidFile {
        path: path.to_path_buf(),
        source,
    })?;
    match content.trim().parse::<i32>() {
        Ok(pid) if pid > 0 => Ok(pid),
        _ => Err(Error::NoPid {
            path: path.to_path_buf(),
            content: content.trim().chars().take(40).collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::process::{Child, Command};

    use super::*;

    /// A `sleep` started as `argv0`, killed when the test ends.
    struct Sleeper(Child);

    impl Sleeper {
        /// Starts `sleep 30` as `argv0`, and returns once its /proc entry
        /// shows that name: the kernel lets `spawn` return before it has set
        /// up the new program's arguments.
        fn start(argv0: &str) -> Sleeper {
            let sleeper = Sleeper(Command::new("sleep").arg0(argv0).arg("30").spawn().unwrap());
            let cmdline = format!("/proc/{}/cmdline", sleeper.pid());
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !std::fs::read(&cmdline)
                .unwrap_or_default()
                .starts_with(argv0.as_bytes())
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{argv0} never showed in {cmdline}"
                );
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            sleeper
        }

        fn pid(&self) -> i32 {
            self.0.id() as i32
        }

        /// The signal that ended it; panics if it does not end within 10s.
        fn ended_by(&mut self) -> Option<i32> {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                if let Some(status) = self.0.try_wait().unwrap() {
                    return status.signal();
                }
                assert!(std::time::Instant::now() < deadline, "the process did not end");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }

    impl Drop for Sleeper {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn signals_are_named_as_configs_write_them() {
        assert_eq!(name(Signal::SIGUSR1), "USR1");
        assert_eq!(name(Signal::SIGHUP), "HUP");
    }

    #[test]
    fn every_process_named_by_its_argv0_basename_gets_the_signal() {
        let name = format!("kt-sig-{}", std::process::id());
        let mut first = Sleeper::start(&format!("/some/dir/{name}"));
        let mut second = Sleeper::start(&name);
        let mut other = Sleeper::start(&format!("{name}-other"));
        let pids = send(Signal::SIGTERM, &SignalTarget::Process(name), Path::new("/proc")).unwrap();
        let mut expected = vec![first.pid(), second.pid()];
        expected.sort_unstable();
        assert_eq!(pids, expected);
        assert_eq!(first.ended_by(), Some(libc::SIGTERM));
        assert_eq!(second.ended_by(), Some(libc::SIGTERM));
        assert_eq!(
            other.0.try_wait().unwrap(),
            None,
            "a process of another name was signalled"
        );
    }

    #[test]
    fn a_process_is_found_by_its_comm_too() {
        let dir = tempfile::tempdir().unwrap();
        let entry = dir.path().join("4242");
        std::fs::create_dir(&entry).unwrap();
        std::fs::write(entry.join("comm"), "haproxy\n").unwrap();
        std::fs::write(entry.join("cmdline"), b"/usr/sbin/haproxy-wrapper\0-f\0x\0").unwrap();
        std::fs::create_dir(dir.path().join("self")).unwrap();
        assert_eq!(find(dir.path(), "haproxy").unwrap(), vec![4242]);
        assert_eq!(find(dir.path(), "haproxy-wrapper").unwrap(), vec![4242]);
        assert!(find(dir.path(), "wrapper").unwrap().is_empty());
    }

    #[test]
    fn no_process_of_that_name_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let error = send(Signal::SIGHUP, &SignalTarget::Process("haproxy".into()), dir.path()).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("no process named `haproxy`"), "{text}");
        assert!(text.contains("shareProcessNamespace"), "{text}");
    }

    #[test]
    fn the_pid_in_a_pid_file_gets_the_signal() {
        let dir = tempfile::tempdir().unwrap();
        let mut sleeper = Sleeper::start("kt-pid-file");
        let pid_file = dir.path().join("daemon.pid");
        std::fs::write(&pid_file, format!("{}\n", sleeper.pid())).unwrap();
        let pids = send(Signal::SIGUSR1, &SignalTarget::PidFile(pid_file), Path::new("/proc")).unwrap();
        assert_eq!(pids, vec![sleeper.pid()]);
        assert_eq!(sleeper.ended_by(), Some(libc::SIGUSR1));
    }

    #[test]
    fn a_pid_file_that_is_missing_empty_or_stale_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("daemon.pid");
        let target = SignalTarget::PidFile(pid_file.clone());
        let missing = send(Signal::SIGHUP, &target, Path::new("/proc")).unwrap_err();
        assert!(matches!(missing, Error::PidFile { .. }), "{missing}");
        assert!(missing.to_string().contains("daemon.pid"), "{missing}");

        std::fs::write(&pid_file, "not a pid\n").unwrap();
        let garbage = send(Signal::SIGHUP, &target, Path::new("/proc")).unwrap_err();
        assert!(garbage.to_string().contains("holds no pid: `not a pid`"), "{garbage}");

        let mut exited = Command::new("true").spawn().unwrap();
        let pid = exited.id();
        exited.wait().unwrap();
        std::fs::write(&pid_file, pid.to_string()).unwrap();
        let gone = send(Signal::SIGHUP, &target, Path::new("/proc")).unwrap_err();
        assert!(
            gone.to_string().starts_with(&format!("process {pid} of pid_file `")),
            "{gone}"
        );
    }
}
