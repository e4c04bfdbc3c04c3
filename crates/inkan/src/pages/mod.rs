//! Pages for people: login, consent, account.

pub mod account;
