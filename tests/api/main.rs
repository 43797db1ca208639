//! Integration tests: the real server over real HTTP on a random port, with a
//! real SQLite file in a temporary directory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod helpers;

mod analytics;
mod auth;
mod backpressure;
mod debug_page;
mod durability;
mod fuzz;
mod harness;
mod hot_path;
mod limits;
mod loadgen;
mod model;
mod registration;
mod retention;
mod robustness;
mod scale_out;
mod ses;
mod simulate;
mod sse;
mod store_down;
mod whatsapp;
