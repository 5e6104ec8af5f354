//! parley-bench: the load generator (being built).
