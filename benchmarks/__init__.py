"""stpm-bench: latency, throughput and roofline reports for exported STPM models.

Modules: ``stats`` (percentiles), ``environment`` (machine capture), ``flops`` (FLOP count and
rooflines), ``profiling`` (per-operator time), ``runner`` (the measurement loop), ``report``
(report.json / report.md / plots), ``cli`` (the ``stpm-bench`` entry point). See README.md.
"""
