//! `formats`: bytes in, bytes out.
