"""Free ports for multi-process tests: re-exported from :mod:`netgen.ports` (its port layout)."""

from netgen.ports import LOCALHOST, free_base_port, free_port, free_ports, port_is_free

__all__ = ["LOCALHOST", "free_base_port", "free_port", "free_ports", "port_is_free"]
