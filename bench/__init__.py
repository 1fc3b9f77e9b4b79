"""Benchmarks. Each `bench/bench_*.py` defines `main(quick: bool) -> list[Result]`-style output by
printing its own table; `python -m bench` runs them all. Every benchmark measures a baseline in
the same run and prints ratios: absolute times on shared machines mean little."""
