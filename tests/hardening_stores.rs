//! The stores and the loop that feeds them, at their edges: a flood of events
//! must not hold a render back past `render.wait.max`.
//!
//! Pipeline tests here run `pipeline::run` in the test process with sources
//! the test feeds itself, so that it controls every event.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kube_template::object::document::Document;
use kube_template::pipeline::{self, RunOptions};
use kube_template::source::{self, Event, SourceEvent, Sources};
use kube_template::telemetry::Telemetry;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout};

/// Upper bound for a whole test.
const TEST_DEADLINE: Duration = Duration::from_secs(30);

fn config_map(name: &str, value: u64) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default", "uid": format!("00000000-0000-0000-0000-{:012}", 1),
                     "resourceVersion": value.to_string()},
        "data": {"v": value.to_string()},
    })
}

/// Waits until the file at `path` satisfies `ok`, at most `within`; returns it.
async fn file_where(path: &Path, within: Duration, ok: impl Fn(&str) -> bool) -> Option<String> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && ok(&text)
        {
            return Some(text);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_events_does_not_hold_a_render_past_wait_max() {
    timeout(TEST_DEADLINE, async {
        let dir = tempfile::tempdir().unwrap();
        let config = "watched_resources:\n  cms: {api_version: v1, kind: ConfigMap}\n\
                      templates:\n  out: {path: out.txt, inline: \"{% for o in resources.cms %}{{ o.data.v }}{% endfor %}\"}\n\
                      render:\n  wait: {min: 200ms, max: 400ms}\n";
        std::fs::write(dir.path().join("config.yaml"), config).unwrap();
        let prepared = Arc::new(pipeline::prepare(&dir.path().join("config.yaml")).unwrap());
        let watches = source::plan(&prepared.config);
        let (tx, events) = mpsc::channel(1024);
        let sources = Sources {
            watches,
            expected: vec![(0, None)],
            events,
            tasks: JoinSet::new(),
            caches: Default::default(),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let telemetry = Arc::new(Telemetry::default());
        let run = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            pipeline::run(prepared, sources, RunOptions::default(), telemetry, shutdown).await
        });
        let listed = Event::Listed {
            scope: None,
            objects: vec![Document::from_json(&config_map("a", 0))],
        };
        tx.send(SourceEvent { watch: 0, event: listed }).await.unwrap();
        let out = dir.path().join("out.txt");
        file_where(&out, Duration::from_secs(10), |t| t == "0")
            .await
            .expect("the first render");

        // Events without a pause, far more often than wait.min.
        let flood = tokio::spawn(async move {
            for version in 1.. {
                let object = Document::from_json(&config_map("a", version));
                let event = SourceEvent {
                    watch: 0,
                    event: Event::Applied(object),
                };
                if tx.send(event).await.is_err() {
                    break;
                }
            }
        });
        let started = Instant::now();
        let rendered = file_where(&out, Duration::from_secs(5), |t| t != "0").await;
        let after = started.elapsed();
        flood.abort();
        let _ = stop.send(());
        let _ = run.await;
        let text = rendered.unwrap_or_else(|| panic!("no render within {after:?} of a flood of events"));
        // wait.max, plus the render and a loaded machine's scheduling.
        assert!(after < Duration::from_millis(1500), "rendered {text:?} only after {after:?}");
    })
    .await
    .expect("test did not finish before its deadline");
}
