//! kube-template watches Kubernetes resources, keeps them in indexed stores,
//! and renders configuration files from Jinja templates whenever they change.
//!
//! # Layout
//!
//! One module per pipeline stage, in data-flow order:
//!
//! ```text
//!  source ──objects──▶ index ──▶ store ──snapshot──▶ render ──▶ output
//!  (manifests,         (keys)    (full)              (minijinja) (atomic files)
//!   selectors)
//! ```
//!
//! - [`config`] — the YAML config, validated with every problem reported at once.
//! - [`source`] — where objects come from (a manifests directory; selectors).
//! - [`index`] — `index_by` expressions and composite keys.
//! - [`store`] — ordered, non-unique, snapshot-able stores of objects.
//! - [`render`] — the template environment, filters and the `resources` view.
//! - [`output`] — atomic, change-only writes of files and directories, with `check`.
//! - [`pipeline`] — ties the stages together.
//! - [`telemetry`] — logging.
#![forbid(unsafe_code)]

pub mod action;
pub mod admin;
pub mod config;
pub mod index;
pub mod output;
pub mod pipeline;
pub mod render;
pub mod source;
pub mod store;
pub mod telemetry;
