"""``python -m node.peer --config PATH``: run one peer until SIGTERM/SIGINT.

Exit codes: 0 after a graceful stop, 2 for a bad configuration (the reason is printed), 1 for
another start-up failure, 74 when in-process restarts after commit failures are exhausted.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType

from node.config import load_node_config
from node.errors import RxError
from node.logs import configure_json_logging

# A commit failure (e.g. disk full) makes the peer close everything and start again in
# the same process, so it recovers by itself once the cause is gone (bounded attempts).
MAX_RESTARTS = 60
RESTART_PAUSE_S = 1.0
RETRY_ON_RESTART = frozenset({"IO_ERROR", "LEDGER_CORRUPT", "SERVICE_UNAVAILABLE"})


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m node.peer")
    parser.add_argument("--config", required=True, help="the peer's node.yaml")
    args = parser.parse_args(argv)
    try:
        config = load_node_config(args.config)
        if config.kind != "peer":
            raise RxError("BAD_CONFIG", f"{args.config} describes a {config.kind}, not a peer")
    except RxError as err:
        print(f"rxchain peer: {err}", file=sys.stderr)
        return 2
    configure_json_logging(config.log_level)
    from node.peer.server import serve

    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log = logging.getLogger(__name__)
    restarts = 0
    while not done.is_set():
        try:
            node = serve(config)
        except RxError as err:
            if restarts == 0 or err.reason not in RETRY_ON_RESTART:
                if restarts:  # it ran: its JSON log says why it stops, as peer_gave_up does
                    log.critical("event=peer_restart_refused attempt=%d reason=%s detail=%r", restarts,
                                 err.reason, err.message)
                print(f"rxchain peer: {err}", file=sys.stderr)
                return 2
            log.error("event=peer_restart_failed attempt=%d reason=%s detail=%r", restarts, err.reason,
                      err.message)
            node = None
        except Exception as exc:  # noqa: BLE001 - report any start-up failure in one line
            if restarts == 0:
                print(f"rxchain peer: start-up failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                return 1
            log.error("event=peer_restart_failed attempt=%d reason=INTERNAL detail=%r", restarts,
                      f"{type(exc).__name__}: {exc}")
            node = None
        if node is not None:
            while not done.is_set() and not node.failed.is_set():
                done.wait(0.5)
            node.stop()
            if done.is_set():
                return 0
            log.error("event=peer_restart reason=%r", str(node.failure))
        restarts += 1
        if restarts > MAX_RESTARTS:
            log.critical("event=peer_gave_up restarts=%d", MAX_RESTARTS)
            print(f"rxchain peer: giving up after {MAX_RESTARTS} in-process restarts", file=sys.stderr)
            return 74
        # Reopen the ledger (recovery truncates a torn tail and replays) after a pause.
        done.wait(RESTART_PAUSE_S)
    return 0


if __name__ == "__main__":
    sys.exit(main())
