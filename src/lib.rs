//! kube-template watches Kubernetes resources, keeps them in indexed stores,
//! and renders configuration files from Jinja templates whenever they change.
//!
//! # Layout
//!
//! One module per pipeline stage, in data-flow order:
//!
//! ```text
//!  source ──events──▶ index ──▶ store ──snapshot──▶ render ──▶ output ──▶ action
//!  (Kubernetes watch,  (keys)    (full |             (minijinja) (atomic    (command,
//!   manifests dir)               on-demand)                       files)     HTTP)
//!                    admin: /healthz /readyz /metrics, status page (telemetry)
//! ```
//!
//! Imports point one way, down the pipeline: [`config`] (what the user
//! wrote) builds the plain domain types the stages take, [`pipeline`] and
//! [`source`] convert, and nothing below `config` imports it
//! (`tests/architecture.rs` keeps the directions).
//!
//! - [`object`] — the object representation every stage shares: one compact
//!   [`object::Document`] per object (about its JSON size), field paths into
//!   it, its identity, label and field selectors.
//! - [`config`] — the YAML config, one file per section, validated with every
//!   problem reported at once.
//! - [`source`] — where objects come from: Kubernetes watches (one per distinct
//!   resource) or a manifests directory.
//! - [`index`] — `index_by` keys and what a missing value does.
//! - [`store`] — ordered, non-unique, snapshot-able stores built from an
//!   indexer: whole objects, or references with bodies fetched on demand
//!   through a bounded cache.
//! - [`render`] — the template environment, filters and the `resources` view; a
//!   render writes into a sink as it goes.
//! - [`output`] — atomic, change-only writes of files and directories, staged while
//!   the render produces them, with `check`.
//! - [`action`] — commands and HTTP calls after a render that changed a file.
//! - [`exec`] — exec mode: the command kube-template starts, reloads and
//!   stops as its child.
//! - [`command`] — running external programs with a timeout (checks, actions).
//! - [`redact`] — Secret values kept out of what checks and actions print.
//! - [`pipeline`] — ties the stages together: the initial-sync barrier,
//!   groups of templates (each with its quiescence, retries and actions,
//!   re-rendered when a store it reads changed), snapshot renders.
//! - [`admin`] — the HTTP server for probes, metrics and the status page.
//! - [`telemetry`] — logs, metrics, live status and render outcomes.
//! - [`report`] — render outcomes told to Kubernetes: one file per reporter
//!   (Events on the pod, the status ConfigMap) and the Events' rate limiter.
//! - [`k8s_sidecar`] — `kube-template k8s-sidecar`: kiwigrid/k8s-sidecar's
//!   environment turned into a config for the same pipeline.
//! - [`cli`] — the command line: each subcommand ties the stages together
//!   (`main.rs` only parses the arguments).
//! - [`template_tests`] — `kube-template test`: template test cases kept beside
//!   the config, rendered and diffed.
// `deny`, not `forbid`: `telemetry::resident` makes two system calls that
// have no safe wrapper, each behind its own `allow` and SAFETY comment.
#![deny(unsafe_code)]

pub mod action;
pub mod admin;
pub mod cli;
pub mod command;
pub mod config;
pub mod exec;
pub mod index;
pub mod k8s_sidecar;
pub mod object;
pub mod output;
pub mod pipeline;
pub mod redact;
pub mod render;
pub mod report;
pub mod source;
pub mod store;
pub mod telemetry;
pub mod template_tests;
