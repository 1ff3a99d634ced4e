//! Shared support code for the integration tests (`mod support;` in a test file).

// Each test binary uses its own part of the fake server.
#[allow(dead_code)]
pub mod fake_api;
