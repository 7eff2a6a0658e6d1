//! roster-cli's integration tests, in one binary: they run the real `roster`
//! binary as a child process.

mod agent_process;
mod errors;
mod persistence;
