"""Subprocess driver for the crash-recovery tests.

``python -m tests.ledger.crash_driver DIR N`` opens a Ledger in DIR (with the crash hook
from RXCHAIN_CRASH_AT) and commits deterministic blocks from its height up to N blocks.
Blocks and their validation codes depend only on the block number, so every run builds
the same chain.
"""

from __future__ import annotations

import os
import sys

from rxchain.v1 import block_pb2
from rxchain.v1 import transaction_pb2 as tx_pb

from node.crypto.canonical import GENESIS_PREVIOUS_HASH, block_data_hash
from node.ledger.errors import LedgerError
from node.ledger.ledger import Ledger, env_crash_hook
from node.ledger.txwrites import outcomes_from_block

TXS_PER_BLOCK = 6


def envelope(n: int, i: int) -> bytes:
    header = tx_pb.TxHeader(tx_id=f"tx-{n}-{i}", type=tx_pb.INVOKE, timestamp_ms=1000 * n + i)
    rw = tx_pb.TxRwSet()
    ns = rw.ns_rwsets.add(namespace="rx")
    ns.writes.add(key=f"k{(n * 7 + i) % 11}", value=f"v{n}.{i}".encode())
    if i % 4 == 3:
        ns.writes.add(key=f"k{i}", is_delete=True)
    prp = tx_pb.ProposalResponsePayload(results=rw.SerializeToString())
    tx = tx_pb.Transaction(header=header.SerializeToString(),
                           response_payload=prp.SerializeToString())
    return tx_pb.Envelope(payload=tx.SerializeToString(), signature=b"s").SerializeToString()


def build_block(n: int, prev: bytes) -> block_pb2.Block:
    envs = [envelope(n, i) for i in range(TXS_PER_BLOCK)]
    b = block_pb2.Block()
    b.header.number = n
    b.header.previous_hash = prev
    b.header.data_hash = block_data_hash(envs)
    b.data.envelopes.extend(envs)
    codes = [tx_pb.MVCC_READ_CONFLICT if (n + i) % 3 == 0 else tx_pb.VALID
             for i in range(TXS_PER_BLOCK)]
    b.metadata.validation_codes.extend(codes)
    return b


def commit_blocks(ledger: Ledger, total: int) -> None:
    """Commit the driver's blocks from the ledger's height until it holds ``total``."""
    while ledger.height() < total:
        n = ledger.height()
        prev = ledger.blocks.last_hash() if n else GENESIS_PREVIOUS_HASH
        block = build_block(n, prev)
        ledger.commit(block, outcomes_from_block(block))


def try_commit(ledger: Ledger, number: int) -> str:
    """Commit block ``number`` on the ledger's last hash; how it went, as a child process of
    a test prints it: ``no error``, ``refused REASON`` (LedgerError), ``oserror ERRNO`` or
    ``raw ExceptionName`` (anything else escaping the ledger)."""
    block = build_block(number, ledger.blocks.last_hash())
    try:
        ledger.commit(block, outcomes_from_block(block))
    except LedgerError as err:
        return f"refused {err.reason}"
    except OSError as exc:
        return f"oserror {exc.errno}"
    except Exception as exc:  # the test reports what escaped
        return f"raw {type(exc).__name__}"
    return "no error"


def main(argv: list[str]) -> int:
    directory, total = argv[0], int(argv[1])
    with Ledger(directory, crash_hook=env_crash_hook(os.environ)) as ledger:
        commit_blocks(ledger, total)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
