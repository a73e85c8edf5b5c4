"""Suspension bars under seeded random sequences (review17): registrations, practice sites,
revocations for every reason and reinstatements of a few registrations sharing two codes and
two licences, the registry's index checked after every transaction against its records:

* an active registration is not revoked, and the index entry of its code (licence) names it,
  as holder or as a site the holder authorised -- never a bar;
* a suspension bar lists only suspensions still standing on their records (a suspension, or
  the one kept by a registration ended while suspended), at most MAX_SUSPENSIONS entries with
  those waiting for it, none both holding and waiting;
* a standing suspension is held by the bar it set or joined (or a final bar took it over);
* a registration reinstated to wait for a bar (``pending``) and written by nobody since is
  listed by that bar while it is a suspension's, else the bar is final -- never gone;
* right after a revocation for the licence (LICENCE_REASONS), the revoked registration's code
  (licence) is barred or held in force -- by the registration its entry names, or a site of it
  -- never left to an entry naming a registration that moved away or lapsed (reg8: moves of
  active holders, then suspensions, are drawn on purpose: ``move``);
* after every transaction, each revocation for the licence still standing (a suspension not
  lifted, also one whose registration was ended since, or a final one) leaves the code
  (licence) it was made under barred or held in force -- never free while it stands (review22:
  a site's revocation beside its holder in force barred nothing, and the code came free, to
  anyone, once the holder lapsed, moved away or was revoked for another reason);
* under one code at most one active registration per organisation (one per licence number),
  an index entry authorises at most MAX_PRACTICE_SITES sites, a record keeps at most
  MAX_REINSTATEMENTS reinstatements;
* no site practises on the authorisation of a revoked registration: an index entry naming one
  (not a bar) has no site registration in force under it (review22: a holder that moved to
  another code before it was revoked left its sites practising under the old one);
* (review24) while a revocation for the licence stands, nobody takes its code over: an entry
  holding the code in force names the registration that held it in force at the revocation
  (none: nobody); every suspension holding a bar is one whose reinstatement lifts that bar
  (its mark's ``barred``, its record's current code or a code it had left) -- else the code
  stayed barred for good; a final bar names a registration revoked for good;
* (review25) a code's own holder (a pharmacy: its licence's) waiting for a bar is never evicted
  by a suspension finding the bar full (its reinstatement's ``pending_refused`` LIMIT_EXCEEDED):
  checked under every sequence, and under dense ones filling bars (the suite's seeds never fill
  one: ``test_a_holder_waiting_is_never_evicted_from_a_full_bar``).
"""

from __future__ import annotations

import json
import random
from typing import Any

from tests.contracts import sandbox_adapter
from tests.contracts.chain import Chain, Outcome, admin

REGULATOR = admin("reg01")
HOSPITALS = ("h04", "h05", "h06")
PHARMACIES = ("p01", "p02")
SUSPENDED = "LICENCE_SUSPENDED"
LICENCE_REASONS = (SUSPENDED, "LICENCE_REVOKED")
REASONS = (SUSPENDED, SUSPENDED, SUSPENDED, "LICENCE_REVOKED", "ORGANISATION_CLOSED", "OTHER")
MAX_SUSPENSIONS = 16
MAX_PRACTICE_SITES = 8
MAX_REINSTATEMENTS = 8
# 736: a suspension made final after its record moved to another code freed the old code
# under a registration waiting for it (fixed in review17; found by a sweep of 2,500 seeds)
# 3500 (and 5852 with moves): a registration waiting for a bar whose last suspension was lifted
# by reinstating the code's own holder, who took the code back, was refused CODE_IN_USE and
# still said it waited for the bar, gone (found by a sweep of 3,000 seeds x 200 steps each way)
SEEDS = (*range(40), 736, 3500)
# with moves of active registrations drawn on purpose (reg8). The check after each licence
# revocation found its code left free under an entry naming a registration no longer in force
# (moved away or lapsed) at seeds 14 and 32 with moves, 23 and 36 without; fixed in reg8, no
# sweep of 1,500 seeds either way finds more
MOVE_SEEDS = (*range(41), 140, 5852)
# review22: the check of every standing revocation for the licence (standing_problems) failed at
# 73 of the first 200 seeds x 200 steps with moves (seed 1 without moves is the first of the
# suite's): a revocation beside a registration holding the code in force left it free once that
# one stopped. Seeds 40 and 140 with moves: a holder moved to another code, then revoked there,
# left its site practising under the old code on its authorisation (bound_problems). No sweep of
# 3,000 seeds x 200 steps either way finds more


def _state(chain: Chain) -> dict[str, Any]:
    return {key: json.loads(raw) for (ns, key), raw in chain.state.values.items()
            if ns == "registry" and raw is not None}


def _standing(mark: dict[str, Any]) -> dict[str, Any] | None:
    if mark["reason"] == SUSPENDED:
        return mark
    if mark["reason"] != "LICENCE_REVOKED":
        kept: dict[str, Any] | None = mark.get("suspension")
        return kept
    return None


def _held(bar: dict[str, Any]) -> list[dict[str, Any]]:
    held: list[dict[str, Any]] = bar.get("suspensions", [{"org": bar["org"], "name": bar["name"],
                                                          "revoked": bar["revoked"]}])
    return held


def _rkey(entry: dict[str, Any]) -> str:
    org, name = str(entry["org"]), str(entry["name"])
    return "prac/" + org + "/" + name if name else "pharmacy/" + org


def _registration_problems(s: dict[str, Any], rkey: str, rec: dict[str, Any]) -> list[str]:
    out = []
    practitioner = rkey.startswith("prac/")
    name = rec["name"] if practitioner else ""
    active = rec["licence_active"] if practitioner else rec["active"]
    ikey = "praccode/" + rec["code"] if practitioner else "pharmlic/" + rec["licence_no"]
    entry = s.get(ikey)
    if active and "revoked" in rec:
        out.append(rkey + " is active and revoked")
    if active and (entry is None or "revoked" in entry or (
            (entry["org"], entry["name"]) != (rec["org"], name) and entry.get("sites", {}).get(rec["org"]) != name)):
        out.append(f"{rkey} is active, its index entry {ikey} is {entry}")
    mark = _standing(rec["revoked"]) if "revoked" in rec else None
    if mark is not None and "barred" in mark:
        bar = s.get(mark["barred"])
        if bar is None or "revoked" not in bar:
            out.append(f"{rkey}'s standing suspension: its bar {mark['barred']} is gone")
        elif bar["revoked"]["reason"] == SUSPENDED and all(
                h["revoked"]["tx_id"] != mark["tx_id"] for h in _held(bar)):
            out.append(f"{rkey}'s standing suspension is not in its bar {mark['barred']}")
    history = rec.get("reinstated", [])
    if "revoked" not in rec and history and history[-1].get("pending") \
            and "pending_refused" not in history[-1] and rec["updated"]["tx_id"] == history[-1]["tx_id"]:
        key = history[-1]["pending"]
        bar = s.get(key)
        if bar is None or "revoked" not in bar:
            out.append(f"{rkey} waits for {key}, which is gone")
        elif bar["revoked"]["reason"] == SUSPENDED and not any(
                (p["org"], p["name"]) == (rec["org"], name) for p in bar.get("pending", [])):
            out.append(f"{rkey} waits for {key}, which does not list it")
    return out


def _bar_problems(s: dict[str, Any], key: str, bar: dict[str, Any]) -> list[str]:
    out = []
    held, pending = _held(bar), bar.get("pending", [])
    if len(held) + len(pending) > MAX_SUSPENSIONS:
        out.append(key + " has more than MAX_SUSPENSIONS entries")
    for h in held:
        rec = s.get(_rkey(h))
        mark = _standing(rec["revoked"]) if rec is not None and "revoked" in rec else None
        if mark is None or mark["tx_id"] != h["revoked"]["tx_id"]:
            out.append(f"{key} is held by {_rkey(h)}, whose suspension does not stand")
    for p in pending:
        if any((h["org"], h["name"]) == (p["org"], p["name"]) for h in held):
            out.append(f"{key}: {_rkey(p)} both holds it and waits for it")
    return out


def problems(s: dict[str, Any]) -> list[str]:
    out = []
    for key, value in sorted(s.items()):
        if key.startswith(("prac/", "pharmacy/")):
            out += _registration_problems(s, key, value)
        elif key.startswith(("praccode/", "pharmlic/")) and "revoked" in value \
                and value["revoked"]["reason"] == SUSPENDED:
            out += _bar_problems(s, key, value)
    return out


def _in_force(s: dict[str, Any], ikey: str, entry: dict[str, Any]) -> bool:
    """The index entry ``entry`` of ``ikey`` (not a bar) names a registration in force under it."""
    def holds(org: str, name: str) -> bool:
        if ikey.startswith("praccode/"):
            rec = s.get("prac/" + org + "/" + name)
            return rec is not None and bool(rec["licence_active"]) and "praccode/" + rec["code"] == ikey
        ph = s.get("pharmacy/" + org)
        return ph is not None and bool(ph["active"]) and "pharmlic/" + ph["licence_no"] == ikey
    return holds(entry["org"], entry["name"]) or any(
        n != "" and holds(site, n) for site, n in entry.get("sites", {}).items())


def revocation_problems(s: dict[str, Any], org: str, name: str) -> list[str]:
    """After ``org``/``name`` was revoked for the licence: its code (licence) barred or in force."""
    rkey = "prac/" + org + "/" + name if name else "pharmacy/" + org
    rec = s[rkey]
    ikey = "praccode/" + rec["code"] if name else "pharmlic/" + rec["licence_no"]
    entry = s.get(ikey)
    if entry is not None and ("revoked" in entry or _in_force(s, ikey, entry)):
        return []
    return [f"{rkey} revoked for the licence left {ikey} free: {entry}"]


def standing_problems(s: dict[str, Any], made: dict[tuple[str, str], str]) -> list[str]:
    """Each revocation for the licence ``made`` ({(record key, tx_id): the code (licence) key it
    was made under}) still standing leaves that code barred or held in force."""
    out = []
    for (rkey, tx), ikey in sorted(made.items()):
        mark = s[rkey].get("revoked")
        if mark is None or (mark["tx_id"] != tx and mark.get("suspension", {}).get("tx_id") != tx):
            continue  # (lifted)
        entry = s.get(ikey)
        if entry is None or ("revoked" not in entry and not _in_force(s, ikey, entry)):
            out.append(f"{rkey}'s revocation {mark['reason']} stands, {ikey} is free: {entry}")
    return out


def bound_problems(s: dict[str, Any]) -> list[str]:
    """One active registration per organisation under a code (one per licence number); sites
    and reinstatement histories bounded."""
    out = []
    active: dict[str, list[str]] = {}
    for key, value in sorted(s.items()):
        if key.startswith("prac/") and value["licence_active"]:
            active.setdefault("praccode/" + value["code"], []).append(value["org"])
        elif key.startswith("pharmacy/") and value["active"]:
            active.setdefault("pharmlic/" + value["licence_no"], []).append(value["org"])
        if len(value.get("sites", {})) > MAX_PRACTICE_SITES or len(value.get("reinstated", [])) > MAX_REINSTATEMENTS:
            out.append(key + " is over its bound")
    for ikey, orgs in sorted(active.items()):
        if len(set(orgs)) != len(orgs) or (ikey.startswith("pharmlic/") and len(orgs) > 1):
            out.append(f"{ikey}: active registrations {orgs}")
        entry: dict[str, Any] = s.get(ikey) or {"revoked": None}
        if not ikey.startswith("praccode/") or "revoked" in entry:
            continue
        named = s.get(_rkey(entry))
        if named is not None and "revoked" in named and any(
                n != "" and s.get("prac/" + site + "/" + n, {}).get("licence_active")
                and "praccode/" + s["prac/" + site + "/" + n]["code"] == ikey
                for site, n in entry.get("sites", {}).items()):
            out.append(f"{ikey} names {_rkey(entry)}, revoked, and a site practises under it")
    return out


def takeover_problems(s: dict[str, Any], held: dict[tuple[str, str], tuple[str, Any]]) -> list[str]:
    """Each revocation for the licence ``held`` ({(record key, tx_id): (code key, (org, name) of
    the registration holding it in force at the revocation, or None)}) still standing: the code
    held in force by that registration only."""
    out = []
    for (rkey, tx), (ikey, named) in sorted(held.items()):
        mark = s[rkey].get("revoked")
        if mark is None or (mark["tx_id"] != tx and mark.get("suspension", {}).get("tx_id") != tx):
            continue  # (lifted)
        entry = s.get(ikey)
        if entry is not None and "revoked" not in entry and _in_force(s, ikey, entry) \
                and (named is None or (entry["org"], entry["name"]) != named):
            out.append(f"{rkey}'s revocation stands and {ikey} was taken over: {entry} (held by {named})")
    return out


def lift_problems(s: dict[str, Any]) -> list[str]:
    """Every suspension holding a bar is lifted there by reinstating it; a final bar names a
    registration revoked for good."""
    out = []
    for key, bar in sorted(s.items()):
        if not key.startswith(("praccode/", "pharmlic/")) or "revoked" not in bar:
            continue
        if bar["revoked"]["reason"] != SUSPENDED:
            rec = s.get(_rkey(bar))
            if rec is None or rec.get("revoked", {}).get("reason") != "LICENCE_REVOKED":
                out.append(f"{key} is barred for good by {_rkey(bar)}, not revoked for good")
            continue
        for h in _held(bar):
            rec = s.get(_rkey(h))
            mark = _standing(rec["revoked"]) if rec is not None and "revoked" in rec else None
            if rec is None or mark is None:
                continue  # (_bar_problems)
            keys = {"praccode/" + rec["code"] if h["name"] else "pharmlic/" + rec["licence_no"]}
            keys |= {mark["barred"]} if "barred" in mark else set()
            keys |= {"praccode/" + c for c in mark.get("left", {})}
            if key not in keys:
                out.append(f"{key} is held by {_rkey(h)}, whose reinstatement lifts {sorted(keys)} only")
    return out


def eviction_problems(s: dict[str, Any]) -> list[str]:
    """No registration that held its code (licence) when suspended -- a practitioner whose lifted
    suspension withdrew its sites (``sites``: the holder), any pharmacy (one active per licence)
    -- was evicted from the bar it waited for (review25)."""
    out = []
    for key, rec in sorted(s.items()):
        history = rec.get("reinstated", []) if key.startswith(("prac/", "pharmacy/")) else []
        if history and history[-1].get("pending_refused") == "LIMIT_EXCEEDED" \
                and (key.startswith("pharmacy/") or "sites" in history[-1]["revoked"]):
            out.append(f"{key} held its code and was evicted from the bar it waited for")
    return out


def _move(chain: Chain, rnd: random.Random) -> tuple[str, Outcome]:
    """An active registration (a holder, often with a site) moved to the other code."""
    org, name = rnd.choice(HOSPITALS), rnd.choice(("n1", "n2"))
    raw = chain.state.values.get(("registry", "prac/" + org + "/" + name))
    code = "C1" if raw is None or json.loads(raw)["code"] == "C2" else "C2"
    return (f"move {org}/{name} {code}",
            chain.submit("registry", "register_practitioner", admin(org), name=name, role="doctor", code=code,
                         licence_active=True, practice_years=5, internet_practice=True))


def _step(chain: Chain, rnd: random.Random, moves: bool) -> tuple[str, Outcome]:
    if moves:  # (reg8; the draws without moves are kept as they were: their seeds reproduce)
        op = rnd.choice(("register", "register", "pharmacy", "site", "site", "move", "revoke", "revoke",
                         "revoke", "reinstate", "reinstate", "reinstate"))
    else:
        op = rnd.choice(("register", "register", "pharmacy", "site", "revoke", "revoke", "revoke",
                         "reinstate", "reinstate", "reinstate"))
    if op == "move":
        return _move(chain, rnd)
    if op == "register":
        org, name, code, active = rnd.choice(HOSPITALS), rnd.choice(("n1", "n2")), rnd.choice(("C1", "C1", "C2")), \
            rnd.random() < 0.5
        return (f"register {org}/{name} {code} {active}",
                chain.submit("registry", "register_practitioner", admin(org), name=name, role="doctor", code=code,
                             licence_active=active, practice_years=5, internet_practice=True))
    if op == "pharmacy":
        org, licence, active = rnd.choice(PHARMACIES), rnd.choice(("L1", "L2")), rnd.random() < 0.7
        return (f"pharmacy {org} {licence} {active}",
                chain.submit("registry", "register_pharmacy", admin(org), licence_no=licence, active=active))
    if op == "site":
        org, code, site, allowed = rnd.choice(HOSPITALS), rnd.choice(("C1", "C2")), rnd.choice(HOSPITALS), \
            rnd.random() < 0.7
        return (f"site {org} {code} {site} {allowed}",
                chain.submit("registry", "authorize_practice_site", admin(org), code=code, site=site,
                             allowed=allowed))
    org, name = (rnd.choice(PHARMACIES), "") if rnd.random() < 0.25 else (rnd.choice(HOSPITALS),
                                                                          rnd.choice(("n1", "n2")))
    if op == "revoke":
        reason = rnd.choice(REASONS)
        return (f"revoke {org}/{name} {reason}",
                chain.submit("registry", "revoke_registration", REGULATOR, org=org, name=name, reason=reason))
    return f"reinstate {org}/{name}", chain.submit("registry", "reinstate_registration", REGULATOR, org=org, name=name)


def test_suspension_bars_stay_consistent_with_the_records_under_random_sequences() -> None:
    runner = sandbox_adapter.make_runner()
    written = 0
    for moves, seed in [(False, seed) for seed in SEEDS] + [(True, seed) for seed in MOVE_SEEDS]:
        rnd = random.Random(seed)
        chain = Chain(runner=runner)
        steps: list[str] = []
        made: dict[tuple[str, str], str] = {}  # the revocations for the licence: their code keys
        holding: dict[tuple[str, str], tuple[str, Any]] = {}  # ... and who held the code in force
        for _ in range(80):
            what, out = _step(chain, rnd, moves)
            steps.append(what + " -> " + ("OK" if out.ok else out.reason))
            written += out.ok
            state = _state(chain)
            found = problems(state) + bound_problems(state) + lift_problems(state) + eviction_problems(state)
            if out.ok and what.startswith("revoke ") and out.value["changed"] \
                    and out.value["revoked"]["reason"] in LICENCE_REASONS:
                found += revocation_problems(state, out.value["org"], out.value["name"])
                org, name = out.value["org"], out.value["name"]
                rec = state["prac/" + org + "/" + name if name else "pharmacy/" + org]
                ikey = "praccode/" + rec["code"] if name else "pharmlic/" + rec["licence_no"]
                made[(_rkey(out.value), out.value["revoked"]["tx_id"])] = ikey
                entry = state.get(ikey)
                holding[(_rkey(out.value), out.value["revoked"]["tx_id"])] = (ikey, None if (
                    entry is None or "revoked" in entry or not _in_force(state, ikey, entry)) else (
                    entry["org"], entry["name"]))
            found += standing_problems(state, made) + takeover_problems(state, holding)
            assert found == [], f"seed {seed} (moves {moves}): " + "\n".join(steps[-12:] + found)
    assert written > 2000  # (the sequences do write: not all refused)


def _dense_step(chain: Chain, rnd: random.Random, pharmacies: bool) -> tuple[str, Outcome]:
    """Records written inactive under C1 (L1) by others, suspended and lifted: bars fill."""
    if pharmacies:
        org, name = rnd.choice([f"p{n}" for n in range(10, 30)]), ""
    else:
        org, name = rnd.choice(("h05", "h06")), rnd.choice([f"d{n}" for n in range(12)])
    op = rnd.choice(("register", "revoke", "revoke", "reinstate"))
    if op == "register" and pharmacies:
        return (f"pharmacy {org} L1 False",
                chain.submit("registry", "register_pharmacy", admin(org), licence_no="L1", active=False))
    if op == "register":
        return (f"register {org}/{name} C1 False",
                chain.submit("registry", "register_practitioner", admin(org), name=name, role="doctor", code="C1",
                             licence_active=False, practice_years=5, internet_practice=True))
    if op == "revoke":
        return (f"revoke {org}/{name}",
                chain.submit("registry", "revoke_registration", REGULATOR, org=org, name=name, reason=SUSPENDED))
    return f"reinstate {org}/{name}", chain.submit("registry", "reinstate_registration", REGULATOR, org=org, name=name)


def test_a_holder_waiting_is_never_evicted_from_a_full_bar() -> None:
    """review25, dense: the holder of C1 (h04/n1, with a site) and of L1 (p01) suspended, then
    reinstated to wait for the bar while others' records under the code fill it (24 records, 20
    pharmacies, suspended and lifted at random): a suspension finding the bar full never evicts them,
    and every invariant above holds (bars fill: checked)."""
    runner = sandbox_adapter.make_runner()
    full = 0  # states of a full bar the holder waits for
    for pharmacies, seed in [(p, seed) for p in (False, True) for seed in range(6)]:
        rnd = random.Random(seed)
        chain = Chain(runner=runner)
        holder = ("p01", "") if pharmacies else ("h04", "n1")
        setup = [chain.submit("registry", "register_practitioner", admin("h04"), name="n1", role="doctor",
                              code="C1", licence_active=True, practice_years=5, internet_practice=True),
                 chain.submit("registry", "authorize_practice_site", admin("h04"), code="C1", site="h06",
                              allowed=True),
                 chain.submit("registry", "register_pharmacy", admin("p01"), licence_no="L1", active=True),
                 chain.submit("registry", "revoke_registration", REGULATOR, org=holder[0], name=holder[1],
                              reason=SUSPENDED)]
        assert all(out.ok for out in setup)
        steps: list[str] = []
        for i in range(240):
            if i == 25:  # (the bar filling meanwhile: the holder now waits for it)
                what, out = f"reinstate {holder}", chain.submit("registry", "reinstate_registration", REGULATOR,
                                                               org=holder[0], name=holder[1])
            else:
                what, out = _dense_step(chain, rnd, pharmacies)
            steps.append(what + " -> " + ("OK" if out.ok else out.reason))
            state = _state(chain)
            bar = state.get("pharmlic/L1" if pharmacies else "praccode/C1", {})
            full += len(bar.get("suspensions", [])) + len(bar.get("pending", [])) >= MAX_SUSPENSIONS \
                and any((p["org"], p["name"]) == holder for p in bar.get("pending", []))
            found = problems(state) + bound_problems(state) + lift_problems(state) + eviction_problems(state)
            assert found == [], f"seed {seed} (pharmacies {pharmacies}): " + "\n".join(steps[-12:] + found)
    assert full > 50  # (the bars do fill, the holder waiting)
