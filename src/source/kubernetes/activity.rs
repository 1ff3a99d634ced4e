//! A client that follows its own liveness: every chunk of a successful
//! response body (list pages, watch events, bookmarks) counts as life of the
//! watch it serves, so a stalled watch is told from a quiet one.

use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use kube::Client;

use super::{Error, Result};
use crate::telemetry::activity::Activity;

/// A client whose every chunk of a successful response body (list pages,
/// watch events and bookmarks) counts as life of `activity`: this is how a
/// stalled watch is told from a quiet one, which still gets bookmarks.
pub fn watched_client(config: &kube::Config, activity: Arc<Activity>) -> Result<Client> {
    let builder = kube::client::ClientBuilder::try_from(config.clone()).map_err(|e| Error::Config(e.to_string()))?;
    Ok(builder.with_layer(&ActivityLayer(activity)).build())
}

#[derive(Clone)]
struct ActivityLayer(Arc<Activity>);

impl<S> tower::Layer<S> for ActivityLayer {
    type Service = ActivityService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ActivityService {
            inner,
            activity: Arc::clone(&self.0),
        }
    }
}

#[derive(Clone)]
struct ActivityService<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S, Req, B> tower::Service<http::Request<Req>> for ActivityService<S>
where
    S: tower::Service<http::Request<Req>, Response = http::Response<B>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<ActivityBody<B>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, std::result::Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::result::Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Req>) -> Self::Future {
        let response = self.inner.call(request);
        let activity = Arc::clone(&self.activity);
        async move {
            // A watch is hung while a connection is open and nothing comes on
            // it: an outage (no connection, error answers) is not silence.
            let response = match response.await {
                Ok(response) => response,
                Err(error) => {
                    activity.failed();
                    return Err(error);
                }
            };
            let open = if response.status().is_success() {
                Some(Open::new(activity))
            } else {
                activity.failed();
                None
            };
            Ok(response.map(|inner| ActivityBody { inner, open }))
        }
        .boxed()
    }
}

/// A response body being received: open until dropped.
struct Open(Arc<Activity>);

impl Open {
    fn new(activity: Arc<Activity>) -> Open {
        activity.opened();
        Open(activity)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.closed();
    }
}

pin_project_lite::pin_project! {
    struct ActivityBody<B> {
        #[pin]
        inner: B,
        open: Option<Open>,
    }
}

impl<B: http_body::Body> http_body::Body for ActivityBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<std::result::Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = this.inner.poll_frame(cx);
        match &frame {
            std::task::Poll::Ready(Some(Ok(_))) => {
                if let Some(Open(activity)) = this.open.as_ref() {
                    activity.touch();
                }
            }
            // Ended or broken: closed now, not when the client drops it.
            std::task::Poll::Ready(_) => *this.open = None,
            std::task::Poll::Pending => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
