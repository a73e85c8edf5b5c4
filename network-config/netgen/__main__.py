"""``python -m netgen --home DIR [--consortium FILE]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from netgen.generate import generate_from_file
from node.errors import RxError

DEFAULT_CONSORTIUM = Path(__file__).resolve().parent.parent / "consortium.yaml"


def main(argv: list[str] | None = None) -> int:
    """Generate the consortium's material."""
    ap = argparse.ArgumentParser(prog="netgen", description=__doc__)
    ap.add_argument("--home", required=True, type=Path)
    ap.add_argument("--consortium", type=Path, default=DEFAULT_CONSORTIUM)
    args = ap.parse_args(argv)
    try:
        net = generate_from_file(args.consortium, args.home)
    except RxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"generated {len(net.spec.orgs)} organisations, {len(net.nodes)} nodes in {net.home}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
