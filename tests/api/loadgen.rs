//! The load generator (`benches/loadgen/`): its modules, compiled here with
//! their unit tests, since a harness-less bench runs no tests.
//!
//! No timing is asserted here: figures go in BENCHMARKS.md.

// Parts of these serve the generator's run, which is not included yet.
#[allow(dead_code)]
#[path = "../../benches/loadgen/histogram.rs"]
mod histogram;
#[allow(dead_code)]
#[path = "../../benches/loadgen/options.rs"]
mod options;
#[allow(dead_code)]
#[path = "../../benches/loadgen/payload.rs"]
mod payload;
#[allow(dead_code)]
#[path = "../../benches/loadgen/plan.rs"]
mod plan;
#[path = "../../benches/loadgen/rate.rs"]
mod rate;
