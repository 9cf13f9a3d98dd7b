"""The aigw benchmark harness: ``python -m benchmarks.run [--quick]`` (see README.md)."""
