"""``python -m node.orderer --config PATH``: run one orderer until SIGTERM/SIGINT."""

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

    server = serve(config)
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
