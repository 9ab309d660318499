"""Benchmarks of the platform on this machine (`weijian bench …`, docs/performance.md)."""

from weijian.bench.context import PARTS, BenchConfig
from weijian.bench.ingest import run_ingest_bench
from weijian.bench.processes import BenchError

__all__ = ["PARTS", "BenchConfig", "BenchError", "run_ingest_bench"]
