"""``python -m netgen --home DIR [--consortium FILE]``.

Exit codes: 0 generated (or completed), 2 bad configuration (BAD_CONFIG: the consortium file,
or a home holding another network or private files others may read; nothing written),
1 another failure (IO_ERROR ...: a home it was creating is removed)."""

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
    except RxError as exc:  # BAD_CONFIG: nothing was written; IO_ERROR: what it created is removed
        print(f"error: {exc}", file=sys.stderr)
        return 2 if exc.reason == "BAD_CONFIG" else 1
    except Exception as exc:  # noqa: BLE001 - one line for the operator, never a traceback
        print(f"error: netgen failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"generated {len(net.spec.orgs)} organisations, {len(net.nodes)} nodes in {net.home}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
