//! Integration tests: the real server over real HTTP on a random port, with a
//! real SQLite file in a temporary directory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod helpers;

mod alerts;
mod analytics;
mod auth;
mod backpressure;
mod dead_letter_replay;
mod debug_page;
mod durability;
mod fuzz;
mod harness;
mod hot_path;
mod limits;
mod loadgen;
mod logs;
mod model;
mod openapi;
mod reads;
mod registration;
mod retention;
mod robustness;
mod scale_out;
mod ses;
mod shutdown;
mod simulate;
mod sse;
mod store_down;
mod whatsapp;
