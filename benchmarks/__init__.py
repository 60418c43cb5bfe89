"""Side-by-side timing and memory scripts (not tests): ``python -m benchmarks.bench_<name>``."""
