//! The renderer: a minijinja environment in which templates see every store as
//! `resources.<name>` (DESIGN section 4).
//!
//! Renders are level-triggered and deterministic: the same snapshot always
//! gives the same bytes. A render hands each template's output to a
//! [`Sink`] as it is produced; the caller decides what becomes of it (the
//! pipeline stages it and writes nothing unless every template succeeded).

mod filters;
pub mod objects;
pub mod reads;
pub mod sink;
pub mod syntax;
pub mod urls;
pub mod value;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use minijinja::value::Value;
use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior};

pub use objects::{Resources, StoresSnapshot};
pub use reads::Reads;
pub use sink::{Emitted, Memory, Sink};
pub use syntax::{Pair, Syntax};
pub use urls::Urls;

/// Where a template's text comes from.
#[derive(Debug, Clone)]
pub enum TemplateSource {
    /// A file; the name is its path relative to the config directory.
    File { name: String, path: PathBuf },
    /// Text from the config.
    Inline { name: String, text: String },
}

impl TemplateSource {
    /// The name the template has in the environment and in error messages.
    pub fn name(&self) -> &str {
        match self {
            TemplateSource::File { name, .. } | TemplateSource::Inline { name, .. } => name,
        }
    }
}

/// Why a template could not be rendered. The message names the template, its
/// file and line, and the cause.
#[derive(Debug, Clone, thiserror::Error)]
#[error("template `{template}`: {message}")]
pub struct Error {
    /// The `templates` entry.
    pub template: String,
    pub message: String,
}

/// What one template produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// The bytes of a single-file output.
    File(Vec<u8>),
    /// The files a directory template emitted with `file()`, by relative name.
    Directory(BTreeMap<String, Vec<u8>>),
}

/// One template's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub template: String,
    pub content: Content,
}

#[derive(Debug, Clone)]
struct Job {
    name: String,
    source: String,
    directory: bool,
    /// The stores it reads.
    reads: Reads,
    /// Its environment in [`Renderer::envs`].
    env: usize,
}

/// A template to compile: its `templates` entry, where its text comes from,
/// its delimiters, and whether it emits a directory of files.
#[derive(Debug, Clone, Copy)]
pub struct Spec<'a> {
    pub name: &'a str,
    pub source: &'a TemplateSource,
    pub syntax: Option<&'a Syntax>,
    pub directory: bool,
}

/// Why a template does not compile, and the key of its entry (`source`,
/// `inline`, `syntax`) it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The `templates` entry.
    pub template: String,
    pub field: &'static str,
    pub message: String,
}

/// Compiled templates, ready to render snapshots.
#[derive(Debug)]
pub struct Renderer {
    /// One environment per distinct `syntax:`, Jinja's first: delimiters are
    /// an environment's, and what a template includes is read with its own.
    envs: Vec<(Syntax, Environment<'static>)>,
    jobs: Vec<Job>,
    fuel: u64,
    max_output: u64,
    /// What `fetch_url()` fetches with; none without `render.fetch`.
    urls: Option<Arc<Urls>>,
}

impl Renderer {
    /// Builds the environment (relative includes from `base_dir`) and
    /// compiles every template; compile errors are problems pointing at the
    /// template's entry.
    pub fn new<'a>(
        base_dir: &Path,
        fuel: u64,
        max_output: u64,
        templates: impl IntoIterator<Item = Spec<'a>>,
    ) -> Result<Renderer, Vec<Problem>> {
        let mut env = environment(base_dir);
        env.set_fuel(Some(fuel));
        let mut envs = vec![(Syntax::default(), env)];
        let mut problems = Vec::new();
        let mut jobs = Vec::new();
        for Spec {
            name,
            source: template,
            syntax,
            directory,
        } in templates
        {
            let problem = |field, message| Problem {
                template: name.to_string(),
                field,
                message,
            };
            let syntax = syntax.cloned().unwrap_or_default();
            let index = match envs.iter().position(|(s, _)| *s == syntax) {
                Some(index) => index,
                None => {
                    let mut env = environment(base_dir);
                    env.set_fuel(Some(fuel));
                    match syntax::apply(&syntax, env.syntax()) {
                        Ok(custom) => env.set_syntax(custom),
                        Err(message) => {
                            problems.push(problem("syntax", message));
                            continue;
                        }
                    }
                    envs.push((syntax, env));
                    envs.len() - 1
                }
            };
            let env = &mut envs[index].1;
            let field = match template {
                TemplateSource::File { .. } => "source",
                TemplateSource::Inline { name: source, text } => {
                    if let Err(e) = env.add_template_owned(source.clone(), text.clone()) {
                        problems.push(problem("inline", describe(&e)));
                    }
                    "inline"
                }
            };
            let source = template.name().to_string();
            if let Err(e) = env.get_template(&source) {
                if !problems.iter().any(|p| p.template == name && p.field == "inline") {
                    problems.push(problem(field, describe(&e)));
                }
                continue;
            }
            let [(_, block), ..] = envs[index].0.all();
            jobs.push(Job {
                name: name.to_string(),
                reads: reads::of(&envs[index].1, &source, block),
                source,
                directory,
                env: index,
            });
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Renderer {
            envs,
            jobs,
            fuel,
            max_output,
            urls: None,
        })
    }

    /// Lets templates fetch URLs with `fetch_url()`, through `urls`.
    pub fn with_urls(mut self, urls: Urls) -> Renderer {
        self.urls = Some(Arc::new(urls));
        self
    }

    /// The stores the template `name` reads (every store for a name it does
    /// not know).
    pub fn reads(&self, name: &str) -> Reads {
        self.jobs.iter().find(|job| job.name == name).map_or(
            Reads::All {
                why: format!("no template `{name}`"),
            },
            |job| job.reads.clone(),
        )
    }

    /// Renders every template against one snapshot. All errors are returned,
    /// one per failing template.
    pub fn render_all(&self, snapshot: &StoresSnapshot) -> Result<Vec<Rendered>, Vec<Error>> {
        self.render_some(snapshot, |_| true)
    }

    /// Renders the templates whose name `wanted` accepts (a group) against
    /// one snapshot, in memory. All errors are returned, one per failing
    /// template.
    pub fn render_some(
        &self,
        snapshot: &StoresSnapshot,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<Vec<Rendered>, Vec<Error>> {
        let sinks = self
            .jobs
            .iter()
            .filter(|job| wanted(&job.name))
            .map(|job| (job.name.clone(), Memory::new(job.directory)))
            .collect();
        let rendered = self.render_into(snapshot, sinks)?;
        Ok(rendered
            .into_iter()
            .map(|(template, sink)| Rendered {
                template,
                content: sink.into_content(),
            })
            .collect())
    }

    /// Renders each named template into its sink against one snapshot, and
    /// gives the sinks back in the same order. All errors are returned, one
    /// per failing template; the sinks of a failed render are dropped.
    pub fn render_into<S: Sink>(
        &self,
        snapshot: &StoresSnapshot,
        sinks: Vec<(String, S)>,
    ) -> Result<Vec<(String, S)>, Vec<Error>> {
        let resources = Value::from_object(Resources::new(snapshot));
        let workers = std::thread::available_parallelism().map_or(1, usize::from);
        let names: Vec<String> = sinks.iter().map(|(name, _)| name.clone()).collect();
        let results = if workers < 2 || sinks.len() < 2 {
            sinks
                .into_iter()
                .map(|(name, sink)| self.render_named(&name, &resources, sink))
                .collect()
        } else {
            let workers = workers.min(sinks.len());
            self.render_in_parallel(sinks, workers, &resources)
        };
        let mut rendered = Vec::with_capacity(names.len());
        let mut errors = Vec::new();
        for (template, result) in names.into_iter().zip(results) {
            match result {
                Ok(sink) => rendered.push((template, sink)),
                Err(message) => errors.push(Error { template, message }),
            }
        }
        if errors.is_empty() { Ok(rendered) } else { Err(errors) }
    }

    /// Renders the templates on `workers` threads (templates are independent
    /// and read the same immutable snapshot); results in template order.
    fn render_in_parallel<S: Sink>(
        &self,
        sinks: Vec<(String, S)>,
        workers: usize,
        resources: &Value,
    ) -> Vec<Result<S, String>> {
        let next = AtomicUsize::new(0);
        let jobs: Vec<Mutex<Option<(String, S)>>> = sinks.into_iter().map(|s| Mutex::new(Some(s))).collect();
        let mut results: Vec<Option<Result<S, String>>> = jobs.iter().map(|_| None).collect();
        std::thread::scope(|scope| {
            let threads: Vec<_> = (0..workers)
                .map(|_| {
                    scope.spawn(|| {
                        let mut done = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(job) = jobs.get(i) else { break done };
                            let taken = job.lock().unwrap_or_else(|e| e.into_inner()).take();
                            let (name, sink) = taken.expect("each job is taken by one worker");
                            done.push((i, self.render_named(&name, resources, sink)));
                        }
                    })
                })
                .collect();
            for thread in threads {
                // A panicking template engine is a bug: pass it on.
                let done = thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                for (i, result) in done {
                    results[i] = Some(result);
                }
            }
        });
        results
            .into_iter()
            .map(|r| r.expect("every template is rendered by one worker"))
            .collect()
    }

    fn render_named<S: Sink>(&self, name: &str, resources: &Value, sink: S) -> Result<S, String> {
        match self.jobs.iter().find(|job| job.name == name) {
            Some(job) => self.render_one(job, resources, sink),
            None => Err(format!("no template `{name}`")),
        }
    }

    fn render_one<S: Sink>(&self, job: &Job, resources: &Value, sink: S) -> Result<S, String> {
        let template = self.envs[job.env]
            .1
            .get_template(&job.source)
            .map_err(|e| describe(&e))?;
        let budget = Arc::new(sink::Budget::new(self.max_output));
        // A single-file template writes its text into the sink; a directory
        // template's `file()` holds it.
        let (mut text, files) = if job.directory {
            (None, Some(sink))
        } else {
            (Some(sink), None)
        };
        let files = Arc::new(sink::FileSink {
            budget: Arc::clone(&budget),
            sink: Mutex::new(files),
        });
        let ctx = minijinja::context! {
            resources => resources.clone(),
            file => Value::from_dyn_object(Arc::clone(&files)),
            fetch_url => Value::from_object(urls::FetchUrl(self.urls.clone())),
        };
        let mut writer = sink::BudgetWriter::new(text.as_mut(), &budget);
        let rendered = template.render_captured_to(ctx, &mut writer).and_then(|_| {
            io::Write::flush(&mut writer).map_err(|e| {
                // What minijinja makes of a failed write during the render.
                minijinja::Error::new(ErrorKind::WriteFailure, "I/O error during rendering").with_source(e)
            })
        });
        drop(writer);
        if let Err(e) = rendered {
            if budget.exceeded.load(Ordering::Relaxed) {
                // minijinja drops the line of a failed write; the file at least.
                let at = match location(&e) {
                    at if at.is_empty() => format!("{}: ", job.source),
                    at => at,
                };
                return Err(format!(
                    "{at}output is larger than render.max_output_bytes ({} bytes)",
                    self.max_output
                ));
            }
            if e.kind() == ErrorKind::OutOfFuel {
                return Err(format!(
                    "{} (render.fuel is {}; is there an endless loop?)",
                    describe(&e),
                    self.fuel
                ));
            }
            return Err(describe(&e));
        }
        Ok(text
            .or_else(|| files.take())
            .expect("the sink is either the text's or file()'s"))
    }
}

/// The environment every template renders in.
fn environment(base_dir: &Path) -> Environment<'static> {
    let mut env = Environment::new();
    // minijinja names the undefined expression (`svc.spec.port` is undefined)
    // only in debug mode, which is off by default in release builds.
    env.set_debug(true);
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    // Strings, most of what templates print, go out as they are rather than
    // through `Display` (padding and precision that `{{ }}` never uses).
    // Undefined values are caught before any formatter, as by the default.
    env.set_formatter(|out, state, value| match value.as_str() {
        Some(text) if *state.auto_escape() == AutoEscape::None => Ok(out.write_str(text)?),
        _ => minijinja::escape_formatter(out, state, value),
    });
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .keep_trailing_newline(true)
            .build()
            .expect("the default syntax is valid"),
    );
    let base = base_dir.to_owned();
    env.set_loader(move |name| {
        if !safe_relative(name) {
            // Not `TemplateNotFound`: `include` would replace this message
            // with its own "non-existing template".
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("`{name}` is outside the config directory: template names are relative paths without `..`"),
            ));
        }
        match std::fs::read_to_string(base.join(name)) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("cannot read `{name}`: {e}"),
            )),
        }
    });
    env.set_path_join_callback(|name, parent| join_path(name, parent).into());
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    filters::register(&mut env);
    env
}

/// The name of the template `name` that `parent` includes or imports:
/// relative to the including template's directory.
fn join_path(name: &str, parent: &str) -> String {
    match parent.rsplit_once('/') {
        Some((dir, _)) if !name.starts_with('/') => format!("{dir}/{name}"),
        _ => name.to_string(),
    }
}

/// A relative path that stays below its root: not absolute, no `..`, no empty
/// or `.` segments.
pub fn safe_relative(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('/')
        && !name.contains('\\')
        && !name.contains('\0')
        && name.split('/').all(|s| !s.is_empty() && s != "." && s != "..")
}

/// A message for a template error: where (template file and line), then the
/// cause, then any nested cause (e.g. inside an included template).
fn describe(err: &minijinja::Error) -> String {
    let mut message = location(err);
    message.push_str(&err.kind().to_string());
    if let Some(detail) = err.detail() {
        message.push_str(": ");
        message.push_str(detail);
    }
    let mut source = std::error::Error::source(err);
    while let Some(inner) = source {
        message.push_str(&format!(": {inner}"));
        source = inner.source();
    }
    message
}

/// `templates/x.j2 line 3: `, or as much of it as the error knows.
fn location(err: &minijinja::Error) -> String {
    match (err.name(), err.line()) {
        (Some(name), Some(line)) => format!("{name} line {line}: "),
        (Some(name), None) => format!("{name}: "),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests;
