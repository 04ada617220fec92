"""Benchmark stage: latency and throughput, parity across backends, training speed, cold start."""
