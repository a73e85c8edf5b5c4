"""rxchain registry contract (namespace ``registry``).

Reference data the prescription and settlement contracts read:

* practitioners ``prac/{org}/{name}``: written by the admin of ``org`` only (its own people);
  a practitioner code is held by one active registration at a time (index ``praccode/{code}``;
  a registration written before the index is indexed by ``reindex``; a regulator admin revokes
  any registration for good, ``revoke_registration``, and lifts a suspension,
  ``reinstate_registration``);
* pharmacies ``pharmacy/{org}``: written by the pharmacy's own admin; a licence number is held
  by one active pharmacy at a time (index ``pharmlic/{licence_no}``);
* drug formulary ``drug/{medListCodg}`` (national code, class, prices, spec, controlled
  class; no drug names: clients map names to codes with their own catalogue): written by
  insurer admins, an entry only by the insurer that created it, its controlled class (what
  is never prescribed online) once created only by regulator admins; every write also keeps the
  version ``drugver/{medListCodg}/{inv13}`` (settlement prices a claim as of its dispense);
  another insurer's ``set_drug`` on an existing code writes its own class and prices
  ``price/{insurer}/{medListCodg}`` with versions ``pricever/{insurer}/{medListCodg}/{inv13}``
  (its claims are priced by them; without them, by the entry);
* insurance policy versions ``policy/{insurer}/{inv13}`` where ``inv13`` is
  ``9999999999999 - effective_ms`` zero-padded to 13 digits, so an ascending range starting
  at ``inv13(t)`` with limit 1 returns the version in force at time ``t``; written by the
  insurer's admin; a version never applies before its effective time;
* patient enrolment ``patient/{pseudonym}`` (hospital, certificate tag, diagnosis tags):
  written by the admin of the enrolling hospital; diagnoses also by any hospital, each in its
  own room (16 entries per hospital, 48 shared fairly by the hospitals other than the
  enrolling one: when they are full, the hospital holding the most gives up an entry);
  read by the insurer holding her account (or asked by her to take it over), not any insurer.
  Money (balance, deductible and cap seeds) and the patient's insurer are NOT here: the
  insurer opens the account with ``settlement.open_account``.

Privacy: a patient is known only by a 64-hex pseudonym (HMAC-SHA256 of the ID number under
the consortium secret, computed by the client). Diagnoses are never stored in plaintext:
each earlier diagnosis is stored as ``tag = HMAC-SHA256(dx_key, pseudonym + "|" + ICD-10)``,
where ``dx_key`` (hex) reaches the contract only as the transient input ``dx_key`` and the
ICD-10 codes only as the transient input ``diagnoses``. The patient's own certificate is
stored as ``user_tag = HMAC-SHA256(patient_binding, "patient-user|" + org + "|" + name)``
where ``patient_binding = HMAC-SHA256(consortium secret, "patient-cert|" + org + "|" +
name)`` (hex) reaches the contract only as a transient input: without the consortium
secret nobody can test a guessed certificate name against the tag.

Every refusal is ``ctx.fail(REASON, message)``; see contracts/README.md for the full table.
"""

from rxchain_contract import Context

HEX = "0123456789abcdef"
CODE_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
DIGITS = "0123456789"
ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_."
DRUG_CLASSES = ("A", "B", "OFF_LIST")
CONTROLLED_CLASSES = (
    "NONE",
    "NARCOTIC",
    "PSYCHOTROPIC_I",
    "PSYCHOTROPIC_II",
    "TOXIC",
    "RADIOACTIVE",
    "ANTIMICROBIAL",
    "SPECIAL_STORAGE",
)
PRACTITIONER_ROLES = ("doctor", "pharmacist", "nurse", "courier")
HOSPITAL_LEVELS = ("community", "secondary", "tertiary")
# why a regulator revoked a registration (revoke_registration): codes, never free text
REVOCATION_REASONS = ("LICENCE_REVOKED", "LICENCE_SUSPENDED", "ORGANISATION_CLOSED",
                      "DUPLICATE_REGISTRATION", "OTHER")
# reasons about the person's licence (the code itself; a pharmacy's licence number), not one
# registration of it: the code stays barred (its index entry kept, marked ``revoked``) -- freed, any organisation registered
# her again under it at once (another name, or the site whose registration was withdrawn)
LICENCE_REASONS = ("LICENCE_REVOKED", "LICENCE_SUSPENDED")
# the one revocation a regulator lifts (reinstate_registration); every other reason is final
SUSPENSION = "LICENCE_SUSPENDED"
MAX_REINSTATEMENTS = 8  # the ``reinstated`` history one registration keeps (the latest)
# the entries one suspension bar keeps: the suspensions holding it and the registrations waiting
# for it to go (``suspensions`` + ``pending``; a regulator's list, still bounded: LIMIT_EXCEEDED)
MAX_SUSPENSIONS = 16
MAX_FEN = 100000000000
MAX_INV = 9999999999999
MAX_DIAGNOSES = 16  # entries one hospital records for a patient (its import or its add_diagnosis)
MAX_DIAGNOSES_TOTAL = 64  # entries of one patient record (its size); the enrolling hospital's 16
# are kept free of the others: the other hospitals share MAX_DIAGNOSES_TOTAL - MAX_DIAGNOSES
# (full: the one holding the most gives way to one holding at least 2 fewer, add_diagnosis)
MAX_TEXT = 128
LIST_LIMIT = 200
TRANSFER_EXPIRY_MS = 30 * 24 * 3600 * 1000  # settlement's: a pending transfer request lasts 30 days


def _only(s: str, chars: str, lo: int, hi: int) -> bool:
    """``s`` is a string of ``lo``-``hi`` characters, each one of ``chars``."""
    if not isinstance(s, str) or len(s) < lo or len(s) > hi:
        return False
    for ch in s:
        if ch not in chars:
            return False
    return True


def _is_hex(s: str, n: int) -> bool:
    return _only(s, HEX, n, n)


def _is_id(s: str, max_len: int) -> bool:
    return _only(s, ID_CHARS, 1, max_len)


def _is_text(s: str) -> bool:
    if not isinstance(s, str) or len(s) > MAX_TEXT:
        return False
    if s.isprintable():
        return True
    for ch in s:
        if ch < " ":
            return False
    return True


def _is_int(v: int, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _days_in_month(y: int, m: int) -> int:
    """Days of month ``m`` (1-12) of Gregorian year ``y`` (leap: /4, not /100 unless /400).
    The prescription contract holds the same rule (contracts cannot import each other)."""
    if m == 2:
        if (y % 4 == 0 and y % 100 != 0) or y % 400 == 0:
            return 29
        return 28
    if m == 4 or m == 6 or m == 9 or m == 11:
        return 30
    return 31


def _is_date(s: str) -> bool:
    """A real calendar date "YYYY-MM-DD" (year 0001-9999)."""
    if not isinstance(s, str) or len(s) != 10 or s[4] != "-" or s[7] != "-":
        return False
    if not _only(s[0:4] + s[5:7] + s[8:10], DIGITS, 8, 8):
        return False
    y = int(s[0:4])
    m = int(s[5:7])
    d = int(s[8:10])
    return y >= 1 and 1 <= m <= 12 and 1 <= d <= _days_in_month(y, m)


def _require_admin(ctx: Context, kinds: tuple) -> None:
    c = ctx.caller
    if c.role != "admin":
        ctx.fail("WRONG_ROLE", "only an organisation admin may change the registry")
    if c.org_kind not in kinds:
        ctx.fail("ACCESS_DENIED", "an admin of a " + "/".join(kinds) + " may do this")


def _inv(ms: int) -> str:
    return str(MAX_INV - ms).zfill(13)


def _stamp(ctx: Context) -> dict:
    c = ctx.caller
    return {"by_org": c.org, "by": c.name, "ms": ctx.timestamp_ms, "tx_id": ctx.tx_id}


def _dx_tag(ctx: Context, dx_key: str, pseudonym: str, icd10: str) -> str:
    return ctx.hmac_sha256_hex(dx_key, pseudonym + "|" + icd10)


def _dx_key(ctx: Context) -> str:
    key = ctx.transient("dx_key")
    if not _is_hex(key, 64):
        ctx.fail("BAD_TRANSIENT", "transient dx_key (64 lower-case hex) is required")
    return key


# ---------------------------------------------------------------- practitioners, pharmacies


# The index ``praccode/{code}`` / ``pharmlic/{licence_no}`` = {org, name} ("" name for a
# pharmacy) names the last active registration of the code: it holds the code while that
# registration is active and still carries it; nobody else registers it active meanwhile.


# A practitioner index entry may also carry ``sites`` = {org: name ("" before it registers)}:
# organisations the holder authorised (authorize_practice_site) to register the same person
# under the same code (multi-site practice), each under one name.
MAX_PRACTICE_SITES = 8


def _release_code(ctx: Context, key: str, org: str, name: str) -> list:
    """A registration moved to another code: its old code is free (if it still held it); a
    site's registration leaves its site authorised, under no name. [the revocations the entry
    it deleted outlived (``outlived``, for _settle), whether it kept an entry naming it]."""
    holder = ctx.get(key)
    if holder is None or "revoked" in holder:  # (a barred code stays barred)
        return [[], False]
    if holder["org"] == org and holder["name"] == name:
        if not _site_holds(ctx, holder, key[len("praccode/"):]):
            ctx.delete(key)
            return [holder.get("outlived", []), False]
        # else kept while a site she authorised practises under it: a new holder taking the
        # code over would forget that site, still active beside it (two active registrations)
        return [[], True]
    sites = holder.get("sites", {})
    if sites.get(org, "") == name and name != "":
        sites[org] = ""
        holder["sites"] = sites
        ctx.put(key, holder)
    return [[], False]


def _left(ctx: Context, codes: list, org: str, name: str, code: str) -> list:
    """The codes of ``codes`` whose index entry still names practitioner ``org``/``name`` (not a
    bar), kept while a site practises under it, other than ``code`` (its current one): the
    entries its revocation withdraws the sites of, as its current code's (at most
    MAX_PRACTICE_SITES codes, each entry's sites read)."""
    kept = []
    for c in codes:
        entry = ctx.get("praccode/" + c)
        if c != code and entry is not None and "revoked" not in entry and entry["org"] == org \
                and entry["name"] == name and _site_holds(ctx, entry, c):
            kept.append(c)
    return kept


def _holds(ctx: Context, org: str, name: str, code: str) -> bool:
    """``org``/``name`` is registered under ``code`` with an active licence."""
    prac = ctx.get("prac/" + org + "/" + name)
    return prac is not None and prac["code"] == code and prac["licence_active"]


def _site_holds(ctx: Context, holder: dict, code: str) -> bool:
    """A site of the index entry ``holder`` is registered under ``code`` with an active
    licence (at most MAX_PRACTICE_SITES reads, every one in the read set)."""
    sites = holder.get("sites", {})
    for site in sorted(sites.keys()):
        if sites[site] != "" and _holds(ctx, site, sites[site], code):
            return True
    return False


def _claim_code(ctx: Context, holder: dict, org: str, name: str, code: str) -> bool:
    """Whether the active registration ``org``/``name`` may hold ``code`` (index entry
    ``holder``, or None): CODE_IN_USE when another registration holds it; True when it holds it
    as a site the holder authorised, False as its holder (already, or a new one);
    REGISTRATION_REVOKED when a regulator revoked the licence the code stands for."""
    if holder is not None and "revoked" in holder:
        ctx.fail("REGISTRATION_REVOKED", "practitioner code " + code + " was revoked by "
                 + holder["revoked"]["by_org"] + " (" + holder["revoked"]["reason"] + "): no "
                 "registration holds it again")
    if holder is None or (holder["org"] == org and holder["name"] == name):
        return False
    # a drCode names one person: another organisation (or another of this one's records)
    # registering it would let its certificate act under that person's licence -- unless
    # the holder authorised that organisation as a site of hers, once, under one name
    # (held while the holder or a site of hers practises under it: the code is taken
    # over only once none does -- a take-over keeps no sites)
    if not _holds(ctx, holder["org"], holder["name"], code) and not _site_holds(ctx, holder, code):
        return False
    sites = holder.get("sites", {})
    taken = sites.get(org, "")
    if holder["org"] == org or org not in sites or (
            taken != "" and taken != name and _holds(ctx, org, taken, code)):
        ctx.fail("CODE_IN_USE", "practitioner code " + code + " is registered to "
                 + holder["org"] + "/" + holder["name"] + " with an active licence"
                 + " (another organisation registers it only as a site the holder"
                 + " authorised: registry.authorize_practice_site)")
    return True


def _index_code(ctx: Context, holder: dict, org: str, name: str, code: str, site: bool) -> bool:
    """Index the active registration ``org``/``name`` under ``code`` as ``_claim_code`` decided
    (``site``); True when the index entry changed."""
    if site:
        sites = holder.get("sites", {})
        if sites.get(org, "") == name:
            return False
        sites[org] = name
        holder["sites"] = sites
        ctx.put("praccode/" + code, holder)
        return True
    if holder is None or holder["org"] != org or holder["name"] != name:
        # a new holder (or one taking over a retired code: its sites are not carried over)
        ctx.put("praccode/" + code, {"org": org, "name": name})
        return True
    return False


def register_practitioner(
    ctx: Context,
    name: str,
    role: str,
    code: str,
    licence_active: bool,
    practice_years: int,
    internet_practice: bool,
) -> dict:
    """Create or update one of the caller's organisation's own practitioners."""
    _require_admin(ctx, ("hospital", "pharmacy"))
    if not _is_id(name, 64):
        ctx.fail("BAD_ARGUMENTS", "name must be 1-64 chars of [A-Za-z0-9-_.]")
    if role not in PRACTITIONER_ROLES:
        ctx.fail("BAD_ARGUMENTS", "role must be one of " + ",".join(PRACTITIONER_ROLES))
    if not _is_id(code, 32):
        ctx.fail("BAD_ARGUMENTS", "practitioner code (drCode) must be 1-32 id chars")
    if not isinstance(licence_active, bool) or not isinstance(internet_practice, bool):
        ctx.fail("BAD_ARGUMENTS", "licence_active and internet_practice are booleans")
    if not _is_int(practice_years, 0, 80):
        ctx.fail("BAD_ARGUMENTS", "practice_years must be 0-80")
    org = ctx.caller.org
    key = "prac/" + org + "/" + name
    holder = ctx.get("praccode/" + code)
    old = ctx.get(key)
    if old is not None and "revoked" in old and licence_active:
        _refuse_revoked(ctx, key, old)
    site = False  # registering at a site the holder authorised (multi-site practice)
    if licence_active:
        site = _claim_code(ctx, holder, org, name, code)
    released = [[], False]  # [the revocations an entry of the old code deleted outlived, kept]
    left = []  # the codes it left whose entry still names it (a site practising: _left)
    if old is not None:
        left = _left(ctx, old.get("left", []), org, name, code)
    if old is not None and old["code"] != code:
        released = _release_code(ctx, "praccode/" + old["code"], org, name)
        if released[1]:
            left = left + [old["code"]]
            if len(left) > MAX_PRACTICE_SITES:
                ctx.fail("LIMIT_EXCEEDED", org + "/" + name + " left " + str(len(left) - 1)
                         + " codes whose sites still practise under them: at most "
                         + str(MAX_PRACTICE_SITES) + " (withdraw the sites of one first: "
                         "registry.authorize_practice_site)")
    if licence_active:
        _index_code(ctx, holder, org, name, code, site)
    rec = {
        "org": org,
        "name": name,
        "role": role,
        "code": code,
        "licence_active": licence_active,
        "practice_years": practice_years,
        "internet_practice": internet_practice,
        "updated": _stamp(ctx),
    }
    _keep_marks(old, rec)
    if len(left) > 0:
        rec["left"] = left
    ctx.put(key, rec)
    # the code it left, or lapsed under, may be held in force by nobody now
    if old is not None and old["code"] != code:
        _settle(ctx, "praccode/" + old["code"], released[0])
    _settle(ctx, "praccode/" + code, [])
    ctx.emit("registry.practitioner", {"org": org, "name": name, "role": role})
    return rec


def authorize_practice_site(ctx: Context, code: str, site: str, allowed: bool) -> dict:
    """The organisation holding practitioner code ``code`` with an active licence (its admin)
    authorises ``site`` -- another hospital or pharmacy where the same person also practises
    (multi-site practice) -- to register her under the code too, or withdraws that: the site's
    active registration under the code is then made inactive. At most MAX_PRACTICE_SITES.

    A withdrawal (``allowed`` false) is also made by the holder's organisation once its own
    registration is no longer in force (lapsed, or moved to another code: the entry naming it
    is kept while a site practises under the code), by the site itself (its admin, always) and
    by a regulator admin (the licensing authority): a lapsed or departed holder's sites used to
    keep the code in use, withdrawn by nobody but themselves."""
    _require_admin(ctx, ("hospital", "pharmacy", "regulator"))
    if not _is_id(code, 32) or not _is_id(site, 64) or not isinstance(allowed, bool):
        ctx.fail("BAD_ARGUMENTS", "code (drCode) and site (an organisation id) are ids; allowed a boolean")
    c = ctx.caller
    org = c.org
    regulator = c.org_kind == "regulator"
    holder = ctx.get("praccode/" + code)
    named = holder is not None and holder["org"] == org  # the organisation the entry names
    if allowed and regulator:
        ctx.fail("ACCESS_DENIED", "a regulator withdraws practice sites; only the holder of "
                 "practitioner code " + code + " authorises them")
    if site == org and (allowed or named):
        ctx.fail("BAD_ARGUMENTS", "the holder's own organisation is no site of its own")
    if allowed and (not named or not _holds(ctx, org, holder["name"], code)):
        ctx.fail("ACCESS_DENIED", "only the organisation holding practitioner code " + code
                 + " with an active licence authorises its sites")
    if not allowed and not named and not regulator:
        if holder is None or site != org or site not in holder.get("sites", {}):
            ctx.fail("ACCESS_DENIED", "a practice site of code " + code + " is withdrawn by the"
                     " organisation holding the code, by the site itself or by a regulator admin")
    if holder is None:  # (a regulator's withdrawal)
        ctx.fail("NOT_FOUND", "no organisation holds practitioner code " + code)
    sites = holder.get("sites", {})
    if not allowed and site not in sites:
        # nothing to withdraw (never authorised, or withdrawn already): the entry as it is,
        # no write and no event saying a site was withdrawn
        return holder
    kept = {}
    for k in sorted(sites.keys()):
        if k != site:
            kept[k] = sites[k]
    if allowed:
        if site not in sites and len(kept) >= MAX_PRACTICE_SITES:
            ctx.fail("LIMIT_EXCEEDED", "practitioner code " + code + " has "
                     + str(MAX_PRACTICE_SITES) + " sites already")
        kept[site] = sites.get(site, "")
    else:
        name = sites.get(site, "")
        if name != "" and _holds(ctx, site, name, code):
            prac = ctx.get("prac/" + site + "/" + name)
            prac["licence_active"] = False
            prac["updated"] = _stamp(ctx)
            ctx.put("prac/" + site + "/" + name, prac)
            ctx.emit("registry.practitioner", {"org": site, "name": name, "role": prac["role"]})
    holder["sites"] = kept
    ctx.put("praccode/" + code, holder)
    if not allowed:
        _settle(ctx, "praccode/" + code, [])  # (the withdrawn site may have practised last)
        holder = ctx.get("praccode/" + code)
    ctx.emit("registry.practice_site", {"code": code, "site": site, "allowed": allowed})
    return holder


def _claim_licence(ctx: Context, holder: dict, org: str, licence_no: str) -> None:
    """LICENCE_IN_USE when another organisation's active registration holds ``licence_no``
    (index entry ``holder``, or None); REGISTRATION_REVOKED when a regulator revoked it
    (LICENCE_REASONS: the licence itself)."""
    if holder is not None and "revoked" in holder:
        ctx.fail("REGISTRATION_REVOKED", "pharmacy licence " + licence_no + " was revoked by "
                 + holder["revoked"]["by_org"] + " (" + holder["revoked"]["reason"] + "): no "
                 "registration holds it again")
    if holder is not None and holder["org"] != org:
        ph = ctx.get("pharmacy/" + holder["org"])
        if ph is not None and ph["licence_no"] == licence_no and ph["active"]:
            ctx.fail("LICENCE_IN_USE", "pharmacy licence " + licence_no + " is registered to "
                     + holder["org"] + " (active)")


def register_pharmacy(ctx: Context, licence_no: str, active: bool) -> dict:
    """Register (or update) the caller's own pharmacy as a dispensing pharmacy."""
    _require_admin(ctx, ("pharmacy",))
    if not _is_id(licence_no, 64):
        ctx.fail("BAD_ARGUMENTS", "licence_no must be 1-64 id chars")
    if not isinstance(active, bool):
        ctx.fail("BAD_ARGUMENTS", "active is a boolean")
    org = ctx.caller.org
    holder = ctx.get("pharmlic/" + licence_no)
    old = ctx.get("pharmacy/" + org)
    if old is not None and "revoked" in old and active:
        _refuse_revoked(ctx, "pharmacy/" + org, old)
    if active:
        _claim_licence(ctx, holder, org, licence_no)
    released = [[], False]
    if old is not None and old["licence_no"] != licence_no:
        released = _release_code(ctx, "pharmlic/" + old["licence_no"], org, "")
    if active:
        entry = {"org": org, "name": ""}
        if holder is not None and "revoked" not in holder and holder["org"] == org \
                and "outlived" in holder:
            entry["outlived"] = holder["outlived"]  # (its own entry: what it outlives stays)
        ctx.put("pharmlic/" + licence_no, entry)
    rec = {"org": org, "licence_no": licence_no, "active": active, "updated": _stamp(ctx)}
    _keep_marks(old, rec)
    ctx.put("pharmacy/" + org, rec)
    if old is not None and old["licence_no"] != licence_no:
        _settle(ctx, "pharmlic/" + old["licence_no"], released[0])
    _settle(ctx, "pharmlic/" + licence_no, [])
    ctx.emit("registry.pharmacy", {"org": org, "active": active})
    return rec


def _no_take_over(ctx: Context, key: str, holder: dict) -> None:
    """A regulator's ``reindex`` indexes a registration under a code (licence) nobody holds, or
    at a site the holder authorised: taking it over from the registration the index entry
    ``holder`` names (no longer in force) is the organisation's own call, its admin's."""
    ctx.fail("ACCESS_DENIED", key + " names " + holder["org"] + "/" + holder["name"] + ": a "
             "regulator indexes only a code or licence nobody holds (or a site the holder "
             "authorised); taking it over is for the organisation's own admin (or revoke that "
             "registration first: registry.revoke_registration)")


def reindex(ctx: Context, org: str, name: str) -> dict:
    """Index one registration written before codes and licences were indexed: the practitioner
    ``prac/{org}/{name}``, or with ``name`` "" the pharmacy ``pharmacy/{org}`` (the admin of
    ``org``, or a regulator admin for any organisation). The record is not changed: an active
    one takes the index entry exactly as registering it again unchanged would (its holder, a
    site the holder authorised, or taking over a code no registration in force holds -- the
    last never by a regulator: ACCESS_DENIED, the organisation's admin decides), an
    inactive one holds nothing; CODE_IN_USE / LICENCE_IN_USE when another active registration
    holds it, nothing written. Idempotent: a registration already indexed writes nothing."""
    _require_admin(ctx, ("hospital", "pharmacy", "regulator"))
    if not _is_id(org, 64) or not isinstance(name, str) or (name != "" and not _is_id(name, 64)):
        ctx.fail("BAD_ARGUMENTS", "org is an organisation id; name a practitioner's (1-64 chars of"
                 " [A-Za-z0-9-_.]) or \"\" for the organisation's pharmacy registration")
    c = ctx.caller
    if c.org_kind != "regulator" and c.org != org:
        ctx.fail("ACCESS_DENIED", "an organisation's admin indexes its own registrations (a "
                 "regulator admin any)")
    if name == "":
        rec = ctx.get("pharmacy/" + org)
        if rec is None:
            ctx.fail("NOT_FOUND", "no pharmacy " + org)
        key = "pharmlic/" + rec["licence_no"]
        holder = ctx.get(key)
        changed = False
        if rec["active"]:
            _claim_licence(ctx, holder, org, rec["licence_no"])
            if holder is not None and holder["org"] != org and c.org_kind == "regulator":
                _no_take_over(ctx, key, holder)
            if holder is None or holder["org"] != org:
                holder = {"org": org, "name": ""}
                ctx.put(key, holder)
                changed = True
        out = {"org": org, "name": "", "licence_no": rec["licence_no"], "active": rec["active"]}
    else:
        rec = ctx.get("prac/" + org + "/" + name)
        if rec is None:
            ctx.fail("NOT_FOUND", "no practitioner " + org + "/" + name)
        key = "praccode/" + rec["code"]
        holder = ctx.get(key)
        changed = False
        if rec["licence_active"]:
            site = _claim_code(ctx, holder, org, name, rec["code"])
            if not site and holder is not None and c.org_kind == "regulator" and (
                    holder["org"] != org or holder["name"] != name):
                _no_take_over(ctx, key, holder)
            changed = _index_code(ctx, holder, org, name, rec["code"], site)
            if changed and not site:
                holder = {"org": org, "name": name}  # (a site's entry is updated in place)
        out = {"org": org, "name": name, "code": rec["code"], "active": rec["licence_active"]}
    if changed:
        ctx.emit("registry.index", {"key": key, "org": org, "name": name})
    out["changed"] = changed
    out["index"] = holder if holder is not None else {}
    return out


def _keep_marks(old: dict, rec: dict) -> None:
    """Carry a regulator's marks (``revoked``, the ``reinstated`` history) of the record ``old``
    (or None) over to its update ``rec``: an organisation never clears them."""
    if old is not None:
        for mark in ("revoked", "reinstated"):
            if mark in old:
                rec[mark] = old[mark]


def _refuse_revoked(ctx: Context, key: str, rec: dict) -> None:
    ctx.fail("REGISTRATION_REVOKED", key + " was revoked by " + rec["revoked"]["by_org"] + " ("
             + rec["revoked"]["reason"] + "): it stays inactive")


def _withdraw_site(ctx: Context, holder: dict, code: str, site: str, deactivate: bool,
                   emit: bool = True) -> None:
    """Drop ``site`` from the index entry ``holder`` of ``code`` (not written here) and, with
    ``deactivate``, make its active registration under the code inactive, as a withdrawal
    (authorize_practice_site); its events (``registry.practitioner``,
    ``registry.practice_site``) only with ``emit``."""
    sites = holder.get("sites", {})
    name = sites.get(site, "")
    if deactivate and name != "" and _holds(ctx, site, name, code):
        prac = ctx.get("prac/" + site + "/" + name)
        prac["licence_active"] = False
        prac["updated"] = _stamp(ctx)
        ctx.put("prac/" + site + "/" + name, prac)
        if emit:
            ctx.emit("registry.practitioner", {"org": site, "name": name, "role": prac["role"]})
    kept = {}
    for k in sorted(sites.keys()):
        if k != site:
            kept[k] = sites[k]
    holder["sites"] = kept
    if emit:
        ctx.emit("registry.practice_site", {"code": code, "site": site, "allowed": False})


def _withdraw_sites(ctx: Context, holder: dict, code: str, emit: bool = True) -> list:
    """Withdraw every site of the index entry ``holder`` of ``code`` (not written here), each
    active registration under the code made inactive (_withdraw_site, its events only with
    ``emit``): [{site: name, "" unregistered} withdrawn, [sites whose registration it made
    inactive]]."""
    withdrawn = {}
    active = []
    for site in sorted(holder.get("sites", {}).keys()):
        sname = holder["sites"][site]
        withdrawn[site] = sname
        if sname != "" and _holds(ctx, site, sname, code):
            active.append(site)
        _withdraw_site(ctx, holder, code, site, True, emit)
    return [withdrawn, active]


def _in_force(ctx: Context, key: str, holder: dict) -> bool:
    """The index entry ``holder`` of ``key`` (not a bar) holds its code (licence) in force: the
    registration it names still carries it with an active licence, or a site of it does."""
    if key[0:len("pharmlic/")] == "pharmlic/":
        ph = ctx.get("pharmacy/" + holder["org"])
        return ph is not None and ph["licence_no"] == key[len("pharmlic/"):] and ph["active"]
    code = key[len("praccode/"):]
    return _holds(ctx, holder["org"], holder["name"], code) or _site_holds(ctx, holder, code)


def _bars(ctx: Context, key: str, holder: dict, reason: str) -> bool:
    """A revocation for the licence (LICENCE_REASONS) bars its code (licence) ``key`` when no
    index entry holds it in force (``holder`` None, or an entry naming a registration that moved
    away or lapsed, none of its sites practising under it: anyone took such a code over at
    once), or, a final one, over a suspension's bar: reinstating the suspended registration
    then lifts nothing."""
    if holder is None:
        return True
    if "revoked" not in holder:
        return not _in_force(ctx, key, holder)
    return holder["revoked"]["reason"] == SUSPENSION and reason != SUSPENSION


def _outliving(ctx: Context, o: dict) -> list:
    """The revocation for the licence ``o`` ({org, name, tx_id}: a registration and the tx
    revoking it) while it stands: [record key, record, mark] -- its suspension still standing
    (``_standing``: also when its registration was ended since), or its final revocation for the
    licence (LICENCE_REVOKED: that tx's, or the one making that suspension final); [] once
    lifted."""
    rkey = "pharmacy/" + o["org"] if o["name"] == "" else "prac/" + o["org"] + "/" + o["name"]
    rec = ctx.get(rkey)
    if rec is None or "revoked" not in rec:
        return []
    mark = rec["revoked"]
    if mark["reason"] == "LICENCE_REVOKED":
        if mark["tx_id"] == o["tx_id"] or mark.get("suspension", {}).get("tx_id", "") == o["tx_id"]:
            return [rkey, rec, mark]
        return []
    held = _standing(mark)
    if held is not None and held["tx_id"] == o["tx_id"]:
        return [rkey, rec, held]
    return []


def _outlive(ctx: Context, key: str, holder: dict, org: str, name: str, mark: dict) -> None:
    """A revocation for the licence (``mark``) of ``org``/``name`` under ``key``, whose entry
    ``holder`` another registration holds in force (it bars nothing while that one practises:
    _bars), is kept in the entry's ``outlived`` ([{org, name, tx_id}]: those still standing,
    one per registration) to bar the code once nobody holds it in force (_settle). Never
    refused (review24: a regulator's revocation always goes through): a final one (standing for
    good) is kept alone -- it bars the code for good, the suspensions beside it moot; the first
    standing is the one kept --; a suspension beyond MAX_SUSPENSIONS - 1 standing (the bar
    they make, with the revocation making it, keeps at most MAX_SUSPENSIONS) is kept in none:
    the code is barred by those kept."""
    kept = []
    final = None  # a final one standing (LICENCE_REVOKED: never lifted)
    for o in holder.get("outlived", []):
        if o["org"] != org or o["name"] != name:
            found = _outliving(ctx, o)
            if len(found) > 0:
                kept.append(o)
                if final is None and found[2]["reason"] == "LICENCE_REVOKED":
                    final = o
    new = {"org": org, "name": name, "tx_id": mark["tx_id"]}
    if final is None and mark["reason"] == "LICENCE_REVOKED":
        final = new
    if final is not None:
        kept = [final]
    elif len(kept) < MAX_SUSPENSIONS - 1:
        kept = kept + [new]
    holder["outlived"] = kept
    ctx.put(key, holder)


def _settle(ctx: Context, key: str, carried: list) -> None:
    """After a write that may leave the code (licence) ``key`` held in force by nobody (a holder
    or site lapsed, moved away, withdrawn or revoked): the revocations for the licence its entry
    outlived (``outlived``, with ``carried``: those of an entry this tx deleted or replaced by a
    bar) that still stand bar it, as a revocation finding the code free does (_bars) -- a final
    one for good, else the suspensions hold the bar (each mark's ``barred``) -- so nobody takes
    the code over while they stand; an entry still in force keeps those standing (bounded as
    _outlive keeps them). At most 2 x MAX_SUSPENSIONS records read."""
    entry = ctx.get(key)
    bar = entry is not None and "revoked" in entry
    if bar and entry["revoked"]["reason"] != SUSPENSION:
        return  # (barred for good already)
    outlived = carried
    if entry is not None and not bar:
        outlived = carried + entry.get("outlived", [])
    if len(outlived) == 0:
        return
    standing = []  # [[{org, name, tx_id}, record key, record, mark]]
    for o in outlived:
        seen = False
        for s in standing:
            if s[0]["org"] == o["org"] and s[0]["name"] == o["name"]:
                seen = True
        found = [] if seen else _outliving(ctx, o)
        if len(found) > 0:
            standing.append([o] + found)
    if entry is not None and not bar and _in_force(ctx, key, entry):
        kept = [s[0] for s in standing][0:MAX_SUSPENSIONS - 1]
        for s in standing:  # (a final one is kept alone: _outlive)
            if s[3]["reason"] == "LICENCE_REVOKED":
                kept = [s[0]]
                break
        if kept != entry.get("outlived", []):
            entry["outlived"] = kept
            if len(kept) == 0:
                del entry["outlived"]
            ctx.put(key, entry)
        return
    if len(standing) == 0:
        if entry is not None and not bar and "outlived" in entry:
            del entry["outlived"]
            ctx.put(key, entry)
        return
    for s in standing:
        if s[3]["reason"] == "LICENCE_REVOKED":
            ctx.put(key, {"org": s[0]["org"], "name": s[0]["name"], "revoked": s[3]})
            return
    held = _suspensions(entry) if bar else []
    pending = _pending(entry) if bar else []
    counted = _unlisted(entry) if bar else 0
    for s in standing:
        org = s[0]["org"]
        name = s[0]["name"]
        if len(_others(held, org, name)) != len(held) or s[3].get("counted", "") == key:
            continue  # (holding it already)
        if len(held) + len(_others(pending, org, name)) < MAX_SUSPENSIONS:
            s[3]["barred"] = key  # (the mark in the record: reinstating it lifts this bar)
            held.append({"org": org, "name": name, "revoked": s[3]})
            pending = _others(pending, org, name)
        else:  # (full: it holds the bar unlisted, counted -- reg9)
            s[3]["counted"] = key
            counted = counted + 1
        ctx.put(s[1], s[2])
    # (no bar yet: the first standing is listed, ``held`` not empty)
    ctx.put(key, _bar_entry(held, pending, dict(entry, unlisted=counted) if bar else {"unlisted": counted}))


def _suspensions(bar: dict) -> list:
    """The suspensions holding the bar ``bar`` ([{org, name, revoked}], the first the one the
    entry names); a bar written before the list was kept holds its own only."""
    if "suspensions" in bar:
        return bar["suspensions"]
    return [{"org": bar["org"], "name": bar["name"], "revoked": bar["revoked"]}]


def _pending(bar: dict) -> list:
    """The registrations waiting for the suspension bar ``bar`` to go ([{org, name, tx_id}]:
    reinstated while it stood, tx_id their reinstatement's)."""
    return bar.get("pending", [])


def _unlisted(bar: dict) -> int:
    """How many standing suspensions hold the suspension bar ``bar`` unlisted (reg9: each found
    it full, its mark's ``counted`` naming it); 0 for a bar written before they were counted."""
    return bar.get("unlisted", 0)


def _bar_entry(held: list, pending: list, old: dict | None = None) -> dict:
    """The bar entry held by the suspensions ``held``: it names the first; with the
    registrations ``pending`` its going reactivates (kept only when there are some) and the
    count of suspensions holding it unlisted of ``old`` (the entry it replaces; kept only when
    non-zero). With ``held`` empty (only unlisted ones hold it) it names what ``old`` named."""
    first = held[0] if len(held) > 0 else old
    entry = {"org": first["org"], "name": first["name"], "revoked": first["revoked"],
             "suspensions": held}
    if len(pending) > 0:
        entry["pending"] = pending
    if old is not None and _unlisted(old) > 0:
        entry["unlisted"] = _unlisted(old)
    return entry


def _others(entries: list, org: str, name: str) -> list:
    """``entries`` ([{org, name, ...}]) but registration ``org``/``name``'s."""
    return [e for e in entries if e["org"] != org or e["name"] != name]


def _join_bar(ctx: Context, key: str, bar: dict, org: str, name: str, mark: dict) -> None:
    """A suspension of ``org``/``name`` (its ``mark``) meets the suspension bar ``bar`` of
    ``key`` (another registration's): it holds the bar too (the mark's ``barred``), so
    reinstating the first no longer lifts it while this one stands. Only a suspension joins a
    suspension's bar (a final revocation takes it over: _bars). A registration suspended again
    while waiting for the bar (``pending``) waits no more: it holds it. Never refused (review24:
    LIMIT_EXCEEDED shielded the registration from the regulator): the bar keeps at most
    MAX_SUSPENSIONS entries -- full, the registration waiting longest gives way (_drop_pending)
    but the code's own holder (_held_code) or a pharmacy (it held its licence: review25), and
    with no other waiting the new suspension is kept in none (no ``barred``) but counted (the
    bar's ``unlisted``, the mark's ``counted``: reg9): the bar stays until it is lifted too."""
    if "revoked" not in bar or bar["revoked"]["reason"] != SUSPENSION \
            or mark["reason"] != SUSPENSION:
        return
    held = _suspensions(bar)
    pending = _others(_pending(bar), org, name)
    if len(held) + len(pending) >= MAX_SUSPENSIONS:
        # never the code's own holder (review25: evicted, it was not reactivated when the bar
        # went -- the organisation whose records filled the bar took the code over at once);
        # a pharmacy waiting held its licence (active when suspended: one active per licence)
        for i in range(len(pending)):
            if pending[i]["name"] != "" and not _held_code(ctx, pending[i]):
                _drop_pending(ctx, key, pending[i])
                pending = pending[0:i] + pending[i + 1:]
                break
    if len(held) + len(pending) >= MAX_SUSPENSIONS:
        # kept in no list, it holds the bar counted (reg9: the bar went once those listed were
        # lifted, and its code was anyone's while it stood): the bar goes only once the count
        # is back to 0 (_lift_bar), its mark's ``counted`` naming the bar
        mark["counted"] = key
        ctx.put(key, _bar_entry(held, pending, {"unlisted": _unlisted(bar) + 1}
                                if len(held) > 0 else dict(bar, unlisted=_unlisted(bar) + 1)))
        return
    mark["barred"] = key
    ctx.put(key, _bar_entry(held + [{"org": org, "name": name, "revoked": mark}], pending, bar))


def _drop_pending(ctx: Context, key: str, waiting: dict) -> None:
    """The registration ``waiting`` ({org, name, tx_id}) waits for the bar ``key`` no more (a
    suspension took its place, _join_bar): its reinstatement, when its latest, keeps
    ``pending_refused`` LIMIT_EXCEEDED -- its organisation registers it again once the bar
    goes, as before reg7."""
    rkey = "pharmacy/" + waiting["org"] if waiting["name"] == "" else \
        "prac/" + waiting["org"] + "/" + waiting["name"]
    rec = ctx.get(rkey)
    history = [] if rec is None else rec.get("reinstated", [])
    if len(history) > 0 and history[-1]["tx_id"] == waiting["tx_id"] \
            and history[-1].get("pending", "") == key:
        history[-1]["pending_refused"] = "LIMIT_EXCEEDED"
        ctx.put(rkey, rec)


def _registration_key(ctx: Context, org: str, name: str) -> str:
    """The key of practitioner ``org``/``name``'s registration (with ``name`` "" the pharmacy
    ``org``'s), for a regulator admin only, the ids checked (BAD_ARGUMENTS): revoke_registration
    and reinstate_registration."""
    _require_admin(ctx, ("regulator",))
    if not _is_id(org, 64) or not isinstance(name, str) or (name != "" and not _is_id(name, 64)):
        ctx.fail("BAD_ARGUMENTS", "org is an organisation id; name a practitioner's (1-64 chars of"
                 " [A-Za-z0-9-_.]) or \"\" for the organisation's pharmacy registration")
    if name == "":
        return "pharmacy/" + org
    return "prac/" + org + "/" + name


def _registration(ctx: Context, rkey: str) -> dict:
    """The registration at ``rkey`` (NOT_FOUND when there is none)."""
    rec = ctx.get(rkey)
    if rec is None:
        ctx.fail("NOT_FOUND", "no registration " + rkey)
    return rec


def revoke_registration(ctx: Context, org: str, name: str, reason: str) -> dict:
    """Revoke the registration of practitioner ``org``/``name`` (or with ``name`` "" the pharmacy
    ``org``): regulator admins only (the licensing authority), with a reason code from
    REVOCATION_REASONS. The record is made inactive and marked ``revoked`` {reason, by_org, by,
    ms, tx_id}: its organisation cannot make it active again (REGISTRATION_REVOKED). Its index
    entries go: the code's (licence's) entry when it names this registration -- a holder's
    authorised sites are withdrawn with it (each site's active registration under the code made
    inactive, as a withdrawal does: they practised on the holder's authorisation), so the code
    is free --, or its site slot in the holder's entry (as a withdrawal). With a reason of
    LICENCE_REASONS (her licence, not this registration) a code left free (no entry, or one
    naming a registration no longer in force under it, none of its sites practising: _bars)
    stays barred instead:
    its entry names this registration, marked ``revoked``, and no registration holds it again
    (REGISTRATION_REVOKED; else her organisation, or her withdrawn site, registered her again
    under it at once, under another name); a code another registration holds in force keeps
    such a revocation in its entry (``outlived``) and is barred by it once nobody holds the code
    in force while it stands (_outlive, _settle: review22). Idempotent: a revoked
    registration writes nothing (``changed`` false) -- but a suspended one revoked for
    LICENCE_REVOKED: the suspension is made final (the new mark keeps it as ``suspension``; its
    bars lifted, the code barred for good), since reinstating it to revoke it afterwards made it
    active again meanwhile; and a suspended one revoked for another reason (not her licence) is
    ended (_end_suspended): the suspension stands in the new mark until lifted or made final.
    Event ``registry.revoked``."""
    rkey = _registration_key(ctx, org, name)
    if reason not in REVOCATION_REASONS:
        ctx.fail("BAD_ARGUMENTS", "reason must be one of " + ",".join(REVOCATION_REASONS))
    rec = _registration(ctx, rkey)
    prior = None  # a suspension this revocation makes final
    held_bars = []  # the keys of the bars it held (made final below)
    ended = None  # the mark of the registration ended while suspended, made final here
    if "revoked" in rec:
        current = rec["revoked"]
        if current["reason"] == SUSPENSION and reason not in LICENCE_REASONS:
            return _end_suspended(ctx, rkey, rec, org, name, reason)
        if reason != "LICENCE_REVOKED" or _standing(current) is None:
            return {"org": org, "name": name, "revoked": current, "changed": False}
        # her licence revoked while suspended: the suspension is made final here, never by
        # reinstating it first (which makes the record active again, its sites too) and
        # revoking it after. Its bars are lifted as a reinstatement would, the code (licence)
        # then barred for good below (a final bar takes a suspension's over: _bars); the
        # registrations waiting for a bar lifted here wait no more; a bar it held on a code
        # the record moved away from since stays too, final (her licence: below)
        prior = _standing(current)
        if current["reason"] != SUSPENSION:
            ended = dict(current)
            del ended["suspension"]
        held_bars = _suspension_bars(rec, name, prior)
        for key in held_bars:
            _lift_bar(ctx, key, org, name, prior)
    stamp = _stamp(ctx)
    mark = {"reason": reason, "by_org": stamp["by_org"], "by": stamp["by"], "ms": stamp["ms"],
            "tx_id": stamp["tx_id"]}
    if prior is not None:
        mark["suspension"] = prior  # (the suspension it made final)
    if ended is not None:
        mark["ended"] = ended  # (the registration's own end, before)
    carried = []  # the revocations its code's entry outlived, for _settle below
    left_carried = []  # [[key, outlived]] of the entries of codes it left, deleted (_left)
    left_marks = {}  # {code left: {sites, site_active}} for a suspension (restored when lifted)
    if name == "":
        key = "pharmlic/" + rec["licence_no"]
        holder = ctx.get(key)
        if holder is not None and "revoked" not in holder:
            carried = holder.get("outlived", [])
        if holder is not None and "revoked" not in holder and holder["org"] == org:
            ctx.delete(key)
            holder = None
        if reason == SUSPENSION:
            mark["was_active"] = rec["active"]  # (what reinstating it restores)
        if reason in LICENCE_REASONS and _bars(ctx, key, holder, reason):
            mark["barred"] = key
            ctx.put(key, {"org": org, "name": "", "revoked": mark})  # (as a practitioner's code)
        elif holder is not None and "revoked" in holder:
            _join_bar(ctx, key, holder, org, "", mark)  # (a second suspension holds it too)
        elif holder is not None and reason in LICENCE_REASONS:
            _outlive(ctx, key, holder, org, "", mark)  # (held in force by another: reg8)
        rec["active"] = False
        ctx.emit("registry.pharmacy", {"org": org, "active": False})
    else:
        code = rec["code"]
        key = "praccode/" + code
        holder = ctx.get(key)
        if holder is not None and "revoked" not in holder:
            carried = holder.get("outlived", [])
        if reason == SUSPENSION:
            mark["was_active"] = rec["licence_active"]  # (what reinstating it restores)
            # the tx that wrote it last: a site registration another suspension made inactive
            # there, written since by this suspension and its lifting only, is restored too
            mark["written"] = rec["updated"]["tx_id"]
        if holder is not None and "revoked" not in holder and holder["org"] == org \
                and holder["name"] == name:
            gone = _withdraw_sites(ctx, holder, code)
            if reason == SUSPENSION:
                # (reinstating her restores those still in force: _restore_sites)
                mark["sites"] = gone[0]
                mark["site_active"] = gone[1]
            ctx.delete(key)
            holder = None
        elif holder is not None and holder.get("sites", {}).get(org, "") == name:
            _withdraw_site(ctx, holder, code, org, False)
            ctx.put(key, holder)
        if reason in LICENCE_REASONS and _bars(ctx, key, holder, reason):
            # her licence, not this registration: the code stays barred (LICENCE_REASONS)
            mark["barred"] = key
            ctx.put(key, {"org": org, "name": name, "revoked": mark})
        elif holder is not None and "revoked" in holder:
            _join_bar(ctx, key, holder, org, name, mark)  # (a second suspension holds it too)
        elif holder is not None and reason in LICENCE_REASONS:
            _outlive(ctx, key, holder, org, name, mark)  # (held in force by another: reg8)
        # the codes it left whose entry still names it, a site practising there on its
        # authorisation: their sites withdrawn as its current code's (review22)
        for c in _left(ctx, rec.get("left", []), org, name, code):
            entry = ctx.get("praccode/" + c)
            left_carried.append(["praccode/" + c, entry.get("outlived", [])])
            # one event per code (review24: two per site, up to 8 codes of 8 sites, went past
            # the 64 events an invocation emits: the regulator's revocation refused SIZE_LIMIT)
            gone = _withdraw_sites(ctx, entry, c, False)
            ctx.emit("registry.left_sites", {"code": c, "allowed": False,
                                             "sites": sorted(gone[0].keys()), "active": gone[1]})
            ctx.delete("praccode/" + c)
            if reason == SUSPENSION:
                left_marks[c] = {"sites": gone[0], "site_active": gone[1]}
        if len(left_marks) > 0:
            mark["left"] = left_marks
        if "left" in rec:
            del rec["left"]
        rec["licence_active"] = False
        ctx.emit("registry.practitioner", {"org": org, "name": name, "role": rec["role"]})
    for lc in left_carried:
        if reason in LICENCE_REASONS:  # (her licence: each code left free is barred, as above)
            ctx.put(lc[0], {"org": org, "name": name, "revoked": mark})
    for other in held_bars:
        # a suspension made final: the bar it held on a code (licence) the record moved away
        # from since is her licence too -- barred for good, never freed (nobody registered
        # under it again, those waiting for it reactivated by nothing: a final bar)
        if other != key and _bars(ctx, other, ctx.get(other), reason):
            ctx.put(other, {"org": org, "name": name, "revoked": mark})
    rec["revoked"] = mark
    rec["updated"] = stamp
    ctx.put(rkey, rec)
    # the code may be held in force by nobody now (the holder, or its last site, revoked)
    _settle(ctx, key, carried)
    for lc in left_carried:
        _settle(ctx, lc[0], lc[1])
    rec = ctx.get(rkey)  # (its mark's ``barred`` when a bar it outlived held it)
    ctx.emit("registry.revoked", {"org": org, "name": name, "reason": reason})
    return {"org": org, "name": name, "revoked": rec["revoked"], "changed": True}


def _standing(mark: dict) -> dict | None:
    """The suspension the revocation ``mark`` stands for, still to be lifted or made final: the
    mark itself (LICENCE_SUSPENDED), or the ``suspension`` of a registration ended while
    suspended (another reason than LICENCE_REASONS: _end_suspended); None for a final one (a
    LICENCE_REVOKED mark's ``suspension`` is the one it made final)."""
    if mark["reason"] == SUSPENSION:
        return mark
    if mark["reason"] not in LICENCE_REASONS and "suspension" in mark:
        return mark["suspension"]
    return None


def _end_suspended(ctx: Context, rkey: str, rec: dict, org: str, name: str, reason: str) -> dict:
    """End the suspended registration ``rec`` for ``reason`` (not LICENCE_REASONS: the
    organisation closed, a duplicate...): its mark replaced by the final one, keeping the
    suspension as ``suspension``. The registration is inactive and holds nothing already (the
    suspension took its index entries); the suspension's bar stays -- it is about her licence,
    not this registration -- until a regulator lifts it (reinstate_registration: the bar goes,
    the registration stays ended) or makes it final (LICENCE_REVOKED)."""
    stamp = _stamp(ctx)
    mark = {"reason": reason, "by_org": stamp["by_org"], "by": stamp["by"], "ms": stamp["ms"],
            "tx_id": stamp["tx_id"], "suspension": rec["revoked"]}
    rec["revoked"] = mark
    rec["updated"] = stamp
    ctx.put(rkey, rec)
    ctx.emit("registry.revoked", {"org": org, "name": name, "reason": reason})
    return {"org": org, "name": name, "revoked": mark, "changed": True}


def _suspension_bars(rec: dict, name: str, mark: dict) -> list:
    """The keys of the bars the suspension ``mark`` of ``rec`` may hold: the one it set or
    joined (``barred``: a record written inactive under another code since moved away), the
    record's current code (licence) and the codes it had left whose sites it withdrew
    (``left``)."""
    keys = []
    if "barred" in mark:
        keys.append(mark["barred"])
    if "counted" in mark and mark["counted"] not in keys:  # (a bar it holds unlisted: reg9)
        keys.append(mark["counted"])
    current = "pharmlic/" + rec["licence_no"] if name == "" else "praccode/" + rec["code"]
    if current not in keys:
        keys.append(current)
    for c in sorted(mark.get("left", {}).keys()):  # (the codes it had left: review22)
        if "praccode/" + c not in keys:
            keys.append("praccode/" + c)
    return keys


def _lift_bar(ctx: Context, key: str, org: str, name: str, mark: dict) -> list:
    """The suspension ``mark`` of ``org``/``name`` no longer holds the bar ``key``: the bar goes
    when it was the last suspension holding it -- none listed, none counted (``unlisted``: a
    suspension kept in none, its mark's ``counted`` naming the bar, takes one off: reg9) --,
    else it names the next one listed (the last one listed when only counted ones hold it); a bar this
    suspension does not hold (a final revocation took it over, or none) is left as it is. The
    registrations waiting for the bar (``pending``) when it went (else [])."""
    bar = ctx.get(key)
    if bar is None or "revoked" not in bar or bar["revoked"]["reason"] != SUSPENSION:
        return []
    held = _suspensions(bar)
    kept = []
    for h in held:
        if h["org"] != org or h["name"] != name or h["revoked"]["tx_id"] != mark["tx_id"]:
            kept.append(h)
    unlisted = _unlisted(bar)
    if len(kept) == len(held):
        if mark.get("counted", "") != key or unlisted == 0:
            return []
        unlisted = unlisted - 1  # (it held the bar unlisted, counted: reg9)
    if len(kept) == 0 and unlisted == 0:
        ctx.delete(key)
        return _pending(bar)
    ctx.put(key, _bar_entry(kept, _pending(bar), dict(bar, unlisted=unlisted)))
    return []


def _untouched_since(prac: dict, tx_id: str) -> bool:
    """Nobody but the regulator wrote the registration ``prac`` since the tx ``tx_id`` (which
    wrote it): that tx wrote it last, or a reinstatement did, lifting a suspension of it that
    wrote it right after that tx and right before the reinstatement (``written`` in the mark and
    in the reinstatement: the person's licence suspended at both her registrations, then lifted
    at both -- the regulator's own writes are no decision of her organisation)."""
    if prac["updated"]["tx_id"] == tx_id:
        return True
    history = prac.get("reinstated", [])
    if len(history) == 0 or history[-1]["tx_id"] != prac["updated"]["tx_id"]:
        return False
    last = history[-1]  # written by that suspension last when reinstated, by that tx before it
    return last.get("written", "") == last["revoked"]["tx_id"] and last["revoked"].get("written", "") == tx_id


def _restore_sites(ctx: Context, holder: dict, code: str, mark: dict, emit: bool = True) -> list:
    """Authorise again, in the index entry ``holder`` of ``code`` (written by the caller), the
    sites the suspension ``mark`` withdrew from the holder, each only while its own registration
    under the code is in force -- not revoked, still under ``code`` -- (a site not yet registered
    comes back authorised); a registration the suspension made inactive is made active again
    when nobody wrote it since. [restored, {site: reason} not restored: the holder authorises
    them anew (authorize_practice_site), [sites whose registration it made active]]; its
    events (``registry.practitioner``, ``registry.practice_site``) only with ``emit``."""
    withdrawn = mark.get("sites", {})
    active = mark.get("site_active", [])
    sites = {}
    restored = []
    missed = {}
    activated = []
    for site in sorted(withdrawn.keys()):
        sname = withdrawn[site]
        if sname != "":
            prac = ctx.get("prac/" + site + "/" + sname)
            if prac is None or prac["code"] != code:
                missed[site] = "RECORD_CHANGED"
                continue
            if "revoked" in prac:
                missed[site] = "REGISTRATION_REVOKED"
                continue
            if site in active and _untouched_since(prac, mark["tx_id"]):
                prac["licence_active"] = True
                prac["updated"] = _stamp(ctx)
                ctx.put("prac/" + site + "/" + sname, prac)
                activated.append(site)
                if emit:
                    ctx.emit("registry.practitioner", {"org": site, "name": sname, "role": prac["role"]})
        sites[site] = sname
        restored.append(site)
        if emit:
            ctx.emit("registry.practice_site", {"code": code, "site": site, "allowed": True})
    if len(sites) > 0:
        holder["sites"] = sites
    return [restored, missed, activated]


def _reactivate(ctx: Context, rec: dict, org: str, name: str, mark: dict, written: str) -> list:
    """Make the registration ``rec`` (``org``/``name``, its suspension ``mark`` lifted) active
    again as it was before the suspension, when nothing else stops it: [reason, restored sites,
    {site: reason} sites not restored]; reason "" when reactivated, else why not (nothing
    written): WAS_INACTIVE (inactive when suspended), NOT_RECORDED (a suspension from before
    reinstating reactivated), RECORD_CHANGED (its organisation wrote it since ``written``, the
    tx that last wrote it for the regulator: its decision stands), REGISTRATION_REVOKED
    (another revocation still bars its code or licence),
    CODE_IN_USE / LICENCE_IN_USE (another registration holds it: that organisation's call, as
    reindex). The record itself is written by the caller."""
    if "was_active" not in mark:
        return ["NOT_RECORDED", [], {}]
    if not mark["was_active"]:
        return ["WAS_INACTIVE", [], {}]
    if rec["updated"]["tx_id"] != written:
        return ["RECORD_CHANGED", [], {}]
    if name == "":
        key = "pharmlic/" + rec["licence_no"]
        holder = ctx.get(key)
        if holder is not None and "revoked" in holder:
            return ["REGISTRATION_REVOKED", [], {}]
        if holder is not None and holder["org"] != org:
            return ["LICENCE_IN_USE", [], {}]
        if holder is None:
            ctx.put(key, {"org": org, "name": ""})
        rec["active"] = True
        ctx.emit("registry.pharmacy", {"org": org, "active": True})
        return ["", [], {}]
    key = "praccode/" + rec["code"]
    holder = ctx.get(key)
    if holder is not None and "revoked" in holder:
        return ["REGISTRATION_REVOKED", [], {}]
    if holder is not None and (holder["org"] != org or holder["name"] != name):
        return ["CODE_IN_USE", [], {}]
    if holder is None:
        holder = {"org": org, "name": name}
    sites = _restore_sites(ctx, holder, rec["code"], mark)
    ctx.put(key, holder)
    rec["licence_active"] = True
    ctx.emit("registry.practitioner", {"org": org, "name": name, "role": rec["role"]})
    return ["", sites[0], sites[1]]


def _restore_left(ctx: Context, rec: dict, org: str, name: str, mark: dict) -> dict:
    """The codes the practitioner ``rec`` (``org``/``name``) had left whose sites its suspension
    ``mark`` withdrew (``left``): each code nobody holds now gets its entry back, naming the
    record, with those sites still in force (_restore_sites: registrations made inactive and
    written by nobody since active again; sites not in force come back authorised, as the
    current code's); a code one of them practises under is in the record's ``left`` again.
    {code: [sites restored]}."""
    out = {}
    for c in sorted(mark.get("left", {}).keys()):
        if ctx.get("praccode/" + c) is not None:
            continue  # (another suspension's bar, or taken over: the holder authorises anew)
        entry = {"org": org, "name": name}
        per = mark["left"][c]
        got = _restore_sites(ctx, entry, c, {"sites": per["sites"], "site_active": per["site_active"],
                                              "tx_id": mark["tx_id"]}, False)
        if len(got[0]) > 0:  # (one event per code, as its withdrawal)
            ctx.emit("registry.left_sites", {"code": c, "allowed": True, "sites": got[0],
                                             "active": got[2]})
        if "sites" in entry:
            ctx.put("praccode/" + c, entry)
            out[c] = got[0]
            if _site_holds(ctx, entry, c):
                rec["left"] = rec.get("left", []) + [c]
    return out


def _code_key(rec: dict, name: str) -> str:
    """The index key of the registration ``rec``'s code (with ``name`` "" its licence)."""
    return "pharmlic/" + rec["licence_no"] if name == "" else "praccode/" + rec["code"]


def _wait_for_bar(ctx: Context, rec: dict, org: str, name: str, tx_id: str) -> str:
    """The registration ``rec`` (``org``/``name``), reinstated in ``tx_id`` but held back only by
    the suspension bar on its code (licence), waits for that bar to go: it joins the bar's
    ``pending`` (replacing an earlier entry of its own). The bar's key, or "" when it waits for
    nothing: a final bar (nothing lifts it), or one with MAX_SUSPENSIONS entries already (its
    organisation then registers it again itself, as before)."""
    key = _code_key(rec, name)
    bar = ctx.get(key)
    if bar is None or "revoked" not in bar or bar["revoked"]["reason"] != SUSPENSION:
        return ""
    held = _suspensions(bar)
    pending = _others(_pending(bar), org, name)
    if len(held) + len(pending) >= MAX_SUSPENSIONS:
        return ""
    ctx.put(key, _bar_entry(held, pending + [{"org": org, "name": name, "tx_id": tx_id}], bar))
    return key


def _reactivate_pending(ctx: Context, key: str, waiting: dict) -> dict:
    """Reactivate the registration ``waiting`` ({org, name, tx_id}) now that the bar ``key`` it
    waited for went, checked again as at its reinstatement (_reactivate, with the suspension its
    reinstatement lifted): RECORD_CHANGED when it was written since its reinstatement (its
    organisation's decision stands) or no longer is under ``key``, REGISTRATION_REVOKED when
    revoked since, CODE_IN_USE / LICENCE_IN_USE when another registration holds the code now --
    a reason its reinstatement's history entry then keeps (``pending_refused``), unless written
    since. {org, name, reactivated, reason, sites_restored, sites_not_restored}."""
    org = waiting["org"]
    name = waiting["name"]
    rkey = "pharmacy/" + org if name == "" else "prac/" + org + "/" + name
    rec = ctx.get(rkey)
    back = ["RECORD_CHANGED", [], {}]
    if rec is not None and "revoked" in rec:
        back = ["REGISTRATION_REVOKED", [], {}]
    elif rec is not None and _code_key(rec, name) == key:
        history = rec.get("reinstated", [])
        if len(history) > 0 and history[-1]["tx_id"] == waiting["tx_id"]:
            back = _reactivate(ctx, rec, org, name, history[-1]["revoked"], waiting["tx_id"])
            if back[0] == "":
                rec["updated"] = _stamp(ctx)
                ctx.put(rkey, rec)
            elif back[0] != "RECORD_CHANGED":  # (its organisation's write stands, untouched)
                # it waits no more: its reinstatement says why it was not reactivated (it said
                # "pending" for good, naming a bar that is gone; ``updated`` unchanged)
                history[-1]["pending_refused"] = back[0]
                ctx.put(rkey, rec)
    return {"org": org, "name": name, "reactivated": back[0] == "", "reason": back[0],
            "sites_restored": back[1], "sites_not_restored": back[2]}


def _held_code(ctx: Context, waiting: dict) -> bool:
    """The practitioner ``waiting`` ({org, name, tx_id}: waiting for a bar since that
    reinstatement) held its code when suspended (the suspension lifted there kept ``sites``,
    those it withdrew from the holder)."""
    if waiting["name"] == "":
        return False
    rec = ctx.get("prac/" + waiting["org"] + "/" + waiting["name"])
    history = [] if rec is None else rec.get("reinstated", [])
    return len(history) > 0 and history[-1]["tx_id"] == waiting["tx_id"] \
        and "sites" in history[-1]["revoked"]


def reinstate_registration(ctx: Context, org: str, name: str) -> dict:
    """Lift a suspension (a revocation for LICENCE_SUSPENDED) of practitioner ``org``/``name``'s
    registration (or with ``name`` "" the pharmacy ``org``'s): regulator admins only. Its
    ``revoked`` mark moves to the ``reinstated`` history ({revoked, by_org, by, ms, tx_id}, the
    latest MAX_REINSTATEMENTS); the code's (licence's) bar goes when this was the last
    suspension holding it (another suspension still holding it keeps it). The registration is
    made active again when it was active when suspended and nothing else stops it (_reactivate:
    ``reason`` says what did -- its organisation then registers it again itself), with the
    sites the suspension withdrew from a holder whose own registrations are still in force
    (``sites_restored``; ``sites_not_restored`` = {site: reason}, authorised anew by the
    holder). Held back only by another suspension's bar (REGISTRATION_REVOKED), it waits for
    that bar (``pending``, its key: _wait_for_bar); the bar going here reactivates those waiting
    for it, checked again (``pending_reactivated``: _reactivate_pending). A registration ended
    while suspended (_end_suspended) has its suspension lifted -- the bar goes as above -- and
    stays ended (``reason`` REVOCATION_FINAL). Any other reason is final: REVOCATION_FINAL,
    nothing written. Idempotent: a registration not revoked writes nothing (``changed`` false).
    Event ``registry.reinstated`` {org, name, reactivated, reason, sites_restored,
    sites_not_restored, pending, pending_reactivated}."""
    rkey = _registration_key(ctx, org, name)
    rec = _registration(ctx, rkey)
    history = rec.get("reinstated", [])
    if "revoked" not in rec:
        last = history[-1] if history else None
        return {"org": org, "name": name, "reinstated": last, "changed": False}
    mark = _standing(rec["revoked"])
    if mark is None:
        final = rec["revoked"]
        ctx.fail("REVOCATION_FINAL", rkey + " was revoked by " + final["by_org"] + " ("
                 + final["reason"] + "): only a suspension (" + SUSPENSION + ") is lifted")
    waiting = []  # [[bar key, {org, name, tx_id}]]: those waiting for a bar that goes here
    for key in _suspension_bars(rec, name, mark):
        for w in _lift_bar(ctx, key, org, name, mark):
            waiting.append([key, w])
    done = []
    if rec["revoked"]["reason"] == SUSPENSION and "sites" not in mark and mark.get("was_active", False):
        # a registration that did not hold its code when suspended (a site's, beside its holder)
        # lifting the bar its code's holder waits for: the holder takes its code back first
        # (review24: reactivated first, the site took the code over and the holder, waiting
        # longer, was refused CODE_IN_USE -- the other order gave it back to the holder)
        rest = []
        for kw in waiting:
            if kw[0] == _code_key(rec, name) and _held_code(ctx, kw[1]):
                done.append(_reactivate_pending(ctx, kw[0], kw[1]))
            else:
                rest.append(kw)
        waiting = rest
    stamp = _stamp(ctx)
    pending = ""
    left = {}  # {code it had left: [sites restored under it]}
    if rec["revoked"]["reason"] != SUSPENSION:
        # ended while suspended: the suspension lifted, the registration stays ended
        back = ["REVOCATION_FINAL", [], {}]
        ended = dict(rec["revoked"])
        del ended["suspension"]
        rec["revoked"] = ended
    else:
        back = _reactivate(ctx, rec, org, name, mark, mark["tx_id"])
        if back[0] == "REGISTRATION_REVOKED":
            pending = _wait_for_bar(ctx, rec, org, name, stamp["tx_id"])
        del rec["revoked"]
        left = _restore_left(ctx, rec, org, name, mark)
    entry = {"revoked": mark, "by_org": stamp["by_org"], "by": stamp["by"], "ms": stamp["ms"],
             "tx_id": stamp["tx_id"]}
    if pending != "":
        entry["pending"] = pending
    if name != "":
        entry["written"] = rec["updated"]["tx_id"]  # (the tx that wrote it last: _untouched_since)
    rec["reinstated"] = (history + [entry])[-MAX_REINSTATEMENTS:]
    rec["updated"] = stamp
    ctx.put(rkey, rec)
    _settle(ctx, _code_key(rec, name), [])  # (an entry in force outlives this one no more)
    for kw in waiting:
        done.append(_reactivate_pending(ctx, kw[0], kw[1]))
    out = {"org": org, "name": name, "reactivated": back[0] == "", "reason": back[0],
           "sites_restored": back[1], "sites_not_restored": back[2], "pending": pending,
           "pending_reactivated": done}
    if len(left) > 0:
        out["left_sites_restored"] = left
    ctx.emit("registry.reinstated", out)
    out["reinstated"] = entry
    out["changed"] = True
    return out


def get_practitioner(ctx: Context, org: str, name: str) -> dict:
    if not _is_id(org, 64) or not _is_id(name, 64):
        ctx.fail("BAD_ARGUMENTS", "org and name are 1-64 chars of [A-Za-z0-9-_.]")
    rec = ctx.get("prac/" + org + "/" + name)
    if rec is None:
        ctx.fail("NOT_FOUND", "no practitioner " + org + "/" + name)
    return rec


def get_pharmacy(ctx: Context, org: str) -> dict:
    if not _is_id(org, 64):
        ctx.fail("BAD_ARGUMENTS", "org is 1-64 chars of [A-Za-z0-9-_.]")
    rec = ctx.get("pharmacy/" + org)
    if rec is None:
        ctx.fail("NOT_FOUND", "no pharmacy " + org)
    return rec


# ---------------------------------------------------------------- formulary


def _put_drug(ctx: Context, old: dict, rec: dict) -> dict:
    """Write ``rec`` as formulary entry ``drug/{code}`` and as its version from this tx on."""
    code = rec["code"]
    prefix = "drugver/" + code + "/"
    if old is not None and ctx.timestamp_ms < old["updated"]["ms"]:
        # versions are keyed by time: one timestamped before the entry's latest version (a
        # skewed client clock) would sort below it, and settlement would price dispenses after
        # this update by the older version
        ctx.fail("POLICY_RETROACTIVE", "formulary entry " + code + " has a version from after this "
                 "transaction's time; retry with the current time")
    if old is not None and len(ctx.range(prefix, prefix + "~", 1)) == 0:
        # an entry from before versions were kept: it stands for every dispense before this
        # update (ms 0), so a claim for one is never priced by this update
        ctx.put(prefix + _inv(0), old)
    ctx.put("drug/" + code, rec)
    # the version in force from now on: a claim is priced as of its dispense
    ctx.put(prefix + _inv(ctx.timestamp_ms), rec)
    ctx.emit("registry.drug", {"code": code})
    return rec


def set_drug(
    ctx: Context,
    code: str,
    spec: str,
    cls: str,
    standard_fen: int,
    price_fen: int,
    controlled: str,
) -> dict:
    """Add or update a formulary entry (insurer admins; an existing entry only by the
    insurer that created it, its controlled class only by the regulator: set_controlled).
    No drug names are stored on the ledger."""
    _require_admin(ctx, ("insurer",))
    if not isinstance(code, str) or len(code) != 23:
        ctx.fail("BAD_ARGUMENTS", "medListCodg must be 23 characters")
    if not _only(code, CODE_CHARS, 23, 23):
        ctx.fail("BAD_ARGUMENTS", "medListCodg must be upper-case letters and digits")
    if not _is_text(spec):
        ctx.fail("BAD_ARGUMENTS", "spec must be printable text of <= 128 chars")
    if cls not in DRUG_CLASSES:
        ctx.fail("BAD_ARGUMENTS", "class must be A, B or OFF_LIST")
    if controlled not in CONTROLLED_CLASSES:
        ctx.fail("BAD_ARGUMENTS", "controlled class must be one of " + ",".join(CONTROLLED_CLASSES))
    if not _is_int(standard_fen, 0, MAX_FEN) or not _is_int(price_fen, 1, MAX_FEN):
        ctx.fail("BAD_ARGUMENTS", "standard_fen >= 0 and price_fen >= 1 (integer fen)")
    org = ctx.caller.org
    old = ctx.get("drug/" + code)
    if old is not None and controlled != old["controlled"]:
        # what is never prescribed online (DOMAIN.md 1.3, 1.5) is the regulator's to decide: an
        # insurer declassified a narcotic, or blocked a common drug everywhere as one
        ctx.fail("ACCESS_DENIED", "the controlled class of " + code + " (" + old["controlled"]
                 + ") is set by the regulator (registry.set_controlled)")
    rec = {
        "code": code,
        "insurer": org,
        "spec": spec,
        "cls": cls,
        "standard_fen": standard_fen,
        "price_fen": price_fen,
        "controlled": controlled,
        "updated": _stamp(ctx),
    }
    if old is not None and old["insurer"] != org:
        # another insurer's entry: this insurer's own class and prices for its own claims (the
        # first insurer to create a code used to set them for every insurer); the entry itself
        # -- the code's existence, spec and controlled class, what issue and dispense read --
        # stays its creator's
        return _put_price(ctx, rec)
    return _put_drug(ctx, old, rec)


def _put_price(ctx: Context, rec: dict) -> dict:
    """Write ``rec`` as the caller's own price list entry ``price/{insurer}/{code}`` and as its
    version ``pricever/{insurer}/{code}/{inv13}`` from this tx on (settlement prices the
    insurer's claims by it, as of the dispense)."""
    key = rec["insurer"] + "/" + rec["code"]
    old = ctx.get("price/" + key)
    if old is not None and ctx.timestamp_ms < old["updated"]["ms"]:
        ctx.fail("POLICY_RETROACTIVE", "the price of " + rec["code"] + " of " + rec["insurer"]
                 + " has a version from after this transaction's time; retry with the current time")
    ctx.put("price/" + key, rec)
    ctx.put("pricever/" + key + "/" + _inv(ctx.timestamp_ms), rec)
    if ctx.get("priced/" + rec["insurer"]) is None:
        # the mark settlement reads once per claim: an insurer without it has no own prices,
        # so its claims' lines need no range read each (one point read, prefetched by caller)
        ctx.put("priced/" + rec["insurer"], {"since_ms": ctx.timestamp_ms})
    ctx.emit("registry.price", {"code": rec["code"], "insurer": rec["insurer"]})
    return rec


def set_controlled(ctx: Context, code: str, controlled: str) -> dict:
    """Set the controlled class of a formulary entry (regulator admins); the insurer's class,
    prices and spec are kept."""
    _require_admin(ctx, ("regulator",))
    if not _only(code, CODE_CHARS, 23, 23):
        ctx.fail("BAD_ARGUMENTS", "medListCodg must be 23 upper-case letters and digits")
    if controlled not in CONTROLLED_CLASSES:
        ctx.fail("BAD_ARGUMENTS", "controlled class must be one of " + ",".join(CONTROLLED_CLASSES))
    old = ctx.get("drug/" + code)
    if old is None:
        ctx.fail("UNKNOWN_DRUG", "no formulary entry " + code)
    rec = {}
    for k in sorted(old.keys()):
        rec[k] = old[k]
    rec["controlled"] = controlled
    rec["updated"] = _stamp(ctx)
    return _put_drug(ctx, old, rec)


def get_drug(ctx: Context, code: str, insurer: str = "") -> dict:
    """A formulary entry by national code (medListCodg); with ``insurer``, as that insurer
    prices it: its own price list entry when it has one, else the entry."""
    if not isinstance(code, str) or len(code) != 23:
        ctx.fail("UNKNOWN_DRUG", "a formulary entry is looked up by its 23-char national code")
    if not isinstance(insurer, str) or (insurer != "" and not _is_id(insurer, 32)):
        ctx.fail("BAD_ARGUMENTS", "insurer is an organisation id (or empty)")
    rec = ctx.get("drug/" + code)
    if rec is None:
        ctx.fail("UNKNOWN_DRUG", "no formulary entry " + code)
    if insurer != "":
        own = ctx.get("price/" + insurer + "/" + code)
        if own is not None:
            own["controlled"] = rec["controlled"]  # the regulator's, whatever it was when priced
            return own
    return rec


def list_drugs(ctx: Context, start: str, limit: int) -> list:
    """Formulary page: entries with code >= start (at most limit, <= 200)."""
    if not _is_int(limit, 1, LIST_LIMIT):
        ctx.fail("BAD_ARGUMENTS", "limit must be 1-200")
    if start != "" and not _is_id(start, 64):
        ctx.fail("BAD_ARGUMENTS", "start is a national code (or empty)")
    out = []
    for pair in ctx.range("drug/" + start, "drug/~", limit):
        out.append(pair[1])
    return out


# ---------------------------------------------------------------- policy


def set_policy(
    ctx: Context,
    effective_ms: int,
    deductible_fen: int,
    ratio_bp: dict,
    cap_fen: int,
    cap_by_disease: dict,
    b_share_bp: int,
) -> dict:
    """Publish a policy version of the caller's insurer, in force from effective_ms.

    effective_ms 0 means "from this transaction"; a version may not take effect in the past
    (claims already settled are never re-priced), nor be written by a transaction timestamped
    before one that wrote a version of this insurer (as set_drug: a skewed clock, retry).
    """
    _require_admin(ctx, ("insurer",))
    now = ctx.timestamp_ms
    if effective_ms == 0:
        effective_ms = now
    if not _is_int(effective_ms, 0, MAX_INV):
        ctx.fail("BAD_ARGUMENTS", "effective_ms must be a millisecond timestamp")
    if effective_ms < now:
        ctx.fail("POLICY_RETROACTIVE", "a policy version cannot take effect before its tx")
    if not _is_int(deductible_fen, 0, MAX_FEN) or not _is_int(cap_fen, 0, MAX_FEN):
        ctx.fail("BAD_ARGUMENTS", "deductible_fen and cap_fen are non-negative integer fen")
    if not _is_int(b_share_bp, 0, 10000):
        ctx.fail("BAD_ARGUMENTS", "b_share_bp must be 0-10000")
    if not isinstance(ratio_bp, dict) or len(ratio_bp) == 0:
        ctx.fail("BAD_ARGUMENTS", "ratio_bp maps hospital level -> basis points")
    for level in sorted(ratio_bp.keys()):
        if level not in HOSPITAL_LEVELS or not _is_int(ratio_bp[level], 0, 10000):
            ctx.fail("BAD_ARGUMENTS", "ratio_bp: levels " + ",".join(HOSPITAL_LEVELS) + ", 0-10000")
    if not isinstance(cap_by_disease, dict) or len(cap_by_disease) > 64:
        ctx.fail("BAD_ARGUMENTS", "cap_by_disease maps ICD-10 -> fen (at most 64)")
    for dx in sorted(cap_by_disease.keys()):
        if not _is_id(dx, 16) or not _is_int(cap_by_disease[dx], 0, MAX_FEN):
            ctx.fail("BAD_ARGUMENTS", "cap_by_disease: ICD-10 code -> non-negative fen")
    org = ctx.caller.org
    prefix = "policy/" + org + "/"
    for pair in ctx.range(prefix, prefix + _inv(now), LIST_LIMIT):  # effective after now (<= 200)
        if pair[1]["updated"]["ms"] > now:
            # written by a tx timestamped after this one (a skewed client clock, as set_drug):
            # this version would take effect before a change already published -- re-pricing
            # dispenses made under it -- and that one would shadow this one from its time on
            ctx.fail("POLICY_RETROACTIVE", "a policy version of " + org + " was written after this "
                     "transaction's time; retry with the current time")
    rec = {
        "insurer": org,
        "effective_ms": effective_ms,
        "deductible_fen": deductible_fen,
        "ratio_bp": ratio_bp,
        "cap_fen": cap_fen,
        "cap_by_disease": cap_by_disease,
        "b_share_bp": b_share_bp,
        "updated": _stamp(ctx),
    }
    ctx.put(prefix + _inv(effective_ms), rec)
    ctx.emit("registry.policy", {"insurer": org, "effective_ms": effective_ms})
    return rec


def get_policy(ctx: Context, insurer: str, at_ms: int) -> dict:
    """The policy version of ``insurer`` in force at ``at_ms`` (0 = now)."""
    if at_ms == 0:
        at_ms = ctx.timestamp_ms
    if not _is_int(at_ms, 0, MAX_INV) or not _is_id(insurer, 32):
        ctx.fail("BAD_ARGUMENTS", "insurer id and a millisecond timestamp are required")
    prefix = "policy/" + insurer + "/"
    found = ctx.range(prefix + _inv(at_ms), prefix + "~", 1)
    if len(found) == 0:
        ctx.fail("NO_POLICY", "no policy of " + insurer + " in force at that time")
    return found[0][1]


# ---------------------------------------------------------------- patients


def _civil(ms: int) -> list:
    """[year, month, day] of the China-local (UTC+8) calendar day containing ``ms``."""
    days = (ms + 28800000) // 86400000
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3
    if mp >= 10:
        m = mp - 9
        y = y + 1
    return [y, m, d]


def _date_str(ms: int) -> str:
    ymd = _civil(ms)
    return str(ymd[0]).zfill(4) + "-" + str(ymd[1]).zfill(2) + "-" + str(ymd[2]).zfill(2)


def _diagnosis_entries(ctx: Context, pseudonym: str, items: list, default_hospital: str) -> list:
    """Tagged diagnosis entries; each carries ``recorded_ms`` (this transaction's time): the
    prescription contract counts a diagnosis only for visits in later transactions."""
    if not isinstance(items, list) or len(items) > MAX_DIAGNOSES:
        ctx.fail("BAD_TRANSIENT", "transient diagnoses: a list of at most 16 entries")
    key = _dx_key(ctx)
    today = _date_str(ctx.timestamp_ms)
    out = []
    for item in items:
        if not isinstance(item, dict):
            ctx.fail("BAD_TRANSIENT", "each diagnosis is an object")
        icd10 = item.get("icd10")
        date = item.get("date")
        hospital = item.get("hospital", default_hospital)
        physical = item.get("physical")
        if not _is_id(icd10, 16) or not _is_date(date) or not _is_id(hospital, 32):
            ctx.fail("BAD_TRANSIENT", "diagnosis needs icd10, date YYYY-MM-DD, hospital")
        if date > today:
            ctx.fail("BAD_TRANSIENT", "a diagnosis cannot be dated after this transaction")
        if not isinstance(physical, bool):
            ctx.fail("BAD_TRANSIENT", "diagnosis physical flag (visit in person or not) is a required boolean")
        out.append(
            {
                "tag": _dx_tag(ctx, key, pseudonym, icd10),
                "date": date,
                "hospital": hospital,
                "physical": physical,
                "recorded_ms": ctx.timestamp_ms,
                "by": ctx.caller.org,
            }
        )
    return out


def _recorder(entry: dict) -> str:
    """The hospital that wrote a diagnosis entry (whose room it takes): ``by``, or on an entry
    written before ``by`` was kept, the hospital it names."""
    return entry.get("by", entry["hospital"])


def _user_tag(ctx: Context) -> str:
    """The tag of the patient's certificate from transient patient_binding + patient_user."""
    binding = ctx.transient("patient_binding")
    user = ctx.transient("patient_user")
    if not _is_hex(binding, 64):
        ctx.fail("BAD_TRANSIENT", "transient patient_binding (64 lower-case hex) is required")
    if not isinstance(user, dict) or not _is_id(user.get("org"), 32) or not _is_id(user.get("name"), 64):
        ctx.fail("BAD_TRANSIENT", "transient patient_user {org, name} is required")
    return ctx.hmac_sha256_hex(binding, "patient-user|" + user["org"] + "|" + user["name"])


def _is_patient(ctx: Context, rec: dict) -> bool:
    """The caller is this patient: her certificate's pseudonym attribute, or the transient
    patient_binding proves her (org, name) matches the enrolment's user_tag."""
    c = ctx.caller
    if c.role != "patient":
        return False
    if c.attrs.get("pseudonym", "") == rec["pseudonym"] and c.org == rec["hospital"]:
        return True  # any other hospital's CA could mint the attribute: its binding decides
    binding = ctx.transient("patient_binding")
    if not _is_hex(binding, 64):
        return False
    return rec["user_tag"] == ctx.hmac_sha256_hex(binding, "patient-user|" + c.org + "|" + c.name)


def enrol_patient(ctx: Context, pseudonym: str) -> dict:
    """Enrol (or update) a patient of the caller's hospital (hospital admin).

    Transient inputs: ``dx_key`` (hex), ``diagnoses`` (list of {icd10, date, hospital,
    physical}), ``patient_binding`` (hex) and ``patient_user`` ({org, name} of the patient's
    certificate). No money and no insurer here: see ``settlement.open_account``.
    """
    _require_admin(ctx, ("hospital",))
    if not _is_hex(pseudonym, 64):
        ctx.fail("BAD_ARGUMENTS", "pseudonym must be 64 lower-case hex (HMAC-SHA256)")
    org = ctx.caller.org
    old = ctx.get("patient/" + pseudonym)
    if old is not None and old["hospital"] != org:
        ctx.fail("ACCESS_DENIED", "patient is enrolled by another hospital")
    diagnoses = _diagnosis_entries(ctx, pseudonym, ctx.transient("diagnoses"), org)
    if old is not None:
        # a re-enrolment replaces the enrolling hospital's own entries only: the diagnoses other
        # hospitals recorded (add_diagnosis) are theirs, not the enroller's to drop
        kept = []
        for entry in old["diagnoses"]:
            if _recorder(entry) != org:
                kept.append(entry)
        diagnoses = kept + diagnoses
    rec = {
        "pseudonym": pseudonym,
        "hospital": org,
        "user_tag": _user_tag(ctx),
        "diagnoses": diagnoses,
        "updated": _stamp(ctx),
    }
    ctx.put("patient/" + pseudonym, rec)
    ctx.emit("registry.patient", {"hospital": org})
    return {"pseudonym": pseudonym, "hospital": org, "diagnoses": len(diagnoses)}


def add_diagnosis(ctx: Context, pseudonym: str, physical: bool) -> dict:
    """Record a diagnosis made now at the caller's hospital (admin or doctor of that
    hospital). Its date is this transaction's (China-local) date, never caller-supplied,
    and it counts only for prescriptions issued in later transactions.

    Transient inputs: ``dx_key`` and ``icd10``.
    """
    c = ctx.caller
    if c.org_kind != "hospital" or c.role not in ("admin", "doctor"):
        ctx.fail("WRONG_ROLE", "a hospital admin or doctor records diagnoses")
    if c.role == "doctor":
        prac = ctx.get("prac/" + c.org + "/" + c.name)
        if prac is None or prac["role"] != "doctor" or not prac["licence_active"]:
            ctx.fail("UNAUTHORIZED", "no active doctor licence registered for " + c.name)
    if not _is_hex(pseudonym, 64):
        ctx.fail("BAD_ARGUMENTS", "pseudonym must be 64 lower-case hex (HMAC-SHA256)")
    if not isinstance(physical, bool):
        ctx.fail("BAD_ARGUMENTS", "physical is a boolean")
    rec = ctx.get("patient/" + pseudonym)
    if rec is None:
        ctx.fail("UNKNOWN_PATIENT", "patient is not enrolled")
    entry = {
        "icd10": ctx.transient("icd10"),
        "date": _date_str(ctx.timestamp_ms),
        "hospital": c.org,
        "physical": physical,
    }
    new = _diagnosis_entries(ctx, pseudonym, [entry], c.org)[0]
    mine = 0
    others = 0
    shared = {}  # entries per hospital in the room shared by the hospitals but her enrolling one
    for dx in rec["diagnoses"]:
        by = _recorder(dx)
        if by != rec["hospital"]:
            others = others + 1
            shared[by] = shared.get(by, 0) + 1
        if by == c.org:
            mine = mine + 1
            if dx["tag"] == new["tag"] and dx["physical"] == physical:
                # already on record from this hospital (the earlier entry already counts for
                # visits after it): a follow-up visit recorded again takes no room
                return {"pseudonym": pseudonym, "diagnoses": len(rec["diagnoses"]),
                        "recorded": False, "evicted": ""}
    # room per hospital: one hospital cannot fill another's (the enrolling hospital's 16 are its
    # own; the others share the rest of the record's bound, at most 16 each)
    if mine >= MAX_DIAGNOSES:
        ctx.fail("LIMIT_EXCEEDED", "at most 16 diagnoses per patient from one hospital")
    kept = rec["diagnoses"]
    evicted = ""
    if c.org != rec["hospital"] and others >= MAX_DIAGNOSES_TOTAL - MAX_DIAGNOSES:
        evicted = _fullest(rec["diagnoses"], rec["hospital"], shared, mine)
        if evicted == "":
            ctx.fail("LIMIT_EXCEEDED", "the 48 diagnoses per patient from hospitals other than "
                     "her enrolling hospital are full, and no hospital holds 2 more of them than "
                     + c.org + " (" + str(mine) + ")")
        kept = _drop_oldest(rec["diagnoses"], evicted, new)
    if len(kept) >= MAX_DIAGNOSES_TOTAL:
        ctx.fail("LIMIT_EXCEEDED", "at most 64 diagnoses per patient")
    rec["diagnoses"] = kept + [new]
    rec["updated"] = _stamp(ctx)
    ctx.put("patient/" + pseudonym, rec)
    event = {"hospital": c.org}
    if evicted != "":
        event["evicted"] = evicted
    ctx.emit("registry.diagnosis", event)
    return {"pseudonym": pseudonym, "diagnoses": len(rec["diagnoses"]), "recorded": True,
            "evicted": evicted}


def _fullest(diagnoses: list, enroller: str, shared: dict, mine: int) -> str:
    """The hospital whose entry gives way (_drop_oldest) when the shared room is full: the one holding
    the most entries in it, if that is at least 2 more than the caller's ``mine`` (so it still
    holds at least as many as the caller afterwards: two hospitals never take room back and
    forth); among equals the one whose oldest entry is the oldest. "" when none does."""
    most = 0
    for org in sorted(shared.keys()):
        if shared[org] > most:
            most = shared[org]
    if most < mine + 2:
        return ""
    for dx in diagnoses:  # oldest first (recording order)
        by = _recorder(dx)
        if by != enroller and shared[by] == most:
            return by
    return ""


def _drop_oldest(diagnoses: list, org: str, new: dict) -> list:
    """``diagnoses`` without the oldest entry ``org`` recorded whose loss loses no diagnosis an
    online follow-up needs (prescription._check_follow_up: an earlier physical diagnosis of
    the code): a visit not in person, or a physical diagnosis another physical entry on record
    (or ``new``, the entry taking its place) also has; when every entry of ``org`` is the only
    physical diagnosis of its code, the oldest of them (the room is shared: a hospital cannot
    keep it by such entries alone). An entry written before ``recorded_ms`` was kept counts
    for no follow-up (_check_follow_up cannot tell it is earlier): never the other one."""
    physical = {}
    for dx in diagnoses + [new]:
        if dx["physical"] and "recorded_ms" in dx:
            physical[dx["tag"]] = physical.get(dx["tag"], 0) + 1
    drop = -1
    for i in range(len(diagnoses)):
        dx = diagnoses[i]
        if _recorder(dx) == org:
            if not dx["physical"] or "recorded_ms" not in dx or physical[dx["tag"]] > 1:
                drop = i
                break
            if drop < 0:
                drop = i
    return diagnoses[0:drop] + diagnoses[drop + 1:]


def _may_ask(ctx: Context) -> bool:
    """Roles that read some enrolments (from the certificate alone, before any lookup): regulator
    auditors, hospital admins, doctors and pharmacists, insurer clerks and admins, patients.
    Anyone else is refused whatever the pseudonym, so the answer cannot tell them who is
    enrolled (the settlement contract's get_account and patient_status hold the same rule)."""
    c = ctx.caller
    if c.role == "patient":
        return True
    if c.org_kind == "regulator":
        return c.role == "auditor"
    if c.org_kind == "insurer":
        return c.role in ("clerk", "admin")
    if c.org_kind == "hospital":
        return c.role in ("admin", "doctor", "pharmacist")
    return False


def _insures(ctx: Context, pseudonym: str) -> bool:
    """The caller (an insurer's clerk or admin) holds the patient's account, or is the insurer a
    pending request she made herself names, within its 30 days (as settlement's
    patient_status: it decides whether to take her over, or to open her account -- a request
    with ``from`` ""). No other insurer, and get_patient asks this before the enrolment is read:
    an insurer she has no tie to cannot tell whether she is enrolled."""
    org = ctx.caller.org
    acct = ctx.get_from("settlement", "acct/" + pseudonym)
    if acct is not None and acct["insurer"] == org:
        return True
    req = ctx.get_from("settlement", "xfer/" + pseudonym)
    return req is not None and req["to"] == org and req["requested_by"] == "patient" \
        and ctx.timestamp_ms <= req["ms"] + TRANSFER_EXPIRY_MS


def get_patient(ctx: Context, pseudonym: str) -> dict:
    """Enrolment metadata (diagnosis tags only): the patient herself, staff of her
    enrolling hospital, the insurer holding her account (or asked by her to take it over) and
    the regulator's auditors."""
    if not _is_hex(pseudonym, 64):
        ctx.fail("BAD_ARGUMENTS", "pseudonym must be 64 lower-case hex (HMAC-SHA256)")
    c = ctx.caller
    if not _may_ask(ctx):  # before the lookup: enrolment says she is in a chronic-disease scheme
        ctx.fail("ACCESS_DENIED", "only the patient, her hospital, her insurer and auditors")
    if c.org_kind == "insurer" and not _insures(ctx, pseudonym):
        # before the lookup too: an insurer she has no tie to learns nothing of her enrolment
        ctx.fail("ACCESS_DENIED", "only the patient, her hospital, her insurer and auditors")
    rec = ctx.get("patient/" + pseudonym)
    if rec is None:
        ctx.fail("UNKNOWN_PATIENT", "patient is not enrolled")
    allowed = c.org_kind == "regulator" and c.role == "auditor"
    if c.org == rec["hospital"] and c.role in ("admin", "doctor", "pharmacist"):
        allowed = True
    if c.org_kind == "insurer" and c.role in ("admin", "clerk"):
        allowed = _insures(ctx, pseudonym)
    if not allowed and not _is_patient(ctx, rec):
        ctx.fail("ACCESS_DENIED", "only the patient, her hospital, her insurer and auditors")
    return rec
