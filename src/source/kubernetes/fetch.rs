//! GETs of object bodies for on-demand stores.

use std::sync::OnceLock;

use futures::FutureExt;
use futures::future::BoxFuture;
use kube::api::DynamicObject;
use kube::{Api, Client};
use serde_json::Value;

use super::{Resolved, to_json};
use crate::store::on_demand::Fetch;

/// GETs object bodies for an on-demand store.
pub struct ApiFetch {
    client: Client,
    /// Set once discovery found the kind (at start, or later for a kind the
    /// server did not serve yet).
    resolved: OnceLock<Resolved>,
}

impl ApiFetch {
    pub fn new(client: Client, resolved: &Resolved) -> ApiFetch {
        let fetch = ApiFetch::pending(client);
        fetch.resolve(resolved);
        fetch
    }

    /// For a kind not served yet: every GET fails until [`ApiFetch::resolve`].
    pub fn pending(client: Client) -> ApiFetch {
        ApiFetch {
            client,
            resolved: OnceLock::new(),
        }
    }

    pub fn resolve(&self, resolved: &Resolved) {
        let _ = self.resolved.set(resolved.clone());
    }
}

impl Fetch for ApiFetch {
    fn fetch(&self, namespace: &str, name: &str) -> BoxFuture<'static, std::result::Result<Option<Value>, String>> {
        let Some(resolved) = self.resolved.get() else {
            return futures::future::ready(Err("the API server does not serve this kind yet".to_string())).boxed();
        };
        let ar = resolved.resource.clone();
        let api: Api<DynamicObject> = if resolved.namespaced {
            Api::namespaced_with(self.client.clone(), namespace, &ar)
        } else {
            Api::all_with(self.client.clone(), &ar)
        };
        let name = name.to_string();
        async move {
            match api.get_opt(&name).await {
                Ok(object) => Ok(object.map(|o| to_json(o, &ar))),
                Err(e) => Err(e.to_string()),
            }
        }
        .boxed()
    }
}
