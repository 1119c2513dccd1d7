"""Operator commands beyond ``run``: ``check-config --connect`` and ``dead-letters replay``."""
