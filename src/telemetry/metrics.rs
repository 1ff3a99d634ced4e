//! Prometheus metrics (`kube_template_*`), served as text by `/metrics`.

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabel {
    pub store: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub store: String,
    /// `applied`, `deleted` or `listed`.
    pub r#type: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatchLabel {
    pub watch: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct RenderLabels {
    /// The group rendered (`default`: templates without `group:`).
    pub group: String,
    /// `success` or `failure`.
    pub result: String,
    /// Why a render failed; no label on a success.
    pub reason: Option<Failure>,
}

impl EncodeLabelSet for RenderLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        let mut labels = vec![("group", self.group.as_str()), ("result", self.result.as_str())];
        if let Some(reason) = self.reason {
            labels.push(("reason", reason.label()));
        }
        labels.encode(encoder)
    }
}

/// Why a render failed, as the `reason` label of a failed render says it.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Failure {
    /// A template did not render (an error in it, or in what it read).
    Template,
    /// The outputs could not be written: `validate`, `check` or file I/O.
    Output,
    /// The loss guard refused a shrink (DESIGN 5.10).
    Guard,
}

impl Failure {
    pub fn label(self) -> &'static str {
        match self {
            Failure::Template => "template",
            Failure::Output => "output",
            Failure::Guard => "guard",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TemplateLabel {
    pub template: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub action: String,
    pub result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabel {
    pub action: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.5, 12))
}

/// Every metric of the process. Handles are cheap clones sharing the value.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub store_objects: Family<StoreLabel, Gauge>,
    pub watch_events: Family<EventLabels, Counter>,
    pub watch_restarts: Family<WatchLabel, Counter>,
    pub renders: Family<RenderLabels, Counter>,
    pub render_duration: Histogram,
    pub files_written: Family<TemplateLabel, Counter>,
    pub actions: Family<ActionLabels, Counter>,
    pub action_duration: HistogramFamily<ActionLabel>,
    pub cache_hits: Family<StoreLabel, Counter>,
    pub cache_misses: Family<StoreLabel, Counter>,
    pub cache_stale: Family<StoreLabel, Counter>,
    pub cache_errors: Family<StoreLabel, Counter>,
    pub cache_fetch_duration: HistogramFamily<StoreLabel>,
    pub last_success: Gauge<f64, AtomicU64>,
    /// 1 while a watch's last request succeeded, 0 while it fails.
    pub watch_connected: Family<WatchLabel, Gauge>,
    /// Set from `last_success_at` whenever the metrics are read.
    since_success: Gauge<f64, AtomicU64>,
    /// The last successful render, or the start when there was none.
    last_success_at: Mutex<Instant>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("kube_template");
        let m = Metrics {
            store_objects: Family::default(),
            watch_events: Family::default(),
            watch_restarts: Family::default(),
            renders: Family::default(),
            render_duration: seconds_histogram(),
            files_written: Family::default(),
            actions: Family::default(),
            action_duration: Family::new_with_constructor(seconds_histogram),
            cache_hits: Family::default(),
            cache_misses: Family::default(),
            cache_stale: Family::default(),
            cache_errors: Family::default(),
            cache_fetch_duration: Family::new_with_constructor(seconds_histogram),
            last_success: Gauge::default(),
            watch_connected: Family::default(),
            since_success: Gauge::default(),
            last_success_at: Mutex::new(Instant::now()),
            registry: Registry::default(),
        };
        registry.register(
            "store_objects",
            "Objects (or references) in each store",
            m.store_objects.clone(),
        );
        registry.register(
            "watch_events",
            "Watch events applied, by store and type (applied, deleted, listed)",
            m.watch_events.clone(),
        );
        registry.register(
            "watch_restarts",
            "Watch failures after which the watch was restarted with backoff",
            m.watch_restarts.clone(),
        );
        registry.register(
            "renders",
            "Renders by group and result (success, failure), failures by reason (template, output, guard)",
            m.renders.clone(),
        );
        registry.register_with_unit(
            "render_duration",
            "Time to render, check and write the templates of a group",
            Unit::Seconds,
            m.render_duration.clone(),
        );
        registry.register(
            "files_written",
            "Files written (changed bytes), by template",
            m.files_written.clone(),
        );
        registry.register("actions", "Action runs by action and result", m.actions.clone());
        registry.register_with_unit(
            "action_duration",
            "Time an action took",
            Unit::Seconds,
            m.action_duration.clone(),
        );
        registry.register(
            "cache_hits",
            "On-demand reads served from the cache",
            m.cache_hits.clone(),
        );
        registry.register(
            "cache_misses",
            "On-demand reads that needed a GET",
            m.cache_misses.clone(),
        );
        registry.register(
            "cache_stale",
            "On-demand reads served from an outdated cached copy because the GET failed",
            m.cache_stale.clone(),
        );
        registry.register("cache_fetch_errors", "Failed on-demand GETs", m.cache_errors.clone());
        registry.register_with_unit(
            "cache_fetch_duration",
            "Time of on-demand GETs",
            Unit::Seconds,
            m.cache_fetch_duration.clone(),
        );
        registry.register(
            "last_successful_render_timestamp_seconds",
            "Unix time of the last successful render",
            m.last_success.clone(),
        );
        registry.register(
            "watch_connected",
            "Whether each watch is connected (1) or failing to reach the API server (0)",
            m.watch_connected.clone(),
        );
        registry.register(
            "seconds_since_last_successful_render",
            "Seconds since the last successful render (since the start while there was none)",
            m.since_success.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The metrics in the Prometheus / OpenMetrics text format.
    pub fn encode(&self) -> String {
        let since = lock(&self.last_success_at).elapsed();
        self.since_success.set(since.as_secs_f64());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }

    /// Records the result (`Err` with why it failed) and duration of a
    /// render of `group`.
    pub fn render_done(&self, group: &str, result: Result<(), Failure>, duration: Duration) {
        self.renders
            .get_or_create(&RenderLabels {
                group: group.into(),
                result: if result.is_ok() { "success" } else { "failure" }.into(),
                reason: result.err(),
            })
            .inc();
        self.render_duration.observe(duration.as_secs_f64());
        if result.is_ok() {
            *lock(&self.last_success_at) = Instant::now();
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            self.last_success.set(now.as_secs_f64());
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The metric handles of one on-demand store's cache.
#[derive(Debug, Clone)]
pub struct CacheMetrics {
    pub hits: Counter,
    pub misses: Counter,
    pub stale: Counter,
    pub errors: Counter,
    pub fetch_duration: Histogram,
}

impl Default for CacheMetrics {
    /// Handles registered nowhere (for tests and tools).
    fn default() -> Self {
        CacheMetrics {
            hits: Counter::default(),
            misses: Counter::default(),
            stale: Counter::default(),
            errors: Counter::default(),
            fetch_duration: seconds_histogram(),
        }
    }
}

impl CacheMetrics {
    /// Handles registered under `store`.
    pub fn registered(metrics: &Metrics, store: &str) -> CacheMetrics {
        let label = StoreLabel { store: store.into() };
        CacheMetrics {
            hits: metrics.cache_hits.get_or_create(&label).clone(),
            misses: metrics.cache_misses.get_or_create(&label).clone(),
            stale: metrics.cache_stale.get_or_create(&label).clone(),
            errors: metrics.cache_errors.get_or_create(&label).clone(),
            fetch_duration: metrics.cache_fetch_duration.get_or_create(&label).clone(),
        }
    }
}
