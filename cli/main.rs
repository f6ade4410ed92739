//! kiln's command line.
fn main() {}
