"""Development tooling: local brokers, demo, bench and the test harness.

Not part of the product: the image installs only ``bridge*`` and nothing under ``bridge/``
imports this package (tests/unit/test_layering.py checks both). Run it from the repository
root, e.g. ``python -m devtools.demo`` or ``python -m devtools.brokers.kafka --download-only``.
"""
