//! redis backend (placeholder).
