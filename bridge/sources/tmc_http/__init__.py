"""The TMC HTTP API source (``source.type: tmc_http``): TMC messages fetched with signed
``taobao.tmc.messages.consume`` calls and settled with ``taobao.tmc.messages.confirm``.

``config`` holds its settings, ``kind`` its registration, ``parse`` the pure reading of a
consume answer, ``source`` the consume and confirm loops."""
