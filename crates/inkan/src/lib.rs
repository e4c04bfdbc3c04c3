//! inkan: an OAuth 2.1 authorization server for MCP clients and an
//! authenticating, streaming gateway in front of MCP services, with people
//! signing in through Hanko passkeys.
//!
//! A tour of the modules, in the order a request meets them:
//!
//! - [`config`]: the TOML + environment configuration, validated up front.
//! - [`server`]: the axum router and the shared [`server::AppState`].
//! - [`identity`]: Hanko — JWKS cache, session JWT verification, session
//!   liveness, the webhook receiver.
//! - [`oauth`]: the authorization server — metadata, registration, client
//!   metadata documents, authorize + consent, token, revocation, introspection.
//! - [`gateway`]: the resource server — protected resource metadata, the token
//!   hot path (`gateway/validate.rs`), the streaming proxy, identity assertions.
//! - [`pages`]: login, consent and account pages (askama templates).
//! - [`revocation`]: logout, cross-instance cache invalidation.
//! - [`store`]: one [`store::Store`] trait; SQLite and Redis (standalone and
//!   cluster) backends.
//! - [`ops`], [`metrics`]: health, readiness and Prometheus metrics.
//! - [`cli`]: the `inkan` command line.
#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod dev;
pub mod gateway;
pub mod identity;
pub mod metrics;
pub mod oauth;
pub mod ops;
pub mod pages;
pub mod revocation;
pub mod serve;
pub mod server;
pub mod store;
