"""Benchmarks of ccc-relay against a minimal relay, Redis streams and NATS.

Run: ``python -m benchmarks.run [--quick] [--cases ...] [--json FILE]``; see README.md.
"""
