//! Shared test support: real servers started on free ports.

pub mod app;
pub mod flow;
pub mod gateway;
pub mod redis;
