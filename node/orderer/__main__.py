"""``python -m node.orderer --config PATH``: run one orderer until SIGTERM/SIGINT.

Exit codes: 0 after a graceful stop, 2 for a bad configuration (the reason is printed in
one line), 1 for another start-up failure.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import signal
import sys
import threading
from types import FrameType

from node.config import load_node_config
from node.errors import RxError
from node.logs import configure_json_logging


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m node.orderer")
    parser.add_argument("--config", required=True, help="the orderer's node.yaml")
    args = parser.parse_args(argv)
    try:
        config = load_node_config(args.config)
    except RxError as err:
        print(f"rxchain orderer: {err}", file=sys.stderr)
        return 2
    configure_json_logging(config.log_level)
    if config.kind != "orderer":
        print(f"rxchain orderer: {args.config} describes a {config.kind}", file=sys.stderr)
        return 2
    from node.orderer.server import serve

    # Operators (and tests) can dump every thread's stack with SIGUSR1.
    faulthandler.register(signal.SIGUSR1, all_threads=True)

    try:
        server = serve(config)
    except RxError as err:  # a start-up refusal (bad config, RAFT_STATE_LOST ...): one clear line
        print(f"rxchain orderer: {err}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - report any start-up failure in one line
        print(f"rxchain orderer: start-up failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not done.wait(1.0):
        pass
    server.stop()
    logging.getLogger(__name__).info("orderer %s stopped", config.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
