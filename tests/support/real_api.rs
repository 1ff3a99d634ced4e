//! A real kube-apiserver (1.20) on etcd, on 127.0.0.1 at random ports, for the
//! real-server suite (`tests/real_api.rs`).
//!
//! One server per test binary, started on first use and killed when the test
//! binary exits (a watchdog per process waits for the test process to go).
//! Tests share it through distinct namespaces and hold [`RealApi::shared`];
//! a test that restarts the server holds [`RealApi::exclusive`] instead, so
//! that no other test sees the outage.
//!
//! The binaries come from `scripts/kube-apiserver.sh`: `KUBE_APISERVER_BIN`
//! (else the script's cache) and `ETCD_BIN` (else `etcd` on `PATH` or in
//! `/usr/bin`). Without them the tests say they were skipped and pass, unless
//! `KUBE_TEMPLATE_REAL_API=1`, which makes a missing binary a failure.

#![allow(dead_code)] // each test uses part of it

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, ListParams, PostParams};
use serde_json::{Value, json};
use tokio::sync::{OnceCell, RwLock, RwLockReadGuard, RwLockWriteGuard};
use tokio::time::{Instant, sleep};

/// The Kubernetes version `scripts/kube-apiserver.sh` builds.
pub const VERSION: &str = "1.20.2";
/// Token of `admin`, in `system:masters`: for setting up.
pub const ADMIN_TOKEN: &str = "admin-token-for-tests";
/// The user with no groups, so that RBAC applies to it.
pub const USER: &str = "kube-template";
pub const USER_TOKEN: &str = "user-token-for-tests";
/// Another user with no groups, for the test that grants it roles.
pub const RBAC_USER: &str = "kube-template-rbac";
pub const RBAC_TOKEN: &str = "rbac-token-for-tests";
/// How long the API server may take to answer `/readyz` after a start.
const START_WITHIN: Duration = Duration::from_secs(90);
/// Upper bound for one awaited condition against the real server.
pub const WAIT: Duration = Duration::from_secs(40);
pub const POLL: Duration = Duration::from_millis(50);

static SERVER: OnceCell<Option<RealApi>> = OnceCell::const_new();

/// etcd and a kube-apiserver, with the files they need.
pub struct RealApi {
    pub dir: PathBuf,
    pub port: u16,
    pub etcd_port: u16,
    apiserver_bin: PathBuf,
    apiserver_args: Vec<OsString>,
    apiserver: Mutex<Child>,
    /// Runs until this test process exits (then its watchdog kills it).
    _etcd: Child,
    /// Readers: tests that need the server up; writer: a test restarting it.
    turns: RwLock<()>,
}

/// Who a kubeconfig or client acts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    Admin,
    User,
    Rbac,
}

impl RealApi {
    /// The server of this test binary, started on first use; `None` (after
    /// saying why) when its binaries are missing and the suite is optional.
    pub async fn get() -> Option<&'static RealApi> {
        SERVER.get_or_init(|| async { RealApi::start().await }).await.as_ref()
    }

    async fn start() -> Option<RealApi> {
        let required = std::env::var("KUBE_TEMPLATE_REAL_API").is_ok_and(|v| v == "1");
        let (apiserver_bin, etcd_bin) = match binaries() {
            Ok(found) => found,
            Err(missing) if required => panic!("KUBE_TEMPLATE_REAL_API=1 but {missing}"),
            Err(missing) => {
                eprintln!(
                    "skipped: the real API server suite needs kube-apiserver and etcd ({missing}); \
                     run scripts/kube-apiserver.sh and set KUBE_APISERVER_BIN to the path it prints"
                );
                return None;
            }
        };
        let dir = tempfile::Builder::new()
            .prefix("kube-template-real-api")
            .tempdir()
            .expect("temporary directory")
            .keep();
        let etcd_port = free_port();
        let peer_port = free_port();
        let port = free_port();
        let etcd = Command::new(&etcd_bin)
            .args(["--name", "default", "--data-dir"])
            .arg(dir.join("etcd"))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"))
            .arg(format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
            .arg(format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"))
            .arg(format!("--initial-cluster=default=http://127.0.0.1:{peer_port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("etcd.log")).unwrap())
            .spawn()
            .expect("etcd starts");
        watchdog(etcd.id(), Some(&dir));

        let key = dir.join("sa.key");
        let status = Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(&key)
            .arg("2048")
            .stderr(Stdio::null())
            .status()
            .expect("openssl runs");
        assert!(status.success(), "openssl genrsa failed");
        std::fs::write(
            dir.join("tokens.csv"),
            format!(
                "{ADMIN_TOKEN},admin,admin-uid,\"system:masters\"\n{USER_TOKEN},{USER},user-uid\n\
                 {RBAC_TOKEN},{RBAC_USER},rbac-uid\n"
            ),
        )
        .unwrap();
        // Secret GETs at Metadata level: how many GETs of which Secret (test 8).
        std::fs::write(
            dir.join("audit-policy.yaml"),
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n\
             - level: Metadata\n  verbs: [get, list, watch]\n  resources: [{group: \"\", resources: [secrets]}]\n\
             - level: None\n",
        )
        .unwrap();
        let arg = |text: String| OsString::from(text);
        let path = |name: &str| dir.join(name).into_os_string();
        let mut args = vec![
            arg(format!("--etcd-servers=http://127.0.0.1:{etcd_port}")),
            arg("--bind-address=127.0.0.1".into()),
            arg("--advertise-address=127.0.0.1".into()),
            arg(format!("--secure-port={port}")),
            arg("--insecure-port=0".into()),
            arg("--authorization-mode=RBAC".into()),
            arg("--service-cluster-ip-range=10.96.0.0/16".into()),
            arg("--disable-admission-plugins=ServiceAccount".into()),
            arg("--service-account-issuer=https://kubernetes.default.svc".into()),
            arg("--api-audiences=https://kubernetes.default.svc".into()),
            arg("--enable-priority-and-fairness=false".into()),
            arg("--profiling=false".into()),
        ];
        for (flag, file) in [
            ("--cert-dir", "certs"),
            ("--token-auth-file", "tokens.csv"),
            ("--service-account-signing-key-file", "sa.key"),
            ("--service-account-key-file", "sa.key"),
            ("--audit-policy-file", "audit-policy.yaml"),
            ("--audit-log-path", "audit.log"),
        ] {
            let mut text = OsString::from(format!("{flag}="));
            text.push(path(file));
            args.push(text);
        }
        let apiserver = spawn_apiserver(&apiserver_bin, &args, &dir);
        let api = RealApi {
            dir,
            port,
            etcd_port,
            apiserver_bin,
            apiserver_args: args,
            apiserver: Mutex::new(apiserver),
            _etcd: etcd,
            turns: RwLock::new(()),
        };
        for who in [Who::Admin, Who::User, Who::Rbac] {
            std::fs::write(api.kubeconfig(who), api.kubeconfig_text(who)).unwrap();
        }
        api.until_ready().await;
        Some(api)
    }

    /// Holds the server up for the caller's test (other tests may run too).
    pub async fn shared(&self) -> RwLockReadGuard<'_, ()> {
        self.turns.read().await
    }

    /// Holds the server for the caller's test alone (it may restart it).
    pub async fn exclusive(&self) -> RwLockWriteGuard<'_, ()> {
        self.turns.write().await
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// A kubeconfig file acting as `who`.
    pub fn kubeconfig(&self, who: Who) -> PathBuf {
        self.dir.join(match who {
            Who::Admin => "admin.kubeconfig",
            Who::User => "user.kubeconfig",
            Who::Rbac => "rbac.kubeconfig",
        })
    }

    fn kubeconfig_text(&self, who: Who) -> String {
        let token = match who {
            Who::Admin => ADMIN_TOKEN,
            Who::User => USER_TOKEN,
            Who::Rbac => RBAC_TOKEN,
        };
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: real\n  cluster:\n    server: {}\n    \
             insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: {token}\n\
             contexts:\n- name: real\n  context: {{cluster: real, user: u}}\ncurrent-context: real\n",
            self.url()
        )
    }

    /// A kube client acting as `who`. Each test makes its own: a client's
    /// connections belong to the runtime that opened them.
    pub async fn client(&self, who: Who) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(self.kubeconfig(who)).expect("kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("kubeconfig is valid");
        kube::Client::try_from(config).expect("client")
    }

    /// A new namespace named after `test` (plus a suffix, so reruns on the same
    /// server never meet a namespace that is still terminating).
    pub async fn namespace(&self, test: &str) -> String {
        let name = format!("{}-{:x}", test.replace('_', "-"), rand_suffix());
        let name: String = name
            .chars()
            .take(63)
            .collect::<String>()
            .trim_end_matches('-')
            .to_string();
        let api: Api<Namespace> = Api::all(self.client(Who::Admin).await);
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        api.create(&PostParams::default(), &ns).await.expect("create namespace");
        name
    }

    /// Kills the API server with SIGKILL (etcd keeps running).
    pub fn kill(&self) {
        let mut child = self.apiserver.lock().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts the API server again, on the same port with the same etcd,
    /// certificates and tokens, and waits until it is ready.
    pub async fn start_again(&self) {
        let child = spawn_apiserver(&self.apiserver_bin, &self.apiserver_args, &self.dir);
        *self.apiserver.lock().unwrap() = child;
        self.until_ready().await;
    }

    /// Whether `/readyz` answers 200 (any answer from this port means the
    /// server is up; `/readyz` waits for its post-start hooks).
    async fn until_ready(&self) {
        let client = self.client(Who::Admin).await;
        let deadline = Instant::now() + START_WITHIN;
        loop {
            let request = http::Request::get("/readyz").body(Vec::new()).unwrap();
            if client.request_text(request).await.is_ok_and(|body| body.trim() == "ok") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver not ready within {START_WITHIN:?}\n--- log tail ---\n{}",
                tail(&self.dir.join("apiserver.log"), 40)
            );
            sleep(Duration::from_millis(200)).await;
        }
    }

    /// Compacts etcd up to its current revision, so that every older
    /// resourceVersion is gone (after an API server restart, its watch cache
    /// is gone too, and old versions get real 410s).
    pub fn compact(&self) {
        // etcd's gRPC gateway; keys and values are base64.
        let range = self.etcd_post("/v3/kv/range", &json!({"key": "AA==", "keys_only": true, "limit": 1}));
        let revision = range["header"]["revision"].as_str().expect("etcd revision").to_string();
        let compacted = self.etcd_post("/v3/kv/compaction", &json!({"revision": revision, "physical": true}));
        assert!(compacted.get("error").is_none(), "etcd compaction failed: {compacted}");
    }

    fn etcd_post(&self, path: &str, body: &Value) -> Value {
        let mut stream = TcpStream::connect(("127.0.0.1", self.etcd_port)).expect("etcd answers");
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let body = body.to_string();
        write!(
            stream,
            // HTTP/1.0: a plain body, never chunked.
            "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (_, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
        serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("etcd answered {body:?}: {e}"))
    }

    /// The audit log's entries so far.
    pub fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.join("audit.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// The objects of these kinds in `namespace`, as one `kind: List` JSON
    /// document, each item with its `apiVersion` and `kind`: what
    /// `kubectl get -o json` writes, for `render --from`.
    pub async fn dump(&self, namespace: &str, kinds: &[ApiResource]) -> String {
        let client = self.client(Who::Admin).await;
        let mut items = Vec::new();
        for ar in kinds {
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, ar);
            for mut object in api.list(&ListParams::default()).await.expect("list").items {
                object.types = Some(kube::api::TypeMeta {
                    api_version: ar.api_version.clone(),
                    kind: ar.kind.clone(),
                });
                items.push(serde_json::to_value(object).unwrap());
            }
        }
        serde_json::to_string_pretty(&json!({"apiVersion": "v1", "kind": "List", "items": items})).unwrap()
    }
}

/// Waits until `probe` gives a value; panics with `what` and `context()` after [`WAIT`].
pub async fn until<T>(what: &str, context: impl Fn() -> String, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}\n{}", context());
        sleep(POLL).await;
    }
}

fn spawn_apiserver(bin: &Path, args: &[OsString], dir: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("apiserver.log"))
        .unwrap();
    let child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("kube-apiserver starts");
    watchdog(child.id(), None);
    child
}

/// Kills `pid` (and removes `dir`) once this test process is gone: statics
/// are never dropped, and a server must not outlive its tests.
// The watchdog is meant to outlive this process, so it is never waited for.
#[allow(clippy::zombie_processes)]
fn watchdog(pid: u32, dir: Option<&Path>) {
    let me = std::process::id();
    let mut script = format!(
        "while kill -0 {me} 2>/dev/null && kill -0 {pid} 2>/dev/null; do sleep 1; done; kill -9 {pid} 2>/dev/null"
    );
    if let Some(dir) = dir {
        let _ = write!(script, "; sleep 1; rm -rf '{}'", dir.display());
    }
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sh starts");
}

/// The kube-apiserver and etcd binaries, or what is missing.
fn binaries() -> Result<(PathBuf, PathBuf), String> {
    let apiserver = match std::env::var_os("KUBE_APISERVER_BIN") {
        Some(path) => PathBuf::from(path),
        None => {
            let cache = std::env::var_os("KUBE_TEMPLATE_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    std::env::var_os("XDG_CACHE_HOME")
                        .map(PathBuf::from)
                        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache"))
                        .join("kube-template")
                });
            cache.join(format!("kube-apiserver-{VERSION}"))
        }
    };
    if !apiserver.is_file() {
        return Err(format!("no kube-apiserver at {}", apiserver.display()));
    }
    let etcd = match std::env::var_os("ETCD_BIN") {
        Some(path) => Some(PathBuf::from(path)),
        None => std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .chain([PathBuf::from("/usr/bin")])
            .map(|dir| dir.join("etcd"))
            .find(|path| path.is_file()),
    };
    match etcd {
        Some(etcd) if etcd.is_file() => Ok((apiserver, etcd)),
        _ => Err("no etcd (ETCD_BIN, PATH or /usr/bin)".into()),
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn rand_suffix() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now()) as u32 & 0xfffff
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
