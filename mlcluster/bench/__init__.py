"""`mlcluster bench`: closed- and open-loop load, sweeps, exact statistics,
the server-side breakdown, and reports (Rich, JSON, CSV, PNG).

Library use, without the CLI::

    from mlcluster.bench import BenchConfig, Target, random_bodies, run_bench
    result = run_bench(BenchConfig(concurrency=8, requests=200), Target(url), random_bodies())
"""
from .load import LoadStep, Target, random_bodies, text_bodies
from .runner import BenchConfig, BenchResult, run_bench
from .stats import Answer, Distribution, RequestRecord, StepSummary, Summary, percentile, summarise

__all__ = ["Answer", "BenchConfig", "BenchResult", "Distribution", "LoadStep", "RequestRecord", "StepSummary",
           "Summary", "Target", "percentile", "random_bodies", "run_bench", "summarise", "text_bodies"]
