"""tmc-bridge: Taobao TMC messages into Kafka."""

__version__ = "0.1.0"
