//! What replicas cost the API server (README, Scale): requests, bytes and
//! connections at start and while idle, for one replica and for a fleet.
//!
//! Every figure here is counted by the fake server on its side of the wire
//! (`FakeApiServer::traffic`): bytes are everything written to the client,
//! headers and chunk framing included.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::fake_api::FakeApiServer;
use super::peer::Peer;
use super::{MIB, config_map, rss};

/// ConfigMaps on the server, split over the two watches by a label.
const OBJECTS: usize = 1_000;
/// The real API server's bookmark frequency (its watch cache sends one a
/// minute, and one just before a watch times out); the fake's default is 1 s.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(60);
/// `--watch-timeout`'s default.
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(290);
/// kiwigrid/k8s-sidecar's `WATCH_SERVER_TIMEOUT` default.
const PEER_DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(60);

/// A server with `OBJECTS` ConfigMaps labelled `half=a` or `half=b`.
fn server(runtime: &tokio::runtime::Runtime) -> (FakeApiServer, u64) {
    let server = runtime.block_on(FakeApiServer::start());
    server.set_bookmark_interval(BOOKMARK_INTERVAL);
    let bytes = (0..OBJECTS)
        .map(|i| {
            let mut object = config_map(i);
            object["metadata"]["labels"]["half"] = json!(if i % 2 == 0 { "a" } else { "b" });
            serde_json::to_vec(&server.apply(object)).unwrap().len() as u64
        })
        .sum();
    (server, bytes)
}

/// A config with two watches (one per half) and one template over both.
fn write_config(dir: &Path) {
    let config = r#"watched_resources:
  a: {api_version: v1, kind: ConfigMap, label_selector: "half=a"}
  b: {api_version: v1, kind: ConfigMap, label_selector: "half=b"}
templates:
  t:
    inline: "{% for cm in resources.a %}{{ cm.metadata.name }}\n{% endfor %}{% for cm in resources.b %}{{ cm.metadata.name }}\n{% endfor %}"
    path: out.txt
admin: {listen: "127.0.0.1:0"}
"#;
    std::fs::write(dir.join("config.yaml"), config).unwrap();
}

/// Sidecars that are killed when this is dropped, panics included.
struct Fleet(Vec<Child>);

impl Fleet {
    fn spawn(&mut self, server: &FakeApiServer, dir: &Path, watch_timeout: Duration) {
        let child = Command::new(super::binary())
            .args(["--log-level", "warn", "run", "-c"])
            .arg(dir.join("config.yaml"))
            .arg("--kubeconfig")
            .arg(server.kubeconfig_path())
            .arg("--watch-timeout")
            .arg(format!("{}s", watch_timeout.as_secs()))
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        self.0.push(child);
    }

    /// Waits until every sidecar wrote its output and both its watches are open.
    fn wait_synced(&mut self, server: &FakeApiServer, dirs: &[tempfile::TempDir]) {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            for child in &mut self.0 {
                assert!(child.try_wait().unwrap().is_none(), "a sidecar exited");
            }
            let written = dirs.iter().all(|d| d.path().join("out.txt").exists());
            if written && server.open_watches("configmaps") == 2 * self.0.len() {
                return;
            }
            assert!(Instant::now() < deadline, "the fleet never synced");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident memory of all sidecars: (total, anonymous) in bytes.
    fn rss(&self) -> (u64, u64) {
        self.0.iter().fold((0, 0), |(total, anon), child| {
            let (t, a, _) = rss(child.id()).expect("the sidecar is running");
            (total + t, anon + a)
        })
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
        }
        for child in &mut self.0 {
            let _ = child.wait();
        }
    }
}

/// ConfigMap requests so far: LIST, WATCH, GET.
fn verbs(server: &FakeApiServer) -> (u64, u64, u64) {
    (
        server.list_count("configmaps"),
        server.watch_count("configmaps"),
        server.get_count("configmaps"),
    )
}

fn kib(bytes: f64) -> String {
    format!("{:.1} KiB", bytes / 1024.0)
}

/// One replica: its start, then an idle window with a short `--watch-timeout`
/// so that re-watches happen in it, scaled to the default timeout.
pub fn one_replica(runtime: &tokio::runtime::Runtime) {
    let (server, json_bytes) = server(runtime);
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path());
    let (timeout, window) = (Duration::from_secs(10), Duration::from_secs(60));
    let mut fleet = Fleet(Vec::new());
    fleet.spawn(&server, dir.path(), timeout);
    fleet.wait_synced(&server, std::slice::from_ref(&dir));
    let start = server.traffic();
    let (lists, watches, gets) = verbs(&server);
    // Bookmarks every 60 s never come on watches that end after 10 s; a
    // shorter interval here measures what one costs.
    server.set_bookmark_interval(Duration::from_secs(5));
    std::thread::sleep(window);
    let idle = server.traffic() - start;
    let (lists_idle, watches_idle, gets_idle) = verbs(&server);
    let (rewatches, relists) = (watches_idle - watches, lists_idle - lists);
    let rewatch_bytes = idle.bytes_sent - idle.bookmark_bytes;
    let per_rewatch = rewatch_bytes as f64 / rewatches.max(1) as f64;
    let per_bookmark = idle.bookmark_bytes as f64 / idle.bookmarks.max(1) as f64;
    // At the defaults: each of the 2 watches re-watches every 290 s and gets a
    // bookmark a minute.
    let per_minute = 2.0 * (per_rewatch * 60.0 / DEFAULT_WATCH_TIMEOUT.as_secs_f64() + per_bookmark);

    println!(
        "\n### one replica: 2 watches over {OBJECTS} ConfigMaps ({:.2} MiB of JSON)\n",
        json_bytes as f64 / MIB
    );
    println!("| phase | requests (LIST / WATCH / GET) | bytes sent | connections (opened / open) |");
    println!("|---|---:|---:|---:|");
    println!(
        "| start, to first render + watches open (measured) | {} ({lists} / {watches} / {gets}) | {} | {} / {} |",
        start.requests,
        kib(start.bytes_sent as f64),
        start.connections,
        start.open_connections
    );
    println!(
        "| idle {} s, `--watch-timeout {}s`, bookmarks every 5 s (measured) | {} ({relists} / {rewatches} / {}) | {} ({} in {} bookmarks) | {} / {} |",
        window.as_secs(),
        timeout.as_secs(),
        idle.requests,
        gets_idle - gets,
        kib(idle.bytes_sent as f64),
        kib(idle.bookmark_bytes as f64),
        idle.bookmarks,
        idle.connections,
        idle.open_connections
    );
    println!(
        "| idle per minute at the defaults (290 s timeout, 1 bookmark/min; derived) | {:.2} WATCH, 0 LIST | {} | 0 / {} |",
        2.0 * 60.0 / DEFAULT_WATCH_TIMEOUT.as_secs_f64(),
        kib(per_minute),
        idle.open_connections
    );
    println!(
        "\none re-watch: {} (request + response headers, no objects); one bookmark: {} bytes of event line",
        kib(per_rewatch),
        per_bookmark.round()
    );
}

/// `count` replicas against one server: start, then one idle minute at the
/// defaults.
pub fn fleet(runtime: &tokio::runtime::Runtime, count: usize) {
    let (server, json_bytes) = server(runtime);
    let dirs: Vec<_> = (0..count).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut fleet = Fleet(Vec::with_capacity(count));
    let started = Instant::now();
    for dir in &dirs {
        write_config(dir.path());
        fleet.spawn(&server, dir.path(), DEFAULT_WATCH_TIMEOUT);
    }
    fleet.wait_synced(&server, &dirs);
    let synced = started.elapsed();
    let start = server.traffic();
    let (lists, watches, gets) = verbs(&server);
    let window = Duration::from_secs(60);
    std::thread::sleep(window);
    let idle = server.traffic() - start;
    let (total_rss, anon_rss) = fleet.rss();
    let (lists_idle, watches_idle, _) = verbs(&server);

    println!(
        "\n### fleet: {count} replicas, 2 watches each over {OBJECTS} ConfigMaps ({:.2} MiB of JSON), one server\n",
        json_bytes as f64 / MIB
    );
    println!("| what | measured |");
    println!("|---|---:|");
    println!(
        "| all synced (first render written, watches open) | {:.1} s |",
        synced.as_secs_f64()
    );
    println!(
        "| requests at start (LIST / WATCH / GET) | {} ({lists} / {watches} / {gets}) |",
        start.requests
    );
    println!("| bytes sent at start | {:.1} MiB |", start.bytes_sent as f64 / MIB);
    println!(
        "| connections opened / open at idle | {} / {} |",
        start.connections + idle.connections,
        idle.open_connections
    );
    println!(
        "| idle minute, defaults: requests (LIST / WATCH) | {} ({} / {}) |",
        idle.requests,
        lists_idle - lists,
        watches_idle - watches
    );
    println!(
        "| idle minute, defaults: bytes sent ({} bookmarks) | {} |",
        idle.bookmarks,
        kib(idle.bytes_sent as f64)
    );
    println!(
        "| resident memory of the fleet: total (anonymous) | {:.0} MiB ({:.0} MiB) |",
        total_rss as f64 / MIB,
        anon_rss as f64 / MIB
    );
}

/// kiwigrid/k8s-sidecar as one replica on the same server: one watch over both
/// halves (`LABEL=half`), its start, then an idle window with a short
/// `WATCH_SERVER_TIMEOUT` so that its re-watches happen in it, scaled to its
/// default of 60 s.
pub fn peer_replica(runtime: &tokio::runtime::Runtime, peer: &Peer) {
    let (server, json_bytes) = server(runtime);
    let dir = tempfile::tempdir().unwrap();
    let (timeout, window) = (Duration::from_secs(10), Duration::from_secs(30));
    let timeout_text = timeout.as_secs().to_string();
    let env = [
        ("LABEL", "half"),
        ("NAMESPACE", "ALL"),
        ("UNIQUE_FILENAMES", "true"),
        ("WATCH_SERVER_TIMEOUT", timeout_text.as_str()),
    ];
    let mut child = peer.spawn(&server, dir.path(), &env, false);
    let deadline = Instant::now() + Duration::from_secs(120);
    let files = || std::fs::read_dir(dir.path().join("out")).map_or(0, |d| d.count());
    while files() < 2 * OBJECTS || server.open_watches("configmaps") < 1 {
        assert!(child.try_wait().unwrap().is_none(), "k8s-sidecar exited");
        assert!(Instant::now() < deadline, "k8s-sidecar never synced");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Its first watch starts with no resourceVersion, so the server sends
    // every object again as ADDED, possibly after the files are written: that
    // belongs to the start, not to the idle window.
    let mut sent = server.traffic().bytes_sent;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = server.traffic().bytes_sent;
        if now == sent {
            break;
        }
        sent = now;
        assert!(Instant::now() < deadline, "k8s-sidecar's first watch never went quiet");
    }
    let start = server.traffic();
    let (lists, watches, gets) = verbs(&server);
    std::thread::sleep(window);
    let idle = server.traffic() - start;
    let (lists_idle, watches_idle, _) = verbs(&server);
    super::peer::kill_tree(child);
    let rewatches = watches_idle - watches;
    let per_rewatch = idle.bytes_sent as f64 / rewatches.max(1) as f64;
    let per_minute = per_rewatch * 60.0 / PEER_DEFAULT_WATCH_TIMEOUT.as_secs_f64();

    println!(
        "\n### kiwigrid/k8s-sidecar, one replica: 1 watch over {OBJECTS} ConfigMaps ({:.2} MiB of JSON)\n",
        json_bytes as f64 / MIB
    );
    println!("| phase | requests (LIST / WATCH / GET) | bytes sent | connections (opened / open) |");
    println!("|---|---:|---:|---:|");
    println!(
        "| start, to files written + watch open (measured) | {} ({lists} / {watches} / {gets}) | {} | {} / {} |",
        start.requests,
        kib(start.bytes_sent as f64),
        start.connections,
        start.open_connections
    );
    println!(
        "| idle {} s, `WATCH_SERVER_TIMEOUT={}` (measured) | {} ({} / {rewatches} / 0) | {} | {} / {} |",
        window.as_secs(),
        timeout.as_secs(),
        idle.requests,
        lists_idle - lists,
        kib(idle.bytes_sent as f64),
        idle.connections,
        idle.open_connections
    );
    println!(
        "| idle per minute at its default (60 s; derived) | {:.2} WATCH | {} | |",
        60.0 / PEER_DEFAULT_WATCH_TIMEOUT.as_secs_f64(),
        kib(per_minute)
    );
    println!("\none re-watch: {} (every object again)", kib(per_rewatch));
}
