//! Errors of the passes: which pass, which tensor, and why.

#[derive(Debug, thiserror::Error)]
#[error("{pass}: {}{reason}", tensor.as_ref().map(|t| format!("tensor `{}`: ", crate::printable(t))).unwrap_or_default())]
pub struct PassError {
    pub pass: &'static str,
    pub tensor: Option<String>,
    pub reason: String,
}

impl PassError {
    pub fn new(pass: &'static str, tensor: Option<&str>, reason: impl Into<String>) -> PassError {
        PassError {
            pass,
            tensor: tensor.map(str::to_string),
            reason: reason.into(),
        }
    }
}
