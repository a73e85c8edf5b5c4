"""Read prediction for the sandbox host: which state keys an invocation will ``get``.

The host learns, per (code hash, function), the keys recent invocations read, as templates
over the invocation's string arguments and the caller's org and name (``"rx/" + rx_id``,
``"grant/" + rx_id + "/" + caller.org``); keys that match no such value are kept
literally.  Before the next invocation the templates are rendered with its arguments,
the values are fetched with the backend's non-recording ``peek`` and sent with the request
(protocol.py, the 00 'P' frame), so reads the prediction got right cost no round trip.

A prediction is only ever an optimisation: the worker reports every prefetched read it
served and the host replays it on the backend in program order (the read set is exactly
the contract's reads); a wrong prediction costs one ``peek`` and a normal round trip.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from node.sandbox import types as t
from node.sandbox.api import MAX_NAMESPACE_LEN

MAX_KEYS = 24  # prefetched keys per invocation
MAX_LEARNED_READS = 4 * MAX_KEYS  # reads of one invocation the predictor looks at
MAX_BYTES = 256 << 10  # prefetched value bytes per invocation
MAX_IDLE = 4  # a template unused in this many invocations in a row is dropped
MAX_ARGS_BYTES = 64 << 10  # larger arguments are not parsed for prediction
MAX_PLANS = 256
MIN_VALUE_LEN = 2  # shorter argument values are not substituted into templates
MAX_KEY_LEN = 1024
MAX_NS_LEN = MAX_NAMESPACE_LEN  # longer ones never pass the API; refused here too (host side)
MAX_SOURCES = 16  # string arguments substituted into templates (first by name)

Part = str | tuple[str]  # a literal, or (source name,)
Template = tuple[str, tuple[Part, ...]]  # namespace, key parts


def sources(args_json: bytes, caller: t.CallerInfo) -> dict[str, str]:
    """Substitution values: top-level string arguments and the caller's org and name."""
    out: dict[str, str] = {}
    if caller.org:
        out["caller.org"] = caller.org
    if caller.name:
        out["caller.name"] = caller.name
    if len(args_json) <= MAX_ARGS_BYTES:
        try:
            args = json.loads(args_json)
        except (ValueError, RecursionError):
            args = None
        if type(args) is dict:
            taken = 0
            for k in sorted(args):
                v = args[k]
                if type(v) is str and MIN_VALUE_LEN <= len(v) <= MAX_KEY_LEN:
                    out["arg." + k] = v
                    taken += 1
                    if taken >= MAX_SOURCES:
                        break
    return out


def template(namespace: str, key: str, values: Mapping[str, str]) -> Template:
    """``key`` with every occurrence of a source value replaced by a reference to it
    (longer values first)."""
    parts: list[Part] = [key]
    for name, value in sorted(values.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        if len(value) < MIN_VALUE_LEN:
            continue
        new: list[Part] = []
        for p in parts:
            if type(p) is str and value in p:
                pieces = p.split(value)
                for i, piece in enumerate(pieces):
                    if i:
                        new.append((name,))
                    if piece:
                        new.append(piece)
            else:
                new.append(p)
        parts = new
    return namespace, tuple(parts)


def render(tpl: Template, values: Mapping[str, str]) -> tuple[str, str] | None:
    """The (namespace, key) of ``tpl`` for these values, or None if one is missing."""
    ns, parts = tpl
    out: list[str] = []
    for p in parts:
        if type(p) is str:
            out.append(p)
        else:
            v = values.get(p[0])
            if v is None:
                return None
            out.append(v)
    key = "".join(out)
    if not key or len(key) > MAX_KEY_LEN:
        return None
    return ns, key


@dataclass
class _Plan:
    idle: dict[Template, int]  # template -> invocations in a row it was not read


class Predictor:
    """Learned read templates per (code hash, function); thread-safe."""

    def __init__(self, max_plans: int = MAX_PLANS) -> None:
        self._plans: OrderedDict[tuple[str, str], _Plan] = OrderedDict()
        self._lock = threading.Lock()
        self._max = max_plans

    def predict(self, code_hash: str, function: str, values: Mapping[str, str]) -> dict[
        tuple[str, str], Template
    ]:
        """Keys to prefetch (at most MAX_KEYS, in learned order), each with its template."""
        with self._lock:
            plan = self._plans.get((code_hash, function))
            templates = list(plan.idle) if plan is not None else []
        out: dict[tuple[str, str], Template] = {}
        for tpl in templates:
            nk = render(tpl, values)
            if nk is not None and nk not in out:
                out[nk] = tpl
                if len(out) >= MAX_KEYS:
                    break
        return out

    def learn(self, code_hash: str, function: str, values: Mapping[str, str],
              reads: list[tuple[str, str]],
              predicted: Mapping[tuple[str, str], Template] | None = None) -> None:
        """Record the keys one invocation read (in order); ``predicted`` is what
        :meth:`predict` gave for the same values (saves re-deriving their templates)."""
        used: list[Template] = []
        seen: set[Template] = set()
        # each distinct key templated once (the predicted ones are known already)
        derived: dict[tuple[str, str], Template] = dict(predicted) if predicted else {}
        for nk in reads[:MAX_LEARNED_READS]:
            tpl = derived.get(nk)
            if tpl is None:
                if len(nk[1]) > MAX_KEY_LEN or len(nk[0]) > MAX_NS_LEN:
                    continue
                tpl = derived[nk] = template(nk[0], nk[1], values)
            if tpl not in seen:
                seen.add(tpl)
                used.append(tpl)
        with self._lock:
            plan = self._plans.get((code_hash, function))
            if plan is not None and len(used) == len(plan.idle) and all(
                    plan.idle.get(tpl) == 0 for tpl in used):
                return  # read exactly what was learned: nothing changes
            if plan is None:
                if not used:
                    return
                plan = self._plans[(code_hash, function)] = _Plan({})
                if len(self._plans) > self._max:
                    self._plans.popitem(last=False)
            else:
                self._plans.move_to_end((code_hash, function))
            idle: dict[Template, int] = dict.fromkeys(used, 0)
            for tpl, n in plan.idle.items():
                if tpl not in idle and n + 1 < MAX_IDLE:
                    idle[tpl] = n + 1
            plan.idle = dict(list(idle.items())[: 2 * MAX_KEYS])


class PeekingBackend:
    """A StateBackend plus a non-recording ``peek`` (enables prefetching).

    ``peek(namespace, key)`` must return what ``backend.get`` would return for a key this
    invocation has not written, from the same consistent snapshot, WITHOUT recording a read
    (e.g. the snapshot's committed value).  A peer wraps its simulator this way::

        sandbox.invoke(inv, PeekingBackend(sim, lambda ns, k: value_of(snapshot.get(ns, k))))
    """

    def __init__(self, backend: t.StateBackend, peek: t.PeekFn) -> None:
        self._b = backend
        self.peek = peek

    def get(self, namespace: str, key: str) -> bytes | None:
        return self._b.get(namespace, key)

    def range(self, namespace: str, start: str, end: str, limit: int) -> list[tuple[str, bytes]]:
        return self._b.range(namespace, start, end, limit)

    def history(self, namespace: str, key: str, limit: int, start: int | None = None,
                values: bool = True, gas_left: int | None = None) -> list[t.HistoryEntry]:
        return self._b.history(namespace, key, limit, start=start, values=values, gas_left=gas_left)

    def put(self, namespace: str, key: str, value: bytes) -> None:
        self._b.put(namespace, key, value)

    def delete(self, namespace: str, key: str) -> None:
        self._b.delete(namespace, key)
