//! Integration tests: the real `spg99` binary, a real data directory, real HTTP.

mod bootstrap;
mod committer;
mod crash;
mod durability;
mod helpers;
mod http_basics;
mod log_integrity;
mod restart;
