"""Built-in bench plugin package bench_metrics."""
