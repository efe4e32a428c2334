//! The server in this process against real clients on 127.0.0.1, at the
//! protocol level: one test binary, so the crate is linked once for all of
//! them.

#[path = "../support/mod.rs"]
mod support;

mod budgets;
mod defense;
mod edits;
mod http;
mod messages;
mod metrics;
mod reading;
mod search;
mod sessions;
mod tls;
