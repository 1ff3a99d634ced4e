//! The object type of the full watchers: each list item and watch event is
//! decoded once, from the response's JSON straight into the [`Document`] the
//! stores keep (see [`crate::object::decode`]), instead of into a
//! `DynamicObject` whose metadata is then serialised again and the whole
//! object encoded a second time.
//!
//! kube-rs decodes objects with their plain `Deserialize`, which cannot be
//! given a watch's [`Shape`] (its `ignore_fields`, its kind). [`Shaped`] lends
//! the shape to the thread for each poll of the watcher stream, which is where
//! kube-rs decodes the pages and events it receives; an object decoded
//! anywhere else is an error, not a silently different document.

use std::cell::RefCell;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use kube::api::ApiResource;
use kube::core::{DynamicResourceScope, ObjectMeta, Resource};
use serde::de::{Deserialize, Deserializer, Error as _};

use crate::object::Document;
use crate::object::decode::Shape;

thread_local! {
    /// The shape of the watch whose stream this thread is polling.
    static SHAPE: RefCell<Option<Arc<Shape>>> = const { RefCell::new(None) };
}

/// A watched object as the stores keep it, with the little metadata the
/// watcher needs (its resourceVersion, to resume from).
#[derive(Debug, Clone)]
pub struct Watched {
    meta: ObjectMeta,
    pub document: Document,
}

impl<'de> Deserialize<'de> for Watched {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Watched, D::Error> {
        let shape = SHAPE
            .with_borrow(Option::clone)
            .ok_or_else(|| D::Error::custom("an object decoded outside its watch stream"))?;
        let decoded = shape.decode(deserializer)?;
        Ok(Watched {
            meta: ObjectMeta {
                resource_version: decoded.resource_version,
                ..ObjectMeta::default()
            },
            document: decoded.document,
        })
    }
}

impl Resource for Watched {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn kind(dt: &ApiResource) -> std::borrow::Cow<'_, str> {
        dt.kind.as_str().into()
    }

    fn group(dt: &ApiResource) -> std::borrow::Cow<'_, str> {
        dt.group.as_str().into()
    }

    fn version(dt: &ApiResource) -> std::borrow::Cow<'_, str> {
        dt.version.as_str().into()
    }

    fn api_version(dt: &ApiResource) -> std::borrow::Cow<'_, str> {
        dt.api_version.as_str().into()
    }

    fn plural(dt: &ApiResource) -> std::borrow::Cow<'_, str> {
        dt.plural.as_str().into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.meta
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.meta
    }
}

pin_project_lite::pin_project! {
    /// A watcher stream whose objects are decoded with `shape`.
    pub struct Shaped<S> {
        #[pin]
        inner: S,
        shape: Arc<Shape>,
    }
}

impl<S> Shaped<S> {
    pub fn new(inner: S, shape: Arc<Shape>) -> Self {
        Shaped { inner, shape }
    }
}

impl<S: futures::Stream> futures::Stream for Shaped<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = self.project();
        let _lent = Lent::new(this.shape.clone());
        this.inner.poll_next(cx)
    }
}

/// The shape lent to this thread; the one before it comes back on drop.
struct Lent(Option<Arc<Shape>>);

impl Lent {
    fn new(shape: Arc<Shape>) -> Lent {
        Lent(SHAPE.with_borrow_mut(|lent| lent.replace(shape)))
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        let previous = self.0.take();
        SHAPE.with_borrow_mut(|lent| *lent = previous);
    }
}
