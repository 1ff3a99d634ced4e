//! The admin HTTP server: `/healthz`, `/readyz`, `/metrics` and a status page
//! at `/` (DESIGN section 7). It reads [`Telemetry`] and never shows object
//! data; its one request that changes something, `POST /guard/accept`
//! (`kube-template accept`), is answered for loopback peers only.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;

use crate::telemetry::Telemetry;
use crate::telemetry::accept::{self, Reply};

/// What `/healthz` answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Healthz {
    /// Liveness only (DESIGN section 7).
    #[default]
    Liveness,
    /// As kiwigrid/k8s-sidecar's does, which its users' probes expect: 503
    /// `NOT READY` until the first render is on disk, then 200 `OK` while
    /// live, 503 `NOT LIVE (…)` when not.
    K8sSidecar,
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    telemetry: Arc<Telemetry>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, telemetry, Healthz::Liveness, shutdown).await
}

/// [`serve`], with `/healthz` answering as `healthz` says.
pub async fn serve_with(
    listener: TcpListener,
    telemetry: Arc<Telemetry>,
    healthz: Healthz,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/healthz",
            match healthz {
                Healthz::Liveness => get(self::healthz),
                Healthz::K8sSidecar => get(k8s_sidecar_healthz),
            },
        )
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/", get(page))
        .route(accept::PATH, post(guard_accept))
        .with_state(telemetry);
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
}

/// Accepts the pending shrink of a template (or of all) once. Only from
/// this pod: `admin.listen` is usually every address, and probes come over
/// the pod IP, so anything else could wipe the outputs from afar.
async fn guard_accept(
    State(telemetry): State<Arc<Telemetry>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
) -> Response {
    if !is_local(&peer) {
        tracing::warn!(%peer, "guard acceptance refused: not from loopback");
        return (
            StatusCode::FORBIDDEN,
            "accepting a shrink is allowed from the pod itself only (127.0.0.1 or ::1)\n",
        )
            .into_response();
    }
    // `?template=NAME`; none: every guarded template.
    let template = query
        .as_deref()
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("template="))
        .map(accept::decode)
        .filter(|t| !t.is_empty());
    match telemetry.accepts.ask(template.clone()).await {
        Some(Reply::Accepted(templates)) => {
            (StatusCode::OK, format!("accepted: {}\n", templates.join(", "))).into_response()
        }
        Some(Reply::NothingPending) => {
            let what = template.map_or("no guarded template".to_string(), |t| format!("template `{t}`"));
            (
                StatusCode::CONFLICT,
                format!("nothing to accept: {what} has no refused shrink\n"),
            )
                .into_response()
        }
        Some(Reply::Unknown(why)) => (StatusCode::NOT_FOUND, format!("{why}\n")).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the pipeline did not answer (not running, or busy rendering)\n",
        )
            .into_response(),
    }
}

/// Whether `peer` is this host: 127.0.0.0/8 or ::1, also as an IPv4-mapped
/// address (a dual-stack listener).
fn is_local(peer: &SocketAddr) -> bool {
    peer.ip().to_canonical().is_loopback()
}

fn verdict(result: Result<(), Vec<String>>) -> Response {
    match result {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(reasons) => (StatusCode::SERVICE_UNAVAILABLE, format!("{}\n", reasons.join("\n"))).into_response(),
    }
}

async fn healthz(State(telemetry): State<Arc<Telemetry>>) -> Response {
    verdict(telemetry.status.health())
}

async fn k8s_sidecar_healthz(State(telemetry): State<Arc<Telemetry>>) -> Response {
    let (code, body) = if !telemetry.status.readiness().ready {
        (StatusCode::SERVICE_UNAVAILABLE, "NOT READY".to_string())
    } else if let Err(reasons) = telemetry.status.health() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("NOT LIVE ({})", reasons.join("; ")),
        )
    } else {
        (StatusCode::OK, "OK".to_string())
    };
    (code, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

/// 200 or 503 by the readiness verdict. A 503 lists every current problem;
/// `?verbose` lists them with a 200 as well (problems the daemon serves
/// through: a failing render, a disconnected watch, stale copies).
async fn readyz(State(telemetry): State<Arc<Telemetry>>, RawQuery(query): RawQuery) -> Response {
    let verbose = query
        .as_deref()
        .is_some_and(|q| q.split('&').any(|p| p == "verbose" || p.starts_with("verbose=")));
    let verdict = telemetry.status.readiness();
    let code = if verdict.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let lines = verdict.lines();
    if lines.is_empty() || (verdict.ready && !verbose) {
        return (code, "ok\n").into_response();
    }
    (code, format!("{}\n", lines.join("\n"))).into_response()
}

async fn metrics(State(telemetry): State<Arc<Telemetry>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        telemetry.encode_metrics(),
    )
        .into_response()
}

async fn page(State(telemetry): State<Arc<Telemetry>>) -> Html<String> {
    Html(status_page(&telemetry))
}

/// The status page: the last render, groups, stores, watches and outputs. Names,
/// counts, times and checksums only.
pub fn status_page(telemetry: &Telemetry) -> String {
    let view = telemetry.status.view();
    let mut html = String::from(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>kube-template</title>\
         <style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}\
         td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}.bad{color:#b00}</style>\
         </head><body>\n<h1>kube-template</h1>\n",
    );
    let health = match telemetry.status.health() {
        Ok(()) => "healthy".to_string(),
        Err(reasons) => format!("<span class=\"bad\">unhealthy: {}</span>", escape(&reasons.join("; "))),
    };
    let verdict = telemetry.status.readiness();
    let ready = if verdict.ready {
        "ready"
    } else {
        "<span class=\"bad\">not ready</span>"
    };
    let _ = writeln!(html, "<p>{health} · {ready}</p>");
    if !verdict.problems.is_empty() {
        html.push_str("<h2>Problems</h2>\n<ul>\n");
        for line in verdict.lines() {
            let _ = writeln!(html, "<li class=\"bad\">{}</li>", escape(&line));
        }
        html.push_str("</ul>\n");
    }

    html.push_str("<h2>Last render</h2>\n");
    match &view.last_render {
        None => html.push_str("<p>none yet</p>\n"),
        Some(render) => {
            let result = match &render.error {
                None => "success".to_string(),
                Some(e) => format!("<span class=\"bad\">failed: {}</span>", escape(e)),
            };
            let _ = writeln!(
                html,
                "<p>{} · {} ms · {result}</p>",
                time(render.at),
                render.duration.as_millis()
            );
        }
    }

    if view.groups.len() > 1 || view.groups.values().any(|g| g.named) {
        html.push_str(
            "<h2>Groups</h2>\n<table><tr><th>group</th><th>reads</th><th>last render</th><th>result</th></tr>\n",
        );
        for (name, group) in &view.groups {
            let (at, result) = match &group.last_render {
                None => ("-".to_string(), "none yet".to_string()),
                Some(render) => (
                    time(render.at),
                    match &render.error {
                        None => "success".to_string(),
                        Some(e) => format!("<span class=\"bad\">failed: {}</span>", escape(e)),
                    },
                ),
            };
            let _ = writeln!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{at}</td><td>{result}</td></tr>",
                escape(name),
                escape(&group.reads)
            );
        }
        html.push_str("</table>\n");
    }

    html.push_str(
        "<h2>Stores</h2>\n<table><tr><th>store</th><th>resource</th><th>objects</th><th>last event</th></tr>\n",
    );
    for (name, store) in &view.stores {
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(name),
            escape(&store.resource),
            store.objects,
            store.last_event.map(time).unwrap_or_else(|| "-".into())
        );
    }
    html.push_str("</table>\n");

    html.push_str(
        "<h2>Watches</h2>\n<table><tr><th>watch</th><th>initial list</th><th>connected</th><th>silent for</th><th>last error</th></tr>\n",
    );
    for watch in &view.watches {
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} s</td><td>{}</td></tr>",
            escape(&watch.name),
            if watch.synced { "done" } else { "pending" },
            match watch.disconnected_since() {
                Some(since) => format!("<span class=\"bad\">no, since {}</span>", time(since)),
                None => "yes".into(),
            },
            watch.activity.silent_for().as_secs(),
            escape(watch.error.as_deref().unwrap_or("-"))
        );
    }
    html.push_str("</table>\n");

    html.push_str(
        "<h2>Outputs</h2>\n<table><tr><th>path</th><th>template</th><th>last written</th><th>sha256</th></tr>\n",
    );
    for (path, output) in &view.outputs {
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            escape(path),
            escape(&output.template),
            time(output.written_at),
            escape(&output.sha256)
        );
    }
    html.push_str("</table>\n<p><a href=\"/metrics\">metrics</a> · <a href=\"/healthz\">healthz</a> · <a href=\"/readyz?verbose\">readyz</a></p>\n</body></html>\n");
    html
}

fn time(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_peers_are_local() {
        for local in ["127.0.0.1:1", "127.8.9.10:1", "[::1]:1", "[::ffff:127.0.0.1]:1"] {
            assert!(is_local(&local.parse().unwrap()), "{local}");
        }
        for remote in [
            "10.0.0.7:1",
            "0.0.0.0:1",
            "[::]:1",
            "[fe80::1]:1",
            "[::ffff:10.0.0.7]:1",
            "192.168.1.2:1",
        ] {
            assert!(!is_local(&remote.parse().unwrap()), "{remote}");
        }
    }
}
