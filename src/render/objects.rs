//! The template-facing view of the stores: `resources.<name>` with `get`,
//! `get_one`, `keys`, iteration and `|length`, all read from one snapshot and
//! without copying objects.

use std::collections::BTreeMap;
use std::sync::Arc;

use minijinja::value::{Enumerator, Object, ObjectExt, ObjectRepr, Value, ValueKind};
use minijinja::{Error, ErrorKind, State};

use crate::store::on_demand::Wanted;
use crate::store::{Slot, StoreSnapshot};

/// One consistent point in time across all stores: what a render reads.
#[derive(Debug, Clone, Default)]
pub struct StoresSnapshot {
    pub stores: BTreeMap<String, StoreSnapshot>,
}

/// `resources`: a mapping of store names to [`StoreView`]s.
#[derive(Debug)]
pub struct Resources {
    stores: BTreeMap<String, Value>,
}

impl Resources {
    pub fn new(snapshot: &StoresSnapshot) -> Resources {
        let runtime = tokio::runtime::Handle::try_current().ok();
        let stores = snapshot
            .stores
            .iter()
            .map(|(name, store)| {
                let view = StoreView {
                    name: name.clone(),
                    store: store.clone(),
                    runtime: runtime.clone(),
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
    store: StoreSnapshot,
    /// Where on-demand reads run; templates are synchronous, so a read blocks
    /// the rendering thread (never an async worker) until its GETs are done.
    runtime: Option<tokio::runtime::Handle>,
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

    /// The slots whose key starts with `prefix` (all for `None`), in order.
    fn slots(&self, prefix: Option<&[String]>) -> Vec<Slot> {
        fn collect<'a, T: 'a>(iter: impl Iterator<Item = (&'a Slot, &'a T)>) -> Vec<Slot> {
            iter.map(|(slot, _)| slot.clone()).collect()
        }
        match (&self.store, prefix) {
            (StoreSnapshot::Full(s), None) => collect(s.iter()),
            (StoreSnapshot::Full(s), Some(p)) => collect(s.prefix(p)),
            (StoreSnapshot::OnDemand { snapshot, .. }, None) => collect(snapshot.iter()),
            (StoreSnapshot::OnDemand { snapshot, .. }, Some(p)) => collect(snapshot.prefix(p)),
        }
    }

    /// The objects at `slots`, in order; on-demand bodies are fetched
    /// concurrently, and objects deleted meanwhile are left out.
    fn bodies(&self, slots: &[Slot]) -> Result<Vec<Value>, Error> {
        match &self.store {
            StoreSnapshot::Full(s) => Ok(slots
                .iter()
                .filter_map(|slot| s.get(slot).map(crate::render::value::document))
                .collect()),
            StoreSnapshot::OnDemand { snapshot, cache } => {
                let layout = snapshot.layout();
                let wanted: Vec<Wanted> = slots
                    .iter()
                    .filter_map(|slot| {
                        let reference = snapshot.get(slot)?;
                        let (namespace, name) = slot.names(layout);
                        Some(Wanted {
                            id: slot.id(),
                            namespace: namespace.to_string(),
                            name: name.to_string(),
                            version: reference.version,
                        })
                    })
                    .collect();
                let runtime = self.runtime.as_ref().ok_or_else(|| {
                    Error::new(
                        ErrorKind::InvalidOperation,
                        format!("resources.{}: on-demand reads need the live pipeline", self.name),
                    )
                })?;
                runtime
                    .block_on(cache.read_all(&wanted))
                    .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))
            }
        }
    }

    fn full_name(&self, slot: &Slot) -> String {
        let layout = match &self.store {
            StoreSnapshot::Full(s) => s.layout(),
            StoreSnapshot::OnDemand { snapshot, .. } => snapshot.layout(),
        };
        match slot.names(layout) {
            ("", name) => name.to_string(),
            (namespace, name) => format!("{namespace}/{name}"),
        }
    }
}

impl Object for StoreView {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Seq
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let index = key.as_usize()?;
        let slot = self.slots(None).into_iter().nth(index)?;
        self.bodies(&[slot]).ok()?.into_iter().next()
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        match self.bodies(&self.slots(None)) {
            Ok(bodies) => Enumerator::Iter(Box::new(bodies.into_iter())),
            // An invalid value fails the loop that reaches it, with this error.
            Err(error) => Enumerator::Iter(Box::new(std::iter::once(Value::from(error)))),
        }
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        Some(self.store.len())
    }

    fn call_method(self: &Arc<Self>, _state: &mut State<'_, '_>, method: &str, args: &[Value]) -> Result<Value, Error> {
        match method {
            "get" => {
                let prefix = self.key_args(method, args)?;
                Ok(Value::from(self.bodies(&self.slots(Some(&prefix)))?))
            }
            "get_one" => {
                let prefix = self.key_args(method, args)?;
                let slots = self.slots(Some(&prefix));
                match &slots[..] {
                    [] => Ok(Value::from(())),
                    [one] => Ok(self.bodies(std::slice::from_ref(one))?.pop().unwrap_or(Value::from(()))),
                    [first, second, rest @ ..] => Err(Error::new(
                        ErrorKind::InvalidOperation,
                        format!(
                            "resources.{}.get_one({}) matches {} objects ({}, {}{}); use get() to read several",
                            self.name,
                            quoted(&prefix),
                            slots.len(),
                            self.full_name(first),
                            self.full_name(second),
                            if rest.is_empty() { "" } else { ", …" }
                        ),
                    )),
                }
            }
            "keys" => {
                if !args.is_empty() {
                    return Err(Error::new(
                        ErrorKind::TooManyArguments,
                        format!("resources.{}.keys() takes no arguments", self.name),
                    ));
                }
                let keys = match &self.store {
                    StoreSnapshot::Full(s) => s.keys(),
                    StoreSnapshot::OnDemand { snapshot, .. } => snapshot.keys(),
                };
                Ok(Value::from(
                    keys.into_iter()
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
