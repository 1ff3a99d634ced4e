//! Watcher errors as kube-template reads them (a lost connection, a server
//! without streaming lists) and tells them (the verb, the server's code,
//! reason and message).

use kube::runtime::watcher;

/// Whether a watcher error says the connection to the API server failed or
/// broke, rather than that the server answered with an error.
pub(super) fn connection_lost(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::InitialListFailed(e) | watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => {
            matches!(
                e,
                kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_)
            )
        }
        _ => false,
    }
}

/// Whether a watcher error is the server rejecting a streaming list: 1.20
/// answers 422 "resourceVersionMatch is forbidden for watch", later servers
/// without WatchList reject `sendInitialEvents`.
pub(super) fn lacks_streaming_lists(error: &watcher::Error) -> bool {
    let status = match error {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => status,
        watcher::Error::WatchError(status) => status,
        _ => return false,
    };
    status.code == 422
        && (status.message.contains("resourceVersionMatch") || status.message.contains("sendInitialEvents"))
}

/// A watcher error as the log, `/readyz` and the status page show it: the
/// verb, then the server's code, reason and message (which name the
/// resource), or what kept the request from the server. An event line that
/// does not decode (a malformed object) reaches us from kube as an empty API
/// status, which says nothing; it is named for what it is.
pub(super) fn describe(error: &watcher::Error) -> String {
    let (verb, error) = match error {
        watcher::Error::WatchFailed(kube::Error::Api(status)) if status.code == 0 && status.message.is_empty() => {
            return "the server sent a watch event that does not decode (a malformed object); it was skipped, \
             and the object keeps its last good state"
                .to_string();
        }
        watcher::Error::InitialListFailed(error) => ("list", error),
        watcher::Error::WatchStartFailed(error) | watcher::Error::WatchFailed(error) => ("watch", error),
        watcher::Error::WatchError(status) => return format!("watch: {}", describe_status(status)),
        watcher::Error::NoResourceVersion => return error.to_string(),
    };
    match error {
        kube::Error::Api(status) => format!("{verb}: {}", describe_status(status)),
        kube::Error::HyperError(_) | kube::Error::Service(_) => {
            format!("{verb}: cannot reach the API server: {}", innermost(error))
        }
        other => format!("{verb}: {other}"),
    }
}

/// `403 Forbidden: configmaps is forbidden: User …`.
fn describe_status(status: &kube::core::Status) -> String {
    let mut text = status.code.to_string();
    if !status.reason.is_empty() {
        text.push(' ');
        text.push_str(&status.reason);
    }
    if !status.message.is_empty() {
        text.push_str(": ");
        text.push_str(&status.message);
    }
    text
}

/// The deepest cause of an error: for a connection failure, the one that
/// says what happened (`Connection refused (os error 111)`).
fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}

#[cfg(test)]
mod tests {
    use kube::core::Status;

    use super::*;

    fn api(code: u16, reason: &str, message: &str) -> kube::Error {
        kube::Error::Api(Status::failure(message, reason).with_code(code).boxed())
    }

    #[test]
    fn a_refused_list_names_the_verb_and_the_servers_code_reason_and_message() {
        let message = r#"configmaps is forbidden: User "u" cannot list resource "configmaps" in API group "" in the namespace "web""#;
        let error = watcher::Error::InitialListFailed(api(403, "Forbidden", message));
        assert_eq!(describe(&error), format!("list: 403 Forbidden: {message}"));
        assert!(!connection_lost(&error));
    }

    #[test]
    fn the_422_of_a_server_without_streaming_lists_is_recognised() {
        let v1_20 = r#"ListOptions.meta.k8s.io "" is invalid: resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch"#;
        let error = watcher::Error::WatchStartFailed(api(422, "Invalid", v1_20));
        assert!(lacks_streaming_lists(&error));
        let other = watcher::Error::WatchStartFailed(api(422, "Invalid", "metadata.name: Invalid value"));
        assert!(!lacks_streaming_lists(&other));
        let forbidden = watcher::Error::WatchStartFailed(api(403, "Forbidden", "resourceVersionMatch"));
        assert!(!lacks_streaming_lists(&forbidden));
    }
}
