//! roster-dns's integration tests, in one binary: real DNS servers on port 0,
//! real packets.

mod common;

mod answers;
mod fuzz;
mod limits;
mod protocol;
mod rrl;
