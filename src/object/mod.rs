//! The object representation that sources, stores and the renderer share:
//! compact documents, field paths into them, their identity, and the label
//! and field selectors that match them.

pub mod decode;
pub mod document;
mod meta;
pub mod path;
pub mod selector;

pub use document::{Document, Json, Node, Table};
pub use meta::{Meta, ObjectId};
pub use path::{FieldPath, Segment};
