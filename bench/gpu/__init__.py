"""Benchmarks that need a GPU (not run by `make bench`): `python -m bench.gpu.train_lora_7b`."""
