//! The reference model as a backend (placeholder until the model lands).
use super::{Backend, BackendError, Result};
use crate::scenario::Scenario;
use crate::trace::Trace;

pub struct ModelBackend;

impl ModelBackend {
    pub fn new() -> Self {
        ModelBackend
    }
}

impl Backend for ModelBackend {
    fn name(&self) -> &str {
        "model"
    }
    fn run(&mut self, _scenario: &Scenario) -> Result<Trace> {
        Err(BackendError::Failed("model backend not built yet".into()))
    }
}
