"""Test helpers that run real infrastructure (a single-node Kafka) without Docker."""
