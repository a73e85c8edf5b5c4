"""Consortium generator: consortium file -> CA keys, certificates, node configs, genesis."""

from netgen.generate import GeneratedNetwork, generate, generate_from_file
from netgen.spec import ConsortiumSpec, load_spec, parse_spec, read_consortium_file

__all__ = [
    "ConsortiumSpec",
    "GeneratedNetwork",
    "generate",
    "generate_from_file",
    "load_spec",
    "parse_spec",
    "read_consortium_file",
]
