"""Edited copies of a generated node.yaml for configuration tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml


def edited_node_yaml(node_dir: Path, out_dir: Path, change: Callable[[dict[str, Any]], Any]) -> Path:
    """``out_dir/node.yaml``: ``node_dir``'s node.yaml with absolute file paths, its data
    directory under ``out_dir/data``, no metrics port, then ``change(doc)`` applied."""
    doc = yaml.safe_load((node_dir / "node.yaml").read_text())
    for key in ("cert", "key", "ca_bundle", "genesis"):
        doc[key] = str((node_dir / doc[key]).resolve())
    doc.update(data_dir=str(out_dir / "data"), metrics_port=0)
    change(doc)
    path = out_dir / "node.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path
