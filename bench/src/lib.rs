//! Load generators for roster benchmarks.
