//! What a render holds while it writes: outputs go to their staged files as
//! the render produces them, so the heap's peak during a render and write
//! stays far below the size of what is written. Measured with a counting
//! allocator that records the peak of live bytes.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use kube_template::pipeline;
use serde_json::json;

/// The system allocator, counting live bytes and their peak.
struct Peak;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; only
// counters are updated besides.
unsafe impl GlobalAlloc for Peak {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `alloc`'s contract, passed on as is.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller upholds `dealloc`'s contract, passed on as is.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static GLOBAL: Peak = Peak;

const OBJECTS: usize = 2000;
const VALUE: usize = 4096;

/// The heap's growth at its peak, above what was live before, while
/// `render_and_write` renders and writes every template of `config`.
async fn peak_of_a_render(dir: &Path, config: &str) -> usize {
    let prepared = pipeline::prepare_text(config, &dir.join("c.yaml"), dir).unwrap();
    let objects: Vec<_> = (0..OBJECTS)
        .map(|i| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"namespace": "ns", "name": format!("cm{i:04}")}, "data": {"v": format!("{i:04}").repeat(VALUE / 4)}}))
        .collect();
    let stores = pipeline::stores_from(&prepared.config, &objects);
    let snapshot = pipeline::snapshot(&stores);
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let report = pipeline::render_and_write(&prepared, &snapshot, None).await.unwrap();
    assert!(report.changed());
    PEAK.load(Ordering::Relaxed) - before
}

// One test only: the counters are the process's.
#[tokio::test(flavor = "current_thread")]
async fn a_render_holds_a_small_part_of_what_it_writes() {
    let written = OBJECTS * VALUE;
    let dir = tempfile::tempdir().unwrap();
    let config = |entry: &str| {
        format!("watched_resources:\n  cms: {{api_version: v1, kind: ConfigMap}}\ntemplates:\n  t:\n{entry}")
    };

    let directory = config(
        "    inline: \"{% for c in resources.cms %}{{ file(c.metadata.name, c.data.v) }}{% endfor %}\"\n    directory: out\n",
    );
    let peak = peak_of_a_render(dir.path(), &directory).await;
    assert_eq!(std::fs::read_dir(dir.path().join("out")).unwrap().count(), OBJECTS);
    assert!(peak < written / 4, "a directory output of {written} bytes: peak {peak}");

    let file = config("    inline: \"{% for c in resources.cms %}{{ c.data.v }}\\n{% endfor %}\"\n    path: out.txt\n");
    let peak = peak_of_a_render(dir.path(), &file).await;
    let len = std::fs::metadata(dir.path().join("out.txt")).unwrap().len() as usize;
    assert_eq!(len, OBJECTS * (VALUE + 1));
    assert!(peak < written / 4, "a file output of {len} bytes: peak {peak}");
}
