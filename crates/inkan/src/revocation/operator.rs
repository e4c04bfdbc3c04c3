//! `inkan revoke`: operator revocation against the configured store.
//!
//! Runs outside any serving process, so there is no local cache to clear;
//! with Redis the grant ids go out on the bus, and every running instance
//! forgets them as if one of its own users had revoked them.

use std::process::ExitCode;

use crate::config::Config;
use crate::store::{Revoked, Store, StoreResult};

/// What an operator revokes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    User(String),
    Session(String),
    Client(String),
    Grant(String),
}

impl Target {
    /// Revokes in the store; the caller announces.
    pub async fn revoke(&self, store: &dyn Store) -> StoreResult<Revoked> {
        match self {
            Target::User(id) => store.revoke_user(id).await,
            Target::Session(id) => store.revoke_session(id).await,
            Target::Client(id) => store.revoke_client(id).await,
            Target::Grant(id) => store.revoke_grant(id).await,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::User(id) => write!(f, "user {id}"),
            Target::Session(id) => write!(f, "session {id}"),
            Target::Client(id) => write!(f, "client {id}"),
            Target::Grant(id) => write!(f, "grant {id}"),
        }
    }
}

/// The whole `revoke` command after configuration loaded: exit 0 when the
/// store did the revocation (even of nothing), 1 when the store failed.
pub fn run(config: &Config, target: &Target) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("inkan revoke: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async {
        let store = match crate::store::connect(&config.store).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("inkan revoke: cannot open the store: {e}");
                return ExitCode::from(1);
            }
        };
        let revoked = match target.revoke(store.as_ref()).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("inkan revoke: the store refused the revocation of {target}: {e}");
                return ExitCode::from(1);
            }
        };
        let told = match super::bus::Target::from_store_config(&config.store) {
            Some(bus) => {
                if super::bus::Publisher::new(bus)
                    .publish(&revoked.grants)
                    .await
                {
                    " and told every running instance"
                } else {
                    "; running instances could not be told and forget within gateway.cache_ttl"
                }
            }
            None => "",
        };
        println!(
            "revoked {} grant(s) and {} token(s) of {target}{told}",
            revoked.grants.len(),
            revoked.tokens
        );
        ExitCode::SUCCESS
    })
}
