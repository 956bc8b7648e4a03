//! Parser for the `.irq` text format (placeholder until the parser lands).
use super::Scenario;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: expected {expected}, found {found}")]
pub struct ParseError {
    pub line: usize,
    pub column: usize,
    pub expected: String,
    pub found: String,
}

pub fn parse(_text: &str) -> Result<Scenario, ParseError> {
    Err(ParseError { line: 1, column: 1, expected: "a parser".into(), found: "none".into() })
}
