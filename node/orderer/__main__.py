"""``python -m node.orderer --config PATH``: run one orderer until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import signal
import sys
import threading
import time
from types import FrameType

from node.config import load_node_config
from node.errors import RxError


class JsonFormatter(logging.Formatter):
    """One JSON object per log line (structured logs)."""

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
    parser = argparse.ArgumentParser(prog="python -m node.orderer")
    parser.add_argument("--config", required=True, help="the orderer's node.yaml")
    args = parser.parse_args(argv)
    try:
        config = load_node_config(args.config)
    except RxError as err:
        print(f"rxchain orderer: {err}", file=sys.stderr)
        return 2
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=config.log_level.upper(), handlers=[handler])
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
