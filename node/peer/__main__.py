"""``python -m node.peer --config PATH``: run one peer until SIGTERM/SIGINT.

Exit codes: 0 after a graceful stop, 2 for a bad configuration (the reason is printed), 1 for
another start-up failure, 74 when in-process restarts after commit failures are exhausted.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from types import FrameType

from node.config import load_node_config
from node.errors import RxError

# A commit failure (e.g. disk full) makes the peer close everything and start again in
# the same process, so it recovers by itself once the cause is gone (bounded attempts).
MAX_RESTARTS = 60
RESTART_PAUSE_S = 1.0
RETRY_ON_RESTART = frozenset({"IO_ERROR", "LEDGER_CORRUPT", "SERVICE_UNAVAILABLE"})


class JsonFormatter(logging.Formatter):
    """One JSON object per log line."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


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
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=config.log_level.upper(), handlers=[handler])
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
                print(f"rxchain peer: {err}", file=sys.stderr)
                return 2
            node = None
        except Exception as exc:  # noqa: BLE001 - report any start-up failure in one line
            if restarts == 0:
                print(f"rxchain peer: start-up failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                return 1
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
            print(f"rxchain peer: giving up after {MAX_RESTARTS} in-process restarts", file=sys.stderr)
            return 74
        # Reopen the ledger (recovery truncates a torn tail and replays) after a pause.
        done.wait(RESTART_PAUSE_S)
    return 0


if __name__ == "__main__":
    sys.exit(main())
