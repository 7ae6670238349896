//! The pieces of `ccproxy-bench`, the load client of ccproxy's benchmark suite
//! (`scripts/bench/run.sh`), as a library so the micro-benchmarks
//! (`benches/convert.rs`) build their request bodies the same way.

pub mod bodies;
pub mod http1;
pub mod load;
pub mod procfs;
pub mod sse;
pub mod stats;
