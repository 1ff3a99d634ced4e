//! Where a template's output goes while it renders. A [`Sink`] takes a
//! single-file output's bytes as the template produces them, and a directory
//! output's files one by one as `file()` emits them, so that a render need
//! not hold its whole output: the pipeline's sink stages them in files.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use minijinja::value::{Object, Value};
use minijinja::{ErrorKind, State};

use super::{Content, safe_relative};

/// What a render writes into. Its `io::Write` takes a single-file output's
/// bytes; what a directory template prints outside `file()` is discarded and
/// never reaches it.
pub trait Sink: io::Write + Send + 'static {
    /// Takes a directory output's file `name` (a safe relative path) whole.
    fn file(&mut self, name: &str, content: &[u8]) -> io::Result<Emitted>;
}

/// What [`Sink::file`] made of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emitted {
    /// The first file of that name.
    New,
    /// A file of that name came before with the same bytes: nothing to do.
    Same,
    /// A file of that name came before with other bytes: an error.
    Different,
}

/// Keeps a render's output in memory, for callers that look at the bytes.
#[derive(Debug)]
pub struct Memory(Content);

impl Memory {
    pub fn new(directory: bool) -> Memory {
        Memory(if directory {
            Content::Directory(BTreeMap::new())
        } else {
            Content::File(Vec::new())
        })
    }

    pub fn into_content(self) -> Content {
        self.0
    }
}

impl io::Write for Memory {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Content::File(bytes) = &mut self.0 {
            bytes.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Sink for Memory {
    fn file(&mut self, name: &str, content: &[u8]) -> io::Result<Emitted> {
        let Content::Directory(files) = &mut self.0 else {
            return Err(io::Error::other("not a directory output"));
        };
        Ok(match files.get(name) {
            Some(existing) if existing == content => Emitted::Same,
            Some(_) => Emitted::Different,
            None => {
                files.insert(name.to_string(), content.to_vec());
                Emitted::New
            }
        })
    }
}

/// Bytes a template may still produce.
#[derive(Debug)]
pub(super) struct Budget {
    left: AtomicU64,
    pub(super) exceeded: AtomicBool,
}

impl Budget {
    pub(super) fn new(limit: u64) -> Budget {
        Budget {
            left: AtomicU64::new(limit),
            exceeded: AtomicBool::new(false),
        }
    }

    fn spend(&self, n: usize) -> bool {
        let n = n as u64;
        let ok = self
            .left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(n))
            .is_ok();
        if !ok {
            self.exceeded.store(true, Ordering::Relaxed);
        }
        ok
    }

    fn refund(&self, n: usize) {
        self.left.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// How much text [`BudgetWriter`] gathers before passing it to the sink:
/// whole chunks of the size a staged file takes without copying them into
/// its own buffer (a sink buffering them would keep the spare room of a
/// grown buffer per output until the group is written).
const CHUNK: usize = 64 * 1024;

/// A single-file template's text on its way to the sink, counted against
/// the budget; `None` (a directory template's own text) discards it.
///
/// A template writes in pieces of a few bytes (each `{{ }}` and the text
/// between them); the sink gets them in chunks of exactly [`CHUNK`] bytes,
/// and the rest on [`io::Write::flush`], which the render must call. Each
/// chunk is counted as it goes to the sink: an output too large fails at
/// most a chunk after it passes the budget, and every byte is counted once
/// the render has flushed.
pub(super) struct BudgetWriter<'a, S> {
    out: Option<&'a mut S>,
    budget: &'a Budget,
    pending: Vec<u8>,
}

impl<'a, S: Sink> BudgetWriter<'a, S> {
    pub(super) fn new(out: Option<&'a mut S>, budget: &'a Budget) -> BudgetWriter<'a, S> {
        let pending = if out.is_some() {
            Vec::with_capacity(CHUNK)
        } else {
            Vec::new()
        };
        BudgetWriter { out, budget, pending }
    }
}

impl<S: Sink> BudgetWriter<'_, S> {
    /// Counts the gathered text against the budget and gives it to the sink.
    fn pass_on(&mut self) -> io::Result<()> {
        let Some(out) = self.out.as_mut() else {
            return Ok(());
        };
        if !self.budget.spend(self.pending.len()) {
            return Err(io::Error::other("output too large"));
        }
        out.write_all(&self.pending)?;
        self.pending.clear();
        Ok(())
    }
}

impl<S: Sink> io::Write for BudgetWriter<'_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.out.is_none() {
            return Ok(buf.len());
        }
        let mut rest = buf;
        while !rest.is_empty() {
            let (now, later) = rest.split_at(rest.len().min(CHUNK - self.pending.len()));
            self.pending.extend_from_slice(now);
            rest = later;
            if self.pending.len() == CHUNK {
                self.pass_on()?;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.pass_on()
    }
}

/// `file(name, content)`: passes a directory template's files to its sink,
/// which it holds for the render (`None` for single-file templates).
pub(super) struct FileSink<S> {
    pub(super) budget: Arc<Budget>,
    pub(super) sink: Mutex<Option<S>>,
}

impl<S> fmt::Debug for FileSink<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("file")
    }
}

impl<S: Sink> FileSink<S> {
    /// The sink back, once the render is over.
    pub(super) fn take(&self) -> Option<S> {
        self.sink.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl<S: Sink> Object for FileSink<S> {
    fn call(self: &Arc<Self>, _state: &mut State<'_, '_>, args: &[Value]) -> Result<Value, minijinja::Error> {
        let invalid = |message: String| minijinja::Error::new(ErrorKind::InvalidOperation, message);
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        let Some(sink) = sink.as_mut() else {
            return Err(invalid(
                "file() works only in templates with a `directory` output".into(),
            ));
        };
        let (name, content): (&str, Value) = minijinja::value::from_args(args)?;
        if !safe_relative(name) {
            return Err(invalid(format!(
                "file({name:?}): names must be relative paths without `..`, `.` or empty parts"
            )));
        }
        let bytes: Cow<'_, [u8]> = if let Some(s) = content.as_str() {
            Cow::Borrowed(s.as_bytes())
        } else if let Some(b) = content.as_bytes() {
            Cow::Borrowed(b)
        } else if content.is_undefined() {
            return Err(minijinja::Error::new(
                ErrorKind::UndefinedError,
                format!("file({name:?}): the content is undefined"),
            ));
        } else {
            Cow::Owned(content.to_string().into_bytes())
        };
        if !self.budget.spend(bytes.len()) {
            return Err(invalid("output too large".into()));
        }
        match sink.file(name, &bytes) {
            Ok(Emitted::New) => Ok(Value::from("")),
            Ok(Emitted::Same) => {
                self.budget.refund(bytes.len());
                Ok(Value::from(""))
            }
            Ok(Emitted::Different) => Err(invalid(format!(
                "file({name:?}) was emitted twice with different content"
            ))),
            Err(e) => Err(invalid(format!("file({name:?}): {e}"))),
        }
    }
}
