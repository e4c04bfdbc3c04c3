//! identity tests.
