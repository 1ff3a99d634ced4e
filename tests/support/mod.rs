//! Shared support code for the integration tests (`mod support;` in a test file).

pub mod fake_api;
