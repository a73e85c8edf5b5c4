"""A subverted sandbox worker for the host-side tests: it speaks the pipe protocol the way
a contract that escaped every in-process check could (``python hostile_worker.py MODE``).

Modes (each answers every InvokeRequest):
  ok            result {"tx": tx_id of the request}
  twice         that result, then the same result again in the same write
  stall         asks for key "big" and never reads its stdin again
  many-keys     puts keys k0..k{max_write_keys} (one more than allowed), then a result
  many-bytes    puts max_write_bytes // value_len + 1 keys of value_len bytes, then a result
  big-event     result with an event whose payload is max_value_bytes + 1 bytes
  read-flood    1,000 gets of distinct keys (compact frames), then a result
  long-key      a get of a key of max_key_len + 1 bytes, then a result
  long-ns       a get in a namespace of 256 characters, then a result
  serves        result {"pid": its pid, "served": every [contract, code_hash] it was asked
                to run so far, in order of first request} -- what a subverted worker
                kept in the pool would know (and could forge results for)
  serves-x-crashes  as serves, but a call of contract "x" makes it exit (status 3): a
                contract whose every call crashes its worker
  huge-header   a frame header announcing 200 MiB (below the old 256 MiB bound), 64 KiB
                of it, then nothing more
  long-message  a result whose message is 1 MiB (the host cuts messages to 1024
                characters, and accepted any frame below 256 MiB)
  history-flood 200 history reads of 1000 versions each, claiming 2**63 gas left, then a
                result (each read the Context sends has paid 1000 gas first)
  history-refused  200 history reads of 1000 versions each, going on whatever the host
                answers (a read refused SIZE_LIMIT ends an honest Context's call), then a
                result ok
"""

from __future__ import annotations

import json
import os
import struct
import sys
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(_ROOT), str(_ROOT / "gen")]

from rxchain.v1 import sandbox_pb2 as pb  # noqa: E402

from node.sandbox import protocol  # noqa: E402

IN_FD, OUT_FD = 0, 1


def _result(tx_id: str) -> pb.WorkerMessage:
    m = pb.WorkerMessage()
    m.result.ok = True
    m.result.result_json = b'{"tx":"%s"}' % tx_id.encode()
    m.result.gas_used = 1
    return m


def main() -> None:
    mode = sys.argv[1]
    reader = protocol.FrameReader(IN_FD)
    ready = pb.WorkerMessage()
    ready.ready.pid = os.getpid()
    protocol.write_frame(OUT_FD, ready.SerializeToString())
    limits = pb.SandboxLimitsMsg()
    served: list[list[str]] = []
    while True:
        try:
            req = pb.HostMessage.FromString(reader.read())
            reader.read()  # the prefetch table
        except protocol.ProtocolError:
            return
        if req.invoke.HasField("limits"):
            limits = req.invoke.limits
        res = _result(req.invoke.tx_id).SerializeToString()
        if mode == "serves-x-crashes" and req.invoke.contract == "x":
            os._exit(3)
        if mode in ("serves", "serves-x-crashes"):
            code = [req.invoke.contract, req.invoke.code_hash]
            if code not in served:
                served.append(code)
            m = _result(req.invoke.tx_id)
            m.result.result_json = json.dumps({"pid": os.getpid(), "served": served}).encode()
            protocol.write_frame(OUT_FD, m.SerializeToString())
        elif mode == "huge-header":
            os.write(OUT_FD, struct.pack(">I", 200 << 20) + b"\x32" * (64 << 10))
            time.sleep(3600)
        elif mode == "long-message":
            m = _result(req.invoke.tx_id)
            m.result.message = "m" * (1 << 20)
            protocol.write_frame(OUT_FD, m.SerializeToString())
        elif mode == "twice":
            protocol.write_frames(OUT_FD, res, res)
        elif mode == "stall":
            get = pb.WorkerMessage()
            get.get.namespace = req.invoke.contract
            get.get.key = "big"
            protocol.write_frame(OUT_FD, get.SerializeToString())
            time.sleep(3600)
        elif mode in ("many-keys", "many-bytes"):
            ops = protocol.OpsBuilder()
            if mode == "many-keys":
                for i in range(limits.max_write_keys + 1):
                    ops.put(f"k{i}", b"1")
            else:
                size = limits.max_value_bytes
                for i in range(limits.max_write_bytes // size + 1):
                    ops.put(f"k{i}", b"x" * size)
            protocol.write_frames(OUT_FD, ops.take(), res)
        elif mode in ("read-flood", "long-key", "long-ns"):
            if mode == "read-flood":
                gets = [("demo", f"k{i}") for i in range(1000)]
            elif mode == "long-key":
                gets = [("demo", "k" * (limits.max_key_len + 1))]
            else:
                gets = [("n" * 256, "k")]
            for ns, key in gets:
                protocol.write_frame(OUT_FD, protocol.encode_get(ns, key))
                reader.read()
            protocol.write_frame(OUT_FD, res)
        elif mode in ("history-flood", "history-refused"):
            # 200 history reads claiming unbounded gas; history-flood stops at the first answer
            # that is no history_reply, history-refused ignores every refusal and goes on
            for _ in range(200):
                m = pb.WorkerMessage()
                m.history.namespace, m.history.key, m.history.limit = req.invoke.contract, "k", 1000
                m.history.gas_left = 1 << 63
                protocol.write_frame(OUT_FD, m.SerializeToString())
                kind = pb.HostMessage.FromString(reader.read()).WhichOneof("kind")
                if mode == "history-flood" and kind != "history_reply":
                    break
            protocol.write_frame(OUT_FD, res)
        elif mode == "big-event":
            m = _result(req.invoke.tx_id)
            m.result.events.add(name="e", payload_json=b"x" * (limits.max_value_bytes + 1))
            protocol.write_frame(OUT_FD, m.SerializeToString())
        else:
            protocol.write_frame(OUT_FD, res)


if __name__ == "__main__":
    main()
