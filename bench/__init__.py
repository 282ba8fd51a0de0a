"""Benchmarks: `python -m bench <name>` (or `make bench`). Numbers go in bench/README.md."""
