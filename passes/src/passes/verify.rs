//! `verify`: the IR's invariants, checked after every pass in tests and debug
//! builds: unique names; every shape's element count agrees with its source
//! bytes; a chosen encoding divides the row length.

use std::collections::HashSet;

use crate::error::PassError;
use crate::ir::Model;

const NAME: &str = "verify";

pub fn verify(model: &Model) -> Result<(), PassError> {
    let mut seen = HashSet::new();
    for t in &model.tensors {
        if !seen.insert(t.name.as_str()) {
            return Err(PassError::new(NAME, Some(&t.name), "duplicate tensor name"));
        }
        let need = t
            .source
            .dtype
            .ggml()
            .row_bytes(t.row_len())
            .map(|r| r as u64 * t.n_rows() as u64);
        if need != Some(t.source.len) {
            return Err(PassError::new(
                NAME,
                Some(&t.name),
                format!(
                    "shape {:?} of {} does not match its {} source bytes",
                    t.shape,
                    t.source.dtype.name(),
                    t.source.len
                ),
            ));
        }
        if let Some(e) = t.encoding {
            if !e.fits(t.row_len()) {
                return Err(PassError::new(
                    NAME,
                    Some(&t.name),
                    format!(
                        "encoding {e} does not divide the row length {}",
                        t.row_len()
                    ),
                ));
            }
        }
    }
    Ok(())
}
