"""Built-in bench plugin package bench_nets."""
