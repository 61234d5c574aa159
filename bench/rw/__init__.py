"""`python -m bench.rw`: the R/W trade-off study (throughput, tail latency, t-visibility, availability).

Modules: workload (seeded YCSB generator, pure), runner (HTTP client, closed-loop runs), visibility
(measured t-visibility), availability (kill -9 mid-run), cluster (own or given cluster), report (tables,
JSON, plots), suite (the phases in order), cli (argparse wiring). See bench/rw_tradeoff.md.
"""
