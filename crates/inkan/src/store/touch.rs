//! Coalesced `last_used` updates (placeholder; the store issue fills it in).
