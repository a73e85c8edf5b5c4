"""``python -m node.ledger verify --data DIR --genesis FILE``: re-check a ledger.

Exit status 0 when the ledger is sound, 1 when a bad block is found (named on stdout),
2 on bad arguments.
"""

from __future__ import annotations

import argparse
import sys

from node.errors import RxError
from node.genesis import read_genesis
from node.ledger.verify import verify_ledger


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m node.ledger")
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("verify", help="re-check hashes, signatures and the state hash")
    v.add_argument("--data", required=True, help="ledger directory (or a node data dir)")
    v.add_argument("--genesis", required=True, help="the consortium's genesis.block")
    v.add_argument("--orderer-quorum", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        genesis = read_genesis(args.genesis)
    except RxError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report = verify_ledger(args.data, genesis, orderer_quorum=args.orderer_quorum)
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
