"""Benchmarks: `python -m bench NAME --json` prints one flat JSON object of named figures."""
