"""Benchmarks of the job monitor: server cost per viewer, bytes on the wire and update latency.

Run `python benchmarks/run.py` from the repository root; `--help` lists the options.
"""
