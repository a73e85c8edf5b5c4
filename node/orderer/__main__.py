"""``python -m node.orderer --config PATH [--first-start]``: run one orderer until SIGTERM/SIGINT.

Exit codes: 0 after a graceful stop, 2 for a bad configuration (the reason is printed in
one line) or a consortium protocol version this release does not implement
(PROTOCOL_UNSUPPORTED, at start-up or once a config block raised it) or Raft state lost
(RAFT_STATE_LOST, at start-up or once the other orderers told a blank one it is a voter that
lost its state: a restart would not help), 1 for another start-up failure, 70 when the
ordering chain failed while running (a supervisor restarts it).
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import signal
import sys
import threading
from types import FrameType
from typing import Protocol

from node.config import load_node_config
from node.errors import RxError
from node.logs import configure_json_logging
from node.protocol import PROTOCOL_UNSUPPORTED


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m node.orderer")
    parser.add_argument("--config", required=True, help="the orderer's node.yaml")
    parser.add_argument(
        "--first-start", action="store_true",
        help="this orderer never ran: a founding orderer first started after the others ordered "
             "blocks (otherwise refused RAFT_STATE_LOST, as a voter that lost its data would be); "
             "it starts once every orderer any config named has answered that it never received a "
             "Raft message from it (README: Recovery)")
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
        server = serve(config, first_start=args.first_start)
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
    code = run_until_stopped(server, done)
    logging.getLogger(__name__).info("event=orderer_stopped node=%s", config.name)
    return code


class Running(Protocol):
    """What the wait loop needs of a running orderer (node.orderer.server.OrdererServer)."""

    def failure(self) -> BaseException | None: ...

    def stop(self, grace_s: float = 2.0) -> None: ...


def run_until_stopped(server: Running, done: threading.Event, poll_s: float = 1.0) -> int:
    """Serve until ``done`` (a signal: exit code 0) or until the ordering chain stops on its
    own (the reason printed; 2 for PROTOCOL_UNSUPPORTED and RAFT_STATE_LOST, else 70), then stop
    the server."""
    failure: BaseException | None = None
    while not done.wait(poll_s):
        failure = server.failure()
        if failure is not None:
            break
    server.stop()
    if failure is None:
        return 0
    print(f"rxchain orderer: {failure}", file=sys.stderr)
    refused = isinstance(failure, RxError) and failure.reason in (PROTOCOL_UNSUPPORTED, "RAFT_STATE_LOST")
    return 2 if refused else 70


if __name__ == "__main__":
    sys.exit(main())
