"""A stand-in node process for launcher tests: serves Admin.Health over mutual TLS.

Invoked as ``fake_node.py -m node.peer --config node.yaml``. Behaviour by environment:
``FAKE_NODE_EXIT`` = a node name that exits at once; ``FAKE_NODE_STUBBORN`` = ignore SIGTERM.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from concurrent import futures

import grpc
from rxchain.v1 import services_pb2, services_pb2_grpc

from node.config import load_node_config
from node.crypto.tls import server_credentials


class Admin(services_pb2_grpc.AdminServicer):
    def __init__(self, name: str, role: str):
        self.name, self.role = name, role

    def Health(self, request, context):
        return services_pb2.HealthResponse(serving=True, node=self.name, role=self.role)

    def Status(self, request, context):
        return services_pb2.StatusResponse(node=self.name, role=self.role, height=1)


def main() -> int:
    cfg = load_node_config(sys.argv[sys.argv.index("--config") + 1])
    if os.environ.get("FAKE_NODE_EXIT") == cfg.name:
        print(f"{cfg.name}: refusing to start", flush=True)
        return 3
    stop = threading.Event()
    if os.environ.get("FAKE_NODE_STUBBORN"):
        signal.signal(signal.SIGTERM, lambda *_: None)
    else:
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    services_pb2_grpc.add_AdminServicer_to_server(Admin(cfg.name, cfg.kind), server)
    server.add_secure_port(cfg.listen, server_credentials(cfg.cert_path, cfg.key_path,
                                                          cfg.ca_bundle_path))
    server.start()
    stop.wait(120)
    server.stop(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
