//! Manifests on disk as a source: YAML (multi-document) or JSON files, or
//! directories of them, including `kind: List` wrappers as
//! `kubectl get -o yaml` prints them.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tokio::sync::mpsc;

use super::{Event, Namespaces, SourceEvent, Watch};
use crate::object::document::Document;
use crate::object::{Meta, ObjectId};

/// Why manifests could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file is not valid YAML or JSON.
    #[error("{}{}: {message}", path.display(), position.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default())]
    Parse {
        path: PathBuf,
        /// Line and column, when the parser knows them.
        position: Option<(usize, usize)>,
        message: String,
    },
    /// A document is not a Kubernetes object.
    #[error("{} (document {document}): {message}", path.display())]
    NotAnObject {
        path: PathBuf,
        document: usize,
        message: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The manifest files under `paths`: files as given, directories walked
/// recursively for `.yaml`, `.yml` and `.json` files (hidden entries skipped),
/// in a stable order.
pub fn files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for path in paths {
        let meta = fs::metadata(path).map_err(|source| Error::Read {
            path: path.clone(),
            source,
        })?;
        if meta.is_dir() {
            walk(path, &mut out)?;
        } else {
            out.push(path.clone());
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let read = |source| Error::Read {
        path: dir.to_owned(),
        source,
    };
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(read)?
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(read)?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        if fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
            walk(&path, out)?;
        } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")) {
            out.push(path);
        }
    }
    Ok(())
}

/// Every object in the manifests under `paths`, `List`s unwrapped.
pub fn load(paths: &[PathBuf]) -> Result<Vec<Value>> {
    let mut objects = Vec::new();
    for file in files(paths)? {
        objects.extend(load_file(&file)?);
    }
    Ok(objects)
}

/// The objects of one manifest file.
pub fn load_file(path: &Path) -> Result<Vec<Value>> {
    let text = fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_objects(path, &text)
}

fn parse_objects(path: &Path, text: &str) -> Result<Vec<Value>> {
    let documents = parse(path, text)?;
    let mut objects = Vec::new();
    for (i, document) in documents.into_iter().enumerate() {
        unwrap_lists(path, i + 1, document, &mut objects)?;
    }
    Ok(objects)
}

fn parse(path: &Path, text: &str) -> Result<Vec<Value>> {
    if path.extension().and_then(|e| e.to_str()) == Some("json") {
        return serde_json::from_str::<Value>(text)
            .map(|v| vec![v])
            .map_err(|e| Error::Parse {
                path: path.to_owned(),
                position: Some((e.line(), e.column())),
                message: e.to_string(),
            });
    }
    // Manifests can be large (`kubectl get -A -o yaml` of a big cluster): lift
    // the parser's event budget, which guards untrusted input.
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! { max_events: usize::MAX },
    };
    let documents: Vec<Value> = serde_saphyr::from_multiple_with_options(text, options).map_err(|e| Error::Parse {
        path: path.to_owned(),
        position: e.location().map(|l| (l.line() as usize, l.column() as usize)),
        message: e.without_snippet().to_string(),
    })?;
    Ok(documents.into_iter().filter(|d| !d.is_null()).collect())
}

fn unwrap_lists(path: &Path, document: usize, value: Value, out: &mut Vec<Value>) -> Result<()> {
    let not_object = |message: String| Error::NotAnObject {
        path: path.to_owned(),
        document,
        message,
    };
    let Value::Object(mut map) = value else {
        return Err(not_object(format!(
            "expected a mapping with apiVersion and kind, found {value}"
        )));
    };
    let kind = map.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
    let api_version = map
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if kind.ends_with("List") && map.get("items").is_some_and(Value::is_array) {
        let Some(Value::Array(items)) = map.remove("items") else {
            unreachable!("checked above")
        };
        // Typed lists (`ConfigMapList`) may leave kind and apiVersion off their items.
        let item_kind = kind.strip_suffix("List").filter(|k| !k.is_empty()).map(str::to_string);
        for mut item in items {
            if let (Some(obj), Some(item_kind)) = (item.as_object_mut(), &item_kind) {
                obj.entry("kind").or_insert_with(|| Value::String(item_kind.clone()));
                obj.entry("apiVersion")
                    .or_insert_with(|| Value::String(api_version.clone()));
            }
            unwrap_lists(path, document, item, out)?;
        }
        return Ok(());
    }
    if kind.is_empty() || api_version.is_empty() {
        return Err(not_object("missing `apiVersion` or `kind`".into()));
    }
    if map
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .is_none()
    {
        return Err(not_object(format!("{kind} has no `metadata.name`")));
    }
    out.push(Value::Object(map));
    Ok(())
}

/// A manifests directory as a live source: the first scan is each watch's
/// initial listing; afterwards every change on disk is reported as the
/// ADDED/MODIFIED/DELETED events a watch would have sent. A file that stops
/// parsing keeps its previous objects (and is logged) until it is fixed.
pub struct LiveManifests {
    paths: Vec<PathBuf>,
    watches: Vec<Watch>,
    /// Each file's last text and the objects parsed from it.
    files: HashMap<PathBuf, (String, Vec<Value>)>,
    /// What each watch holds now, by identity.
    state: Vec<BTreeMap<ObjectId, Document>>,
}

impl LiveManifests {
    /// Loads `paths` once; fails when a file cannot be read or parsed, as
    /// `render` does.
    pub fn load(paths: Vec<PathBuf>, watches: Vec<Watch>) -> Result<LiveManifests> {
        let mut files = HashMap::new();
        for file in self::files(&paths)? {
            let text = fs::read_to_string(&file).map_err(|source| Error::Read {
                path: file.clone(),
                source,
            })?;
            let objects = parse_objects(&file, &text)?;
            files.insert(file, (text, objects));
        }
        let mut live = LiveManifests {
            state: vec![BTreeMap::new(); watches.len()],
            paths,
            watches,
            files,
        };
        live.state = live.selected();
        Ok(live)
    }

    /// The initial listing of every watch.
    pub fn listings(&self) -> Vec<SourceEvent> {
        self.state
            .iter()
            .enumerate()
            .map(|(watch, objects)| SourceEvent {
                watch,
                event: Event::Listed {
                    scope: None,
                    objects: objects.values().cloned().collect(),
                },
            })
            .collect()
    }

    /// Re-reads the files and returns what changed since the last scan.
    pub fn rescan(&mut self) -> Vec<SourceEvent> {
        let current = match files(&self.paths) {
            Ok(current) => current,
            Err(error) => {
                tracing::error!(%error, "cannot list manifests; keeping the previous objects");
                return Vec::new();
            }
        };
        self.files.retain(|path, _| current.contains(path));
        for file in current {
            let text = match fs::read_to_string(&file) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.files.remove(&file);
                    continue;
                }
                Err(source) => {
                    let error = Error::Read { path: file, source };
                    tracing::error!(%error, "cannot read manifest; keeping its previous objects");
                    continue;
                }
            };
            if self.files.get(&file).is_some_and(|(old, _)| *old == text) {
                continue;
            }
            match parse_objects(&file, &text) {
                Ok(objects) => {
                    self.files.insert(file, (text, objects));
                }
                Err(error) => tracing::error!(%error, "bad manifest; keeping its previous objects"),
            }
        }
        let next = self.selected();
        let mut events = Vec::new();
        for (watch, (old, new)) in self.state.iter().zip(&next).enumerate() {
            for (id, object) in old {
                if !new.contains_key(id) {
                    events.push(SourceEvent {
                        watch,
                        event: Event::Deleted(object.clone()),
                    });
                }
            }
            for (id, object) in new {
                if old.get(id) != Some(object) {
                    events.push(SourceEvent {
                        watch,
                        event: Event::Applied(object.clone()),
                    });
                }
            }
        }
        self.state = next;
        events
    }

    /// Each watch's objects from the files as they are now.
    fn selected(&self) -> Vec<BTreeMap<ObjectId, Document>> {
        let mut paths: Vec<&PathBuf> = self.files.keys().collect();
        paths.sort();
        let namespaces = Namespaces::among(paths.iter().flat_map(|p| &self.files[*p].1));
        self.watches
            .iter()
            .map(|watch| {
                paths
                    .iter()
                    .flat_map(|p| &self.files[*p].1)
                    .filter(|o| watch.spec.selects(o, &namespaces))
                    .map(|o| {
                        let document = watch.document(o);
                        (Meta::of(document.root()).id, document)
                    })
                    .collect()
            })
            .collect()
    }

    /// Sends the initial listings, then the changes after every change on
    /// disk, until the receiver goes away.
    pub async fn run(mut self, tx: mpsc::Sender<SourceEvent>) -> Result<()> {
        let (changed_tx, mut changed) = mpsc::channel::<()>(1);
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok() {
                // A full channel already holds a pending rescan.
                let _ = changed_tx.try_send(());
            }
        })
        .map_err(|e| Error::Read {
            path: self.paths[0].clone(),
            source: std::io::Error::other(e),
        })?;
        for path in &self.paths {
            // A single file is watched through its directory, so that an atomic
            // replacement (rename over it) is seen too.
            let (target, mode) = if path.is_dir() {
                (path.as_path(), notify::RecursiveMode::Recursive)
            } else {
                (
                    path.parent()
                        .filter(|p| !p.as_os_str().is_empty())
                        .unwrap_or(Path::new(".")),
                    notify::RecursiveMode::NonRecursive,
                )
            };
            notify::Watcher::watch(&mut watcher, target, mode).map_err(|e| Error::Read {
                path: path.clone(),
                source: std::io::Error::other(e),
            })?;
        }
        for event in self.listings() {
            if tx.send(event).await.is_err() {
                return Ok(());
            }
        }
        while changed.recv().await.is_some() {
            for event in self.rescan() {
                if tx.send(event).await.is_err() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn directories_are_walked_recursively_in_order_skipping_other_files() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "b.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n",
        );
        write(
            dir.path(),
            "sub/a.json",
            r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}}"#,
        );
        write(dir.path(), "notes.txt", "not a manifest");
        write(dir.path(), ".hidden.yaml", "garbage: [");
        let objects = load(&[dir.path().to_owned()]).unwrap();
        let names: Vec<_> = objects
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["b", "a"]);
    }

    #[test]
    fn multi_document_yaml_and_kubectl_lists_are_unwrapped() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "all.yaml",
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: s1}\n---\n---\napiVersion: v1\nkind: ConfigMapList\nitems:\n- metadata: {name: c1}\n",
        );
        let objects = load_file(&path).unwrap();
        assert_eq!(objects.len(), 2);
        assert_eq!(
            objects[1],
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c1"}})
        );
    }

    #[test]
    fn a_parse_error_names_the_file_and_position() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "bad.yaml", "apiVersion: v1\nkind: [unclosed\n");
        let err = load_file(&path).unwrap_err().to_string();
        assert!(err.contains("bad.yaml:"), "{err}");
        let json = write(dir.path(), "bad.json", "{\n  \"kind\": }");
        let err = load_file(&json).unwrap_err().to_string();
        assert!(err.contains("bad.json:2:"), "{err}");
    }

    fn watches(config: &str) -> Vec<Watch> {
        let config = crate::config::Config::parse(config, Path::new("c.yaml"), Path::new(".")).unwrap();
        super::super::plan(&config)
    }

    #[test]
    fn live_rescans_report_changes_as_watch_events() {
        let dir = tempfile::tempdir().unwrap();
        let cm = |name: &str, v: &str| {
            format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: ns}}\ndata: {{v: \"{v}\"}}\n"
            )
        };
        write(dir.path(), "a.yaml", &cm("a", "1"));
        write(dir.path(), "b.yaml", &cm("b", "1"));
        let config =
            "watched_resources:\n  cms: {api_version: v1, kind: ConfigMap}\ntemplates:\n  t: {inline: x, path: t}\n";
        let mut live = LiveManifests::load(vec![dir.path().to_owned()], watches(config)).unwrap();
        let listings = live.listings();
        assert!(
            matches!(&listings[..], [SourceEvent { event: Event::Listed { objects, .. }, .. }] if objects.len() == 2)
        );
        assert!(live.rescan().is_empty(), "nothing changed");

        write(dir.path(), "a.yaml", &cm("a", "2"));
        fs::remove_file(dir.path().join("b.yaml")).unwrap();
        write(dir.path(), "c.yaml", &cm("c", "1"));
        let events = live.rescan();
        let summary: Vec<String> = events
            .iter()
            .map(|e| match &e.event {
                Event::Applied(o) => format!("applied {}", o.to_json()["metadata"]["name"].as_str().unwrap()),
                Event::Deleted(o) => format!("deleted {}", o.to_json()["metadata"]["name"].as_str().unwrap()),
                Event::Listed { .. } => "listed".into(),
            })
            .collect();
        assert_eq!(summary, ["deleted b", "applied a", "applied c"]);

        write(dir.path(), "a.yaml", "kind: [broken");
        assert!(live.rescan().is_empty(), "a broken file keeps its previous objects");
    }

    #[test]
    fn documents_that_are_not_objects_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "x.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok}\n---\n- a list\n",
        );
        let err = load_file(&path).unwrap_err().to_string();
        assert!(err.contains("x.yaml (document 2)"), "{err}");
        let nameless = write(dir.path(), "y.yaml", "apiVersion: v1\nkind: ConfigMap\n");
        assert!(load_file(&nameless).unwrap_err().to_string().contains("metadata.name"));
    }
}
