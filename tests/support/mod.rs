//! Shared support code for the integration tests (`mod support;` in a test file).

// Each test binary uses part of these.
#[allow(dead_code)]
pub mod case;
pub mod fake_api;
#[allow(dead_code)]
pub mod files;
#[allow(dead_code)]
pub mod http;
#[allow(dead_code)]
pub mod objects;
pub mod real_api;
#[allow(dead_code)]
pub mod sidecar;
