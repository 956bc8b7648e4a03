//! Printer for the canonical `.irq` text form (placeholder).
use super::Scenario;

pub fn print(_s: &Scenario) -> String {
    String::new()
}
