//! Scenario generation from fuzzer bytes (placeholder).
