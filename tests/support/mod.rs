//! Shared support code for the integration tests (`mod support;` in a test file).

pub mod fake_api;
#[allow(dead_code)] // each test binary uses part of it
pub mod sidecar;
