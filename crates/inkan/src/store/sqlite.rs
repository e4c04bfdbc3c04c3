//! sqlite backend (placeholder).
