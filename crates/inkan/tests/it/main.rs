//! inkan's integration tests: one binary, real parts (redis-server processes,
//! the Hanko emulator over HTTP, a real MCP upstream).

mod support;

mod cli;

mod gateway;
mod identity;
mod oauth;
mod revocation;
mod store;
mod wire;
