"""Real brokers without Docker, for tests, the demo and the bench: a single-node Kafka
(:mod:`devtools.brokers.kafka`) and RocketMQ (:mod:`devtools.brokers.rocketmq`) from Maven
Central jars cached in ``.cache/``, on the process plumbing of :mod:`devtools.brokers.processes`."""
