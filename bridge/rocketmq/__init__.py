"""Everything the bridge knows about RocketMQ clients, one job per module.

* :mod:`bridge.rocketmq.client`: producers and the push consumer over
  rocketmq-client-python (the only module that imports it), messages in and out,
  connection settings, and the classification of send failures;
* :mod:`bridge.rocketmq.native_log`: librocketmq's own log file, forwarded into the
  structured log;
* :mod:`bridge.rocketmq.address`: the name server list from an ONS address server;
* :mod:`bridge.rocketmq.config`: the connection section of the configuration, shared by
  the RocketMQ sink and the ONS source;
* :mod:`bridge.rocketmq.provision`: fetching the native library ``librocketmq.so``
  (``python -m bridge.rocketmq.provision``).
"""
