//! Revocation that reaches every instance (placeholder seam; the revocation
//! issue fills it in).

use crate::server::AppState;
use crate::store::Revoked;

/// Tells this instance's caches, and every other instance, that grants were
/// revoked. Call it after every successful store revocation.
pub async fn announce(_state: &AppState, _revoked: &Revoked) {}
