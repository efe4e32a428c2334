//! The built `parlor` binary, started as a child process the way a person
//! or a supervisor runs it.

#[path = "../support/mod.rs"]
mod support;

mod crash_loop;
mod edits;
mod export;
mod lifecycle;
mod storage;
