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

/// `pipeline::run` over one ConfigMap store rendering `data.v` of each object
/// into `out.txt`, fed by the test through `tx`.
struct Pipeline {
    dir: tempfile::TempDir,
    tx: mpsc::Sender<SourceEvent>,
    telemetry: Arc<Telemetry>,
    stop: oneshot::Sender<()>,
    run: tokio::task::JoinHandle<Result<pipeline::Stopped, pipeline::RunError>>,
}

impl Pipeline {
    fn start(wait: &str) -> Pipeline {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "watched_resources:\n  cms: {{api_version: v1, kind: ConfigMap}}\n\
             templates:\n  out: {{path: out.txt, inline: \"{{% for o in resources.cms %}}{{{{ o.data.v }}}}{{% endfor %}}\"}}\n\
             render:\n  wait: {wait}\n"
        );
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
        let shared = Arc::clone(&telemetry);
        let run = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            pipeline::run(prepared, sources, RunOptions::default(), shared, shutdown).await
        });
        Pipeline {
            dir,
            tx,
            telemetry,
            stop,
            run,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.run.await;
    }
}

fn applied(object: Value) -> SourceEvent {
    SourceEvent {
        watch: 0,
        event: Event::Applied(Document::from_json(&object)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_events_does_not_hold_a_render_past_wait_max() {
    timeout(TEST_DEADLINE, async {
        let pipeline = Pipeline::start("{min: 200ms, max: 400ms}");
        let (dir, tx) = (&pipeline.dir, pipeline.tx.clone());
        let listed = Event::Listed {
            scope: None,
            objects: vec![Document::from_json(&config_map("a", 0))],
        };
        tx.send(SourceEvent {
            watch: 0,
            event: listed,
        })
        .await
        .unwrap();
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
        pipeline.stop().await;
        let text = rendered.unwrap_or_else(|| panic!("no render within {after:?} of a flood of events"));
        // wait.max, plus the render and a loaded machine's scheduling.
        assert!(
            after < Duration::from_millis(1500),
            "rendered {text:?} only after {after:?}"
        );
    })
    .await
    .expect("test did not finish before its deadline");
}

/// A backlog of events read at once is one burst, also with `wait.min: 0`:
/// one render, not one per event (a reload storm).
#[tokio::test]
async fn a_backlog_of_queued_events_gives_one_render_with_wait_min_zero() {
    timeout(TEST_DEADLINE, async {
        let pipeline = Pipeline::start("{min: 0s, max: 2s}");
        let mut outcomes = pipeline.telemetry.outcomes();
        let listed = Event::Listed {
            scope: None,
            objects: vec![Document::from_json(&config_map("a", 0))],
        };
        pipeline
            .tx
            .send(SourceEvent {
                watch: 0,
                event: listed,
            })
            .await
            .unwrap();
        outcomes.recv().await.expect("the first render");

        // Queued before the loop runs again: this test's runtime has one thread.
        for version in 1..=50 {
            pipeline.tx.send(applied(config_map("a", version))).await.unwrap();
        }
        let outcome = outcomes.recv().await.expect("a render of the backlog");
        assert!(outcome.error.is_none(), "{:?}", outcome.error);
        assert_eq!(
            std::fs::read_to_string(pipeline.dir.path().join("out.txt")).unwrap(),
            "50"
        );
        pipeline.stop().await;
        let more: Vec<_> = std::iter::from_fn(|| outcomes.try_recv().ok()).collect();
        assert!(
            more.is_empty(),
            "{} more renders after the one of the backlog",
            more.len()
        );
    })
    .await
    .expect("test did not finish before its deadline");
}
