//! The template-facing view of the stores: `resources.<name>` with `get`,
//! `get_one`, `keys`, iteration and `|length`, all read from one snapshot and
//! without copying objects.

use std::collections::BTreeMap;
use std::sync::Arc;

use minijinja::value::{Enumerator, Object, ObjectExt, ObjectRepr, Value, ValueKind};
use minijinja::{Error, ErrorKind, State};

use crate::store::Snapshot;
use crate::store::full::Object as StoredObject;

/// One consistent point in time across all stores: what a render reads.
#[derive(Debug, Clone, Default)]
pub struct StoresSnapshot {
    pub stores: BTreeMap<String, Snapshot<Arc<StoredObject>>>,
}

/// `resources`: a mapping of store names to [`StoreView`]s.
#[derive(Debug)]
pub struct Resources {
    stores: BTreeMap<String, Value>,
}

impl Resources {
    pub fn new(snapshot: &StoresSnapshot) -> Resources {
        let stores = snapshot
            .stores
            .iter()
            .map(|(name, snap)| {
                let view = StoreView {
                    name: name.clone(),
                    snapshot: snap.clone(),
                };
                (name.clone(), Value::from_object(view))
            })
            .collect();
        Resources { stores }
    }
}

impl Object for Resources {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.stores.get(key.as_str()?).cloned()
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        self.mapped_enumerator(|this| Box::new(this.stores.keys().map(|k| Value::from(k.as_str()))))
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        Some(self.stores.len())
    }
}

/// `resources.<name>`: the objects of one store.
#[derive(Debug)]
pub struct StoreView {
    name: String,
    snapshot: Snapshot<Arc<StoredObject>>,
}

impl StoreView {
    fn key_args(&self, method: &str, args: &[Value]) -> Result<Vec<String>, Error> {
        args.iter()
            .enumerate()
            .map(|(i, arg)| match arg.kind() {
                ValueKind::String => Ok(arg.as_str().unwrap_or_default().to_string()),
                ValueKind::Number | ValueKind::Bool => Ok(arg.to_string()),
                ValueKind::None => Ok(String::new()),
                kind => Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!(
                        "resources.{}.{method}(): key value {} is {kind}; keys are strings, numbers or booleans",
                        self.name,
                        i + 1
                    ),
                )),
            })
            .collect()
    }
}

impl Object for StoreView {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Seq
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let index = key.as_usize()?;
        self.snapshot.iter().nth(index).map(|(_, o)| o.body.clone())
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        self.mapped_enumerator(|this| Box::new(this.snapshot.iter().map(|(_, o)| o.body.clone())))
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        Some(self.snapshot.len())
    }

    fn call_method(self: &Arc<Self>, _state: &mut State<'_, '_>, method: &str, args: &[Value]) -> Result<Value, Error> {
        match method {
            "get" => {
                let prefix = self.key_args(method, args)?;
                Ok(Value::from(
                    self.snapshot
                        .prefix(&prefix)
                        .map(|(_, o)| o.body.clone())
                        .collect::<Vec<_>>(),
                ))
            }
            "get_one" => {
                let prefix = self.key_args(method, args)?;
                let mut matches = self.snapshot.prefix(&prefix);
                let Some((_, first)) = matches.next() else {
                    return Ok(Value::from(()));
                };
                if let Some((_, second)) = matches.next() {
                    let more = matches.count();
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        format!(
                            "resources.{}.get_one({}) matches {} objects ({}, {}{}); use get() to read several",
                            self.name,
                            quoted(&prefix),
                            2 + more,
                            full_name(first),
                            full_name(second),
                            if more > 0 { ", …" } else { "" }
                        ),
                    ));
                }
                Ok(first.body.clone())
            }
            "keys" => {
                if !args.is_empty() {
                    return Err(Error::new(
                        ErrorKind::TooManyArguments,
                        format!("resources.{}.keys() takes no arguments", self.name),
                    ));
                }
                Ok(Value::from(
                    self.snapshot
                        .keys()
                        .into_iter()
                        .map(|k| Value::from(k.into_iter().map(Value::from).collect::<Vec<_>>()))
                        .collect::<Vec<_>>(),
                ))
            }
            _ => Err(Error::from(ErrorKind::UnknownMethod)),
        }
    }
}

fn quoted(parts: &[String]) -> String {
    parts.iter().map(|p| format!("{p:?}")).collect::<Vec<_>>().join(", ")
}

fn full_name(object: &StoredObject) -> String {
    if object.meta.namespace.is_empty() {
        object.meta.name.clone()
    } else {
        format!("{}/{}", object.meta.namespace, object.meta.name)
    }
}
