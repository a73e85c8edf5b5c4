"""rxchain prescription contract (namespace ``prescription``).

Lifecycle: issue -> review (approve/reject) -> route/re-route -> lock -> dispense -> deliver,
with release, revoke, expiry and repeat fills; the rules and reason codes of DOMAIN.md
sections 1-2. contracts/README.md documents it (functions, rule orders, reason codes, the
content and claim commitments, the encryption, grants ``grant/{rx_id}/{party}``, audit
``audit/{rx_id}/{ms13}/{tx_id}/{n}``, state keys): read it first. The plaintext reaches the
contract only as transient inputs (never stored); it recomputes the commitments
(HASH_MISMATCH) and checks every rule on the plaintext. A denied ``get_key`` does not fail
the tx: it writes the DENIED audit record and returns {"error": "NO_KEY_GRANT", ...}.
"""

from rxchain_contract import Context

DAY_MS = 86400000
TZ_MS = 28800000
MAX_INV = 9999999999999
MAX_ITEMS = 5
ORDINARY_MAX_DAYS = 7
LONG_MAX_DAYS = 28
LONG_ASSESSED_MAX_DAYS = 84
MAX_VALID_DAYS = 3
MIN_PRACTICE_YEARS = 3
GUARDIAN_AGE = 6
MAX_FILLS = 12
MAX_QTY = 1000
MAX_BLOB = 262144
MAX_TRACE_CODE = 64
MIN_RETENTION_DAYS = 365  # MoH order 53 (prescription rules) Art. 50: kept at least 1 year
HEX = "0123456789abcdef"
DIGITS = "0123456789"
ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_."
FORBIDDEN_CLASSES = ("NARCOTIC", "PSYCHOTROPIC_I", "PSYCHOTROPIC_II", "TOXIC", "RADIOACTIVE")
LONGRX_EXCLUDED = (
    "ANTIMICROBIAL",
    "TOXIC",
    "NARCOTIC",
    "PSYCHOTROPIC_I",
    "PSYCHOTROPIC_II",
    "SPECIAL_STORAGE",
)
READ_ROLES = {
    "hospital": ("doctor", "pharmacist"),
    "pharmacy": ("pharmacist",),
    "consent": ("doctor", "pharmacist"),
    "insurer": ("clerk",),
}
STAFF_ROLES = ("doctor", "pharmacist", "nurse", "admin", "courier", "clerk")
TERMINAL = ("REJECTED", "REVOKED", "EXPIRED", "ERASED")
REVOKE_REASONS = (
    "PRESCRIBING_ERROR",
    "PATIENT_REQUEST",
    "ADVERSE_REACTION",
    "DUPLICATE",
    "CLINICAL_CHANGE",
    "OTHER",
)
REJECT_REASONS = ("INTERACTION", "DOSE", "CONTRAINDICATION", "NOT_INDICATED", "INCOMPLETE", "OTHER")
B64_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
MIN_NOTE_CT = 40
MAX_NOTE_CT = 4096
MAX_CONSENTS = 16  # consent grants of one prescription at once (grant_consent: LIMIT_EXCEEDED)
MAX_NOTE_KEYS = 64  # note keys of one prescription: one per withdrawal or re-route (README "Note keys")
MAX_WRAPPED = 512  # a wrapped note key (aead.wrap_key: 126 bytes, 168 base64 characters)
MAX_VERSION = 4294967295  # largest version position a trace cursor names (ctx.history's start)
MAX_POSITION = 9999  # largest step position a trace cursor may name (resolved from the start)
PAGE_MAX = 1000  # largest page of audit_trail and trace (also their default page)
TRACE_BYTES = 49152  # JSON of a trace page's steps (beyond its first)
CLAIM_ROWS = 500  # rxclaim index rows the trace reads per range call
MAX_FILL_NO = 99  # a claim's fill number (settlement.settle: 1-99): parts of a trace cursor
PROBE_FROM = 4095  # a record without step_count: the first position asked of the index (_trace)


# ---------------------------------------------------------------- small pure helpers


def _only(s: str, chars: str, lo: int, hi: int) -> bool:
    """``s`` is a string of ``lo``-``hi`` characters, each one of ``chars``."""
    if not isinstance(s, str) or len(s) < lo or len(s) > hi:
        return False
    for ch in s:
        if ch not in chars:
            return False
    return True


def _is_hex(s: str, lo: int, hi: int) -> bool:
    return _only(s, HEX, lo, hi)


def _is_id(s: str, max_len: int) -> bool:
    return _only(s, ID_CHARS, 1, max_len)


def _is_page_key(s: str) -> bool:
    """A paging cursor: empty (from the start) or a key suffix a page handed back."""
    return _only(s, ID_CHARS + "/", 0, 256)


def _is_int(v: int, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _is_blob(s: str) -> bool:
    return isinstance(s, str) and 0 < len(s) <= MAX_BLOB


def _is_blank(s: str) -> bool:
    """A required free-text field that says nothing: missing, not a string, or without one
    visible character -- only Unicode whitespace (e.g. U+3000 ideographic space) and
    invisible format/control characters (e.g. U+200B zero-width space, U+FEFF)."""
    if not isinstance(s, str):
        return True
    for ch in s:
        if ch.isprintable() and not ch.isspace():
            return False
    return True


def _trace_cursor(s: str) -> list:
    """A trace cursor, [] when malformed: "" (the start) or a page's ``next``,
    "{v}/{e1}.{e2}..." -- the position in the history index of the first version of
    ``rx/{rx_id}`` not shown and, for fills 1, 2, ..., how many of the fill's claim events
    (in its index order) were shown: ["fills", v, [e1, e2, ...]]; or a cursor of an earlier
    release: "{v}.{c}", c the claim events shown in time order: ["timed", v, c], or a step's
    position in the trail, 0-MAX_POSITION: ["position", position]."""
    if s == "":
        return ["fills", 0, []]
    if _only(s, DIGITS, 1, 4):
        return ["position", int(s)]
    if not _only(s, DIGITS + "./", 3, 11 + 5 * MAX_FILL_NO):
        return []
    sep = "/" if "/" in s else "."
    parts = s.split(sep)
    if len(parts) != 2 or not _only(parts[0], DIGITS, 1, 10) or int(parts[0]) > MAX_VERSION:
        return []
    if sep == ".":
        if not _only(parts[1], DIGITS, 1, 7):
            return []
        return ["timed", int(parts[0]), int(parts[1])]
    shown = parts[1].split(".")
    if len(shown) > MAX_FILL_NO:
        return []
    for e in shown:
        if not _only(e, DIGITS, 1, 4):
            return []
    return ["fills", int(parts[0]), [int(e) for e in shown]]


def _reason_code(ctx: Context, reason: str, codes: tuple, what: str) -> str:
    """A reason is a code of a fixed list (free text would reach blocks and state)."""
    if _is_blank(reason):
        ctx.fail("REASON_REQUIRED", what + " needs a reason code: " + ", ".join(codes))
    if reason not in codes:
        listed = ", ".join(codes)
        ctx.fail("BAD_ARGUMENTS", "reason must be one of " + listed + " (free text goes in note_ct)")
    return reason


def _note_ct(ctx: Context, note_ct: str) -> str:
    """An optional note: "" or base64 of AES-GCM ciphertext (nonce + tag at least 28 bytes)."""
    if not isinstance(note_ct, str):
        ctx.fail("BAD_ARGUMENTS", "note_ct must be a base64 string")
    if len(note_ct) == 0:
        return ""
    if len(note_ct) < MIN_NOTE_CT or len(note_ct) > MAX_NOTE_CT or len(note_ct) % 4 != 0:
        ctx.fail("BAD_ARGUMENTS", "note_ct must be base64 ciphertext of 40-4096 characters")
    if not _only(note_ct, B64_CHARS, 0, MAX_NOTE_CT):
        ctx.fail("BAD_ARGUMENTS", "note_ct must be base64 ciphertext (client-side encrypted)")
    return note_ct


def _note(ctx: Context, rx: dict, note_ct: str, note_epoch: int) -> dict:
    """The note fields of a review or revocation: ``note_ct`` and, once a withdrawal of consent
    or a re-route made a note key, ``note_epoch``; a note must be under the note key in force
    (0: the record key), else NOTE_KEY_STALE (a withdrawn party holds the older keys)."""
    note = _note_ct(ctx, note_ct)
    epoch = rx.get("note_epoch", 0)  # absent on records from before note keys
    if not _is_int(note_epoch, 0, MAX_NOTE_KEYS):
        ctx.fail("BAD_ARGUMENTS", "note_epoch is the note key's number (0-64)")
    if note != "" and note_epoch != epoch:
        ctx.fail("NOTE_KEY_STALE", "the note must be encrypted under note key " + str(epoch) + " (get_key)")
    out = {"note_ct": note}
    if note != "" and epoch > 0:
        out["note_epoch"] = epoch
    return out


def _wrapped_map(ctx: Context, keys: dict, names: list, arg: str = "note_keys") -> dict:
    """``keys`` (None: {}) maps exactly ``names`` each to a wrapped note key."""
    if keys is None:
        keys = {}
    if not isinstance(keys, dict) or sorted(keys.keys()) != sorted(names):
        ctx.fail("BAD_ARGUMENTS", arg + " must map exactly [" + ", ".join(sorted(names)) + "] to wrapped keys")
    for k in names:
        if not _only(keys[k], B64_CHARS, 1, MAX_WRAPPED):
            ctx.fail("BAD_ARGUMENTS", "a wrapped note key is base64 of at most 512 characters")
    return keys


def _next_note_key(ctx: Context, rx: dict, keys: dict, names: list, arg: str, instead: str) -> int:
    """The number of the note key ``keys`` makes (``rx``'s note_epoch + 1, at most
    MAX_NOTE_KEYS, else BAD_ARGUMENTS: the call goes in ``instead``), wrapped for exactly
    ``names``: the readers after the call. Checks only: nothing is written."""
    epoch = rx.get("note_epoch", 0) + 1
    if epoch > MAX_NOTE_KEYS:
        ctx.fail("BAD_ARGUMENTS", "at most 64 note keys per prescription (" + instead + ")")
    _wrapped_map(ctx, keys, names, arg)
    return epoch


def _hand_out(ctx: Context, rx: dict, epoch: int, keys: dict, grants: list, n: int) -> int:
    """Note key ``epoch`` into each of ``grants`` (its wrap in ``keys``), each audited GRANT
    note_key from audit number ``n``; it becomes the key in force. Returns the next number."""
    for g in grants:
        g["note_keys"] = g.get("note_keys", {})
        g["note_keys"][str(epoch)] = keys[g["party"]]
        ctx.put("grant/" + rx["rx_id"] + "/" + g["party"], g)
        _audit(ctx, rx["rx_id"], n, "GRANT", g["party"], "note_key")
        n = n + 1
    rx["note_epoch"] = epoch
    return n


def _epochs(rx: dict) -> list:
    """The numbers ("1".."n") of the prescription's note keys."""
    out = []
    for i in range(rx.get("note_epoch", 0)):
        out.append(str(i + 1))
    return out


def _civil(ms: int) -> list:
    """[year, month, day] of the China-local (UTC+8) calendar day containing ``ms``."""
    days = (ms + TZ_MS) // DAY_MS
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


def _iso_utc(ms: int) -> str:
    ymd = _civil(ms - TZ_MS)
    rem = ms % DAY_MS
    hh = rem // 3600000
    mm = (rem // 60000) % 60
    ss = (rem // 1000) % 60
    return (
        str(ymd[0]).zfill(4) + "-" + str(ymd[1]).zfill(2) + "-" + str(ymd[2]).zfill(2) + "T"
        + str(hh).zfill(2) + ":" + str(mm).zfill(2) + ":" + str(ss).zfill(2) + "Z"
    )


def _days_in_month(y: int, m: int) -> int:
    """Days of month ``m`` (1-12) of Gregorian year ``y`` (leap: /4, not /100 unless /400).
    The registry contract holds the same rule (contracts cannot import each other)."""
    if m == 2:
        if (y % 4 == 0 and y % 100 != 0) or y % 400 == 0:
            return 29
        return 28
    if m == 4 or m == 6 or m == 9 or m == 11:
        return 30
    return 31


def _parse_date(s: str) -> list:
    """[year, month, day] of a real calendar date "YYYY-MM-DD" (year 0001-9999), else []."""
    if not isinstance(s, str) or len(s) != 10 or s[4] != "-" or s[7] != "-":
        return []
    if not _only(s[0:4] + s[5:7] + s[8:10], DIGITS, 8, 8):
        return []
    y = int(s[0:4])
    m = int(s[5:7])
    d = int(s[8:10])
    if y < 1 or m < 1 or m > 12 or d < 1 or d > _days_in_month(y, m):
        return []
    return [y, m, d]


def _age_years(birth: list, today: list) -> int:
    age = today[0] - birth[0]
    if today[1] < birth[1] or (today[1] == birth[1] and today[2] < birth[2]):
        age = age - 1
    return age


# ---------------------------------------------------------------- state helpers


def _rx(ctx: Context, rx_id: str) -> dict:
    _check_rx_id(ctx, rx_id)
    rec = ctx.get("rx/" + rx_id)
    if rec is None:
        _missing(ctx, rx_id)
    return rec


def _check_rx_id(ctx: Context, rx_id: str) -> None:
    if not _is_id(rx_id, 64):
        ctx.fail("BAD_ARGUMENTS", "rx_id must be 1-64 chars of [A-Za-z0-9-_.]")


def _missing(ctx: Context, rx_id: str) -> None:
    """A missing id's answer; the views give it to a non-party too (README: existence)."""
    ctx.fail("NOT_FOUND", "no prescription " + rx_id)


def _party_rx(ctx: Context, rx_id: str) -> dict:
    """The record for a party (``_can_view``); anyone else gets the missing id's answer."""
    _check_rx_id(ctx, rx_id)
    rec = ctx.get("rx/" + rx_id)
    if rec is None or not _can_view(ctx, rec):
        _missing(ctx, rx_id)
    return rec


def _patients_rx(ctx: Context, rx_id: str, what: str) -> dict:
    """For the patient's calls: other roles ACCESS_DENIED before the lookup, another
    patient (or one without her binding) the missing id's answer."""
    _check_rx_id(ctx, rx_id)
    if ctx.caller.role != "patient":
        ctx.fail("ACCESS_DENIED", "only the patient " + what)
    rec = ctx.get("rx/" + rx_id)
    if rec is None or not _is_patient(ctx, rec):
        _missing(ctx, rx_id)
    return rec


def _step(ctx: Context, name: str, detail: dict) -> dict:
    c = ctx.caller
    return {
        "step": name,
        "actor": c.name,
        "org": c.org,
        "role": c.role,
        "time_ms": ctx.timestamp_ms,
        "tx_id": ctx.tx_id,
        "detail": detail,
    }


def _save(ctx: Context, rx: dict, name: str, detail: dict) -> None:
    """Write ``rx/{rx_id}`` once per transaction: one version = one trace step."""
    rx["step"] = _step(ctx, name, detail)
    if "step_count" in rx:  # versions written so far (absent on records from before it)
        rx["step_count"] = rx["step_count"] + 1
    ctx.put("rx/" + rx["rx_id"], rx)
    ctx.emit("rx." + name, {"rx_id": rx["rx_id"], "status": rx["status"], "org": ctx.caller.org})


def _audit(ctx: Context, rx_id: str, n: int, event: str, party: str, outcome: str) -> None:
    c = ctx.caller
    key = "audit/" + rx_id + "/" + str(ctx.timestamp_ms).zfill(13) + "/" + ctx.tx_id + "/"
    ctx.put(
        key + str(n),
        {
            "rx_id": rx_id,
            "event": event,
            "party": party,
            "outcome": outcome,
            "actor": c.name,
            "org": c.org,
            "role": c.role,
            "time_ms": ctx.timestamp_ms,
            "tx_id": ctx.tx_id,
        },
    )


def _grant(ctx: Context, rx_id: str, party: str, kind: str, wrapped: str, n: int, note_keys: dict | None = None,
           claim_wrapped: str = "") -> None:
    rec = {
        "party": party,
        "kind": kind,
        "wrapped_key": wrapped,
        "granted_by": ctx.caller.org,
        "time_ms": ctx.timestamp_ms,
    }
    if claim_wrapped != "":  # the issuing hospital's copy of the claim key (issue's claim_keys)
        rec["claim_wrapped_key"] = claim_wrapped
    if note_keys:  # the note keys made so far, "1".."n" (README "Note keys")
        rec["note_keys"] = note_keys
    ctx.put("grant/" + rx_id + "/" + party, rec)
    _audit(ctx, rx_id, n, "GRANT", party, kind)


def _grants(ctx: Context, rx_id: str) -> list:
    """Every grant record of ``rx_id`` (paged reads; gas bounds them)."""
    end = "grant/" + rx_id + "/~"
    out = []
    page = ctx.range("grant/" + rx_id + "/", end, 64)
    while len(page) > 0:
        for pair in page:
            out.append(pair[1])
        # next page after the last key ("!" sorts below every party id character)
        page = ctx.range(page[len(page) - 1][0] + "!", end, 64)
    return out


def _readers(ctx: Context, rx_id: str) -> list:
    """The grants to the record key (all but the insurer's): who reads the notes."""
    out = []
    for g in _grants(ctx, rx_id):
        if g["kind"] != "insurer":
            out.append(g)
    return out


def _drop_grant(ctx: Context, rx_id: str, party: str, n: int) -> None:
    ctx.delete("grant/" + rx_id + "/" + party)
    _audit(ctx, rx_id, n, "REVOKE_GRANT", party, "REVOKED")


def _drug(ctx: Context, code: str) -> dict:
    if not isinstance(code, str) or len(code) == 0 or len(code) > 48:
        return {}
    rec = ctx.get_from("registry", "drug/" + code)
    if rec is None:
        return {}
    return rec


def _is_patient(ctx: Context, rx: dict) -> bool:
    c = ctx.caller
    if c.role != "patient":
        return False
    return _is_enrolled_user(ctx, rx["patient"])


def _is_enrolled_user(ctx: Context, pseudonym: str) -> bool:
    """A caller with role patient is the patient ``pseudonym``: her certificate attribute
    ``pseudonym`` (from her enrolling hospital's CA only: any hospital can mint one), or the
    transient ``patient_binding`` (HMAC of her certificate's org and name under the consortium
    secret) matches the enrolment's ``user_tag``."""
    c = ctx.caller
    enrol = ctx.get_from("registry", "patient/" + pseudonym)
    if enrol is None:
        return False
    if c.attrs.get("pseudonym", "") == pseudonym and c.org == enrol["hospital"]:
        return True
    binding = ctx.transient("patient_binding")
    if not _is_hex(binding, 64, 64):
        return False
    return enrol["user_tag"] == ctx.hmac_sha256_hex(binding, "patient-user|" + c.org + "|" + c.name)


def _transient_content(ctx: Context) -> list:
    """[content, commitment] of the transient content and salt (their shape only)."""
    content = ctx.transient("content")
    salt = ctx.transient("salt")
    if not isinstance(content, dict):
        ctx.fail("BAD_TRANSIENT", "transient content (the plaintext prescription) is required")
    if not _is_hex(salt, 32, 128):
        ctx.fail("BAD_TRANSIENT", "transient salt must be 32-128 lower-case hex chars")
    text = ctx.canonical_json(content)
    if text == "":
        ctx.fail("BAD_CONTENT", "content has no canonical JSON (lone surrogate?)")
    return [content, ctx.sha256_hex(salt + text)]


def _check_content(ctx: Context, rx_id: str, given: list, commitment: str) -> dict:
    if given[1] != commitment:
        ctx.fail("HASH_MISMATCH", "content does not match the ledger commitment")
    if given[0].get("rx_id") != rx_id:
        ctx.fail("BAD_CONTENT", "content rx_id differs from the prescription id")
    return given[0]


def _verify_content(ctx: Context, rx_id: str, commitment: str) -> dict:
    return _check_content(ctx, rx_id, _transient_content(ctx), commitment)


def _pharmacy_active(ctx: Context, org: str) -> bool:
    """``org`` is registered as a dispensing pharmacy and its registration is active."""
    ph = ctx.get_from("registry", "pharmacy/" + org)
    return ph is not None and ph["active"] is True


def _require_active_pharmacy(ctx: Context, org: str) -> None:
    """``org`` is a pharmacy whose registration is active (issue, route, review, lock and
    dispense by a pharmacy; the issuing hospital's own pharmacy is no registered pharmacy and
    never asked), else UNKNOWN_PHARMACY."""
    if not _pharmacy_active(ctx, org):
        ctx.fail("UNKNOWN_PHARMACY", "pharmacy " + org + " is not registered/active")


def _unlock(rx: dict) -> None:
    """Drop the lock: back to APPROVED, or DISPENSED once a fill was dispensed."""
    rx["lock"] = None
    rx["status"] = "APPROVED"
    if rx["fills"] > 0:
        rx["status"] = "DISPENSED"


def _effective_pharmacy(rx: dict) -> str:
    if rx["pharmacy"] != "":
        return rx["pharmacy"]
    return rx["hospital"]


def _check_dispensable(ctx: Context, rx: dict) -> None:
    """Status rules shared by lock and dispense (everything but who the caller is)."""
    status = rx["status"]
    now = ctx.timestamp_ms
    if status == "REVOKED":
        ctx.fail("REVOKED", "the prescription was revoked")
    if status == "REJECTED":
        ctx.fail("REJECTED", "the pharmacist rejected the prescription")
    if status == "ISSUED":
        ctx.fail("NOT_REVIEWED", "a pharmacist must approve the prescription first")
    if status == "ERASED":
        ctx.fail("ERASED", "the prescription was erased")
    if rx["fills"] >= rx["max_fills"]:
        if rx["max_fills"] == 1:
            ctx.fail("ALREADY_DISPENSED", "the prescription was already dispensed")
        ctx.fail("FILLS_EXHAUSTED", "all " + str(rx["max_fills"]) + " fills were dispensed")
    if status == "EXPIRED" or now > _fill_deadline(rx):
        ctx.fail("EXPIRED", "the prescription's validity ended")
    if rx["fills"] > 0:
        # from midnight: China-local days, as the deadline
        earliest = ((rx["last_fill_ms"] + TZ_MS) // DAY_MS + rx["fill_interval_days"]) * DAY_MS - TZ_MS
        if now < earliest:
            ctx.fail("TOO_EARLY", "the next fill is allowed from " + _iso_utc(earliest))


def _disp_key(rx_id: str, fill: int) -> str:
    return "disp/" + rx_id + "/" + str(fill).zfill(3)


def _latest_of(ctx: Context, rx: dict, org: str) -> int:
    """The latest fill ``org`` dispensed (handed over or not), 0 if none."""
    n = rx["fills"]
    while n > 0:
        disp = ctx.get(_disp_key(rx["rx_id"], n))
        if disp is not None and disp["pharmacy"] == org:
            return n
        n = n - 1
    return 0


def _fill_deadline(rx: dict) -> int:
    """Validity end of the next fill: first fill by valid_end, repeat k by +k*interval."""
    return rx["valid_end_ms"] + rx["fills"] * rx["fill_interval_days"] * DAY_MS


def _pharmacist_licence(ctx: Context) -> dict | None:
    """The caller's registered pharmacist record if its licence is active, else None."""
    c = ctx.caller
    prac = ctx.get_from("registry", "prac/" + c.org + "/" + c.name)
    if prac is None or prac["role"] != "pharmacist" or not prac["licence_active"]:
        return None
    return prac


def _require_pharmacist(ctx: Context) -> dict:
    c = ctx.caller
    if c.role != "pharmacist":
        ctx.fail("WRONG_ROLE", "only a pharmacist may do this")
    prac = _pharmacist_licence(ctx)
    if prac is None:
        ctx.fail("UNAUTHORIZED", "no active pharmacist licence registered for " + c.name)
    return prac


def _can_view(ctx: Context, rx: dict) -> bool:
    c = ctx.caller
    if c.org_kind == "regulator" and c.role == "auditor":
        return True
    if _is_patient(ctx, rx):
        return True
    if c.role not in STAFF_ROLES:
        return False
    if c.org == rx["hospital"] or c.org == rx["pharmacy"] or c.org == rx["insurer"]:
        return True
    if ctx.get("grant/" + rx["rx_id"] + "/" + c.org) is not None:
        return True
    # re-routed away with the latest fill not handed over yet: its courier still delivers it
    # (an earlier fill it owes too, but then without reading what came after it)
    if rx["fills"] == 0:
        return False
    disp = ctx.get(_disp_key(rx["rx_id"], rx["fills"]))
    return disp is not None and disp["pharmacy"] == c.org and not disp["delivered"]


# ---------------------------------------------------------------- issue


def _check_prescriber(ctx: Context) -> dict:
    c = ctx.caller
    if c.role != "doctor" or c.org_kind != "hospital":
        ctx.fail("UNAUTHORIZED_PRESCRIBER", "only a hospital doctor may prescribe")
    prac = ctx.get_from("registry", "prac/" + c.org + "/" + c.name)
    if prac is None or prac["role"] != "doctor":
        ctx.fail("UNAUTHORIZED_PRESCRIBER", "no doctor " + c.name + " registered at " + c.org)
    if not prac["licence_active"]:
        ctx.fail("UNAUTHORIZED_PRESCRIBER", "the doctor's licence is not active")
    if not prac["internet_practice"]:
        ctx.fail("UNAUTHORIZED_PRESCRIBER", "the doctor is not authorised for internet practice")
    if prac["practice_years"] < MIN_PRACTICE_YEARS:
        ctx.fail("PRESCRIBER_NOT_ELIGIBLE", "at least 3 years of independent practice needed")
    return prac


def _check_follow_up(ctx: Context, content: dict, enrol: dict, pseudonym: str) -> str:
    icd10 = content.get("diagnosis")
    if not _is_id(icd10, 16):
        ctx.fail("BAD_CONTENT", "content diagnosis must be an ICD-10 code")
    if content.get("first_visit", False) is not False:
        ctx.fail("NOT_FOLLOW_UP", "first visits are never allowed online")
    dx_key = ctx.transient("dx_key")
    if not _is_hex(dx_key, 64, 64):
        ctx.fail("BAD_TRANSIENT", "transient dx_key (64 lower-case hex) is required")
    tag = ctx.hmac_sha256_hex(dx_key, pseudonym + "|" + icd10)
    today = _date_str(ctx.timestamp_ms)
    now = ctx.timestamp_ms
    for dx in enrol["diagnoses"]:
        recorded = dx.get("recorded_ms", now)
        if dx["tag"] == tag and dx["physical"] and dx["date"] <= today and recorded < now:
            return tag
    ctx.fail("NOT_FOLLOW_UP", "no earlier physical diagnosis with the same ICD-10 code")
    return tag


def _check_drugs(ctx: Context, content: dict) -> list:
    drugs = content.get("drugs")
    if not isinstance(drugs, list) or len(drugs) == 0:
        ctx.fail("BAD_CONTENT", "content drugs must be a non-empty list")
    if len(drugs) > MAX_ITEMS:
        ctx.fail("TOO_MANY_ITEMS", "at most 5 drug lines per prescription")
    found = []
    for line in drugs:
        if not isinstance(line, dict):
            ctx.fail("BAD_CONTENT", "each drug line is an object")
        drug = _drug(ctx, line.get("code"))
        if len(drug) == 0:
            ctx.fail("UNKNOWN_DRUG", "drug " + str(line.get("code")) + " is not in the formulary")
        if not _is_int(line.get("qty"), 1, MAX_QTY):
            ctx.fail("QUANTITY_LIMIT", "each drug line needs a quantity of 1-1000 boxes")
        found.append(drug)
    for drug in found:
        if drug["controlled"] in FORBIDDEN_CLASSES:
            ctx.fail(
                "FORBIDDEN_DRUG_CLASS", drug["controlled"] + " drugs are never prescribed online"
            )
    return found


def _check_supply(ctx: Context, content: dict, found: list) -> dict:
    days = content.get("days")
    long_rx = content.get("long_rx", False)
    max_fills = content.get("max_fills", 1)
    interval = content.get("fill_interval_days", 0)
    if not _is_int(days, 1, MAX_INV) or not isinstance(long_rx, bool):
        ctx.fail("BAD_CONTENT", "content days (a positive integer) and long_rx (bool) are required")
    if not _is_int(max_fills, 1, MAX_FILLS) or not _is_int(interval, 0, 366):
        ctx.fail("BAD_CONTENT", "max_fills must be 1-12 and fill_interval_days 0-366")
    if max_fills > 1 and interval < 1:
        ctx.fail("BAD_CONTENT", "repeat fills need fill_interval_days >= 1")
    for line in content["drugs"]:
        line_days = line.get("days", days)
        if not _is_int(line_days, 1, days):
            ctx.fail("QUANTITY_LIMIT", "a drug line's days exceed the prescription's days")
    total = days * max_fills
    if not long_rx:
        if total > ORDINARY_MAX_DAYS:
            ctx.fail("QUANTITY_LIMIT", "an ordinary prescription covers at most 7 days")
    else:
        if _is_blank(content.get("chronic_reason", "")):
            ctx.fail("QUANTITY_LIMIT", "a long prescription needs the chronic reason")
        if total > LONG_ASSESSED_MAX_DAYS:
            ctx.fail("QUANTITY_LIMIT", "a long prescription covers at most 84 days")
        if total > LONG_MAX_DAYS:
            if _is_blank(content.get("stability_assessment", "")):
                ctx.fail("QUANTITY_LIMIT", "29-84 days need a recorded stability assessment")
            if content.get("patient_confirmed", False) is not True:
                ctx.fail("QUANTITY_LIMIT", "29-84 days need the patient's confirmation")
    _check_long_rx_classes(ctx, _long_supply(long_rx, days, max_fills), found)
    return {"days": days, "long_rx": long_rx, "max_fills": max_fills, "interval": interval}


def _long_supply(long_rx: bool, days: int, max_fills: int) -> bool:
    """A long prescription, or a supply beyond an ordinary prescription's 7 days."""
    return long_rx or days * max_fills > ORDINARY_MAX_DAYS


def _check_long_rx_classes(ctx: Context, long_supply: bool, found: list) -> None:
    """A supply longer than an ordinary prescription's carries no drug of the excluded classes."""
    if long_supply:
        for drug in found:
            if drug["controlled"] in LONGRX_EXCLUDED:
                ctx.fail(
                    "LONGRX_EXCLUDED_CLASS",
                    drug["controlled"] + " drugs are not allowed on a long prescription",
                )


def _claim_subset(rx_id: str, content: dict) -> dict:
    lines = []
    for line in content["drugs"]:
        lines.append({"code": line["code"], "qty": line["qty"]})
    return {"diagnosis": content["diagnosis"], "lines": lines, "rx_id": rx_id}


def issue(
    ctx: Context,
    rx_id: str,
    patient: str,
    ciphertext: str,
    commitment: str,
    keys: dict,
    claim_ciphertext: str,
    claim_commitment: str,
    claim_keys: dict,
    pharmacy: str,
) -> dict:
    """Issue an internet follow-up prescription (doctor). Transient: content, salt,
    claim_salt, dx_key. ``keys`` = {"patient": wrapped, <own hospital org>: wrapped
    [, <pharmacy>: wrapped]}; ``claim_keys`` = {<patient's insurer>: wrapped}; pharmacy ""
    leaves it with the hospital's own pharmacy until routed."""
    if not _is_id(rx_id, 64):
        ctx.fail("BAD_ARGUMENTS", "rx_id must be 1-64 chars of [A-Za-z0-9-_.]")
    if not _is_hex(patient, 64, 64):
        ctx.fail("BAD_ARGUMENTS", "patient must be a 64-hex pseudonym, never a name or id")
    if not _is_blob(ciphertext) or not _is_blob(claim_ciphertext):
        ctx.fail("BAD_ARGUMENTS", "ciphertexts are non-empty base64 strings <= 256 KiB")
    if not _is_hex(commitment, 64, 64) or not _is_hex(claim_commitment, 64, 64):
        ctx.fail("BAD_ARGUMENTS", "commitments are 64 lower-case hex chars")
    if not isinstance(keys, dict) or not isinstance(claim_keys, dict):
        ctx.fail("BAD_ARGUMENTS", "keys and claim_keys map party -> wrapped key")
    if not isinstance(pharmacy, str):
        ctx.fail("BAD_ARGUMENTS", "pharmacy is an org id or empty")
    prac = _check_prescriber(ctx)
    # after the prescriber: only a doctor learns that an id exists (README: existence)
    if ctx.get("rx/" + rx_id) is not None:
        ctx.fail("DUPLICATE_RX", "prescription " + rx_id + " already exists")
    hospital = ctx.caller.org
    content = _verify_content(ctx, rx_id, commitment)
    if content.get("patient") != patient:
        ctx.fail("BAD_CONTENT", "content patient differs from the patient pseudonym argument")
    enrol = ctx.get_from("registry", "patient/" + patient)
    if enrol is None:
        ctx.fail("UNKNOWN_PATIENT", "patient is not enrolled")
    dx_tag = _check_follow_up(ctx, content, enrol, patient)
    found = _check_drugs(ctx, content)
    supply = _check_supply(ctx, content, found)
    valid_days = content.get("valid_days", 1)
    if not _is_int(valid_days, 1, MAX_VALID_DAYS):
        ctx.fail("VALIDITY_LIMIT", "validity is the day of issue, extendable to at most 3 days")
    info = content.get("patient_info")
    if not isinstance(info, dict):
        ctx.fail("BAD_CONTENT", "content patient_info with birth_date is required")
    birth = _parse_date(info.get("birth_date"))
    if len(birth) == 0:
        ctx.fail("BAD_CONTENT", "patient_info birth_date must be a real date YYYY-MM-DD")
    today = _civil(ctx.timestamp_ms)
    if birth > today:
        ctx.fail("BAD_CONTENT", "patient_info birth_date is after the day of issue")
    if _age_years(birth, today) < GUARDIAN_AGE:
        if _is_blank(info.get("guardian", "")):
            ctx.fail("GUARDIAN_REQUIRED", "a patient under 6 needs a guardian present")
    claim_salt = ctx.transient("claim_salt")
    if not _is_hex(claim_salt, 32, 128):
        ctx.fail("BAD_TRANSIENT", "transient claim_salt must be 32-128 lower-case hex chars")
    claim_text = ctx.canonical_json(_claim_subset(rx_id, content))
    if ctx.sha256_hex(claim_salt + claim_text) != claim_commitment:
        ctx.fail("HASH_MISMATCH", "claim subset does not match the claim commitment")
    # grants: exactly the patient, the issuing hospital and the optional routed pharmacy
    allowed = ["patient", hospital]
    if pharmacy != "":
        _require_active_pharmacy(ctx, pharmacy)
        allowed.append(pharmacy)
    for party in allowed:
        if not _is_blob(keys.get(party)):
            ctx.fail("BAD_ARGUMENTS", "a wrapped key for " + party + " is required")
    for party in sorted(keys.keys()):
        if party not in allowed:
            ctx.fail("BAD_ARGUMENTS", "unexpected key grant for " + party + " at issue")
    acct = ctx.get_from("settlement", "acct/" + patient)
    if acct is None:
        ctx.fail("NO_ACCOUNT", "the patient's insurer has not opened her account")
    insurer = acct["insurer"]
    if not _is_blob(claim_keys.get(insurer)):
        ctx.fail("BAD_ARGUMENTS", "claim_keys must hold exactly the patient's insurer " + insurer)
    for party in claim_keys.keys():  # (+ the issuing hospital's copy: README "Moving an account")
        if party != insurer and (party != hospital or not _is_blob(claim_keys[party])):
            ctx.fail("BAD_ARGUMENTS", "claim_keys must hold exactly the patient's insurer " + insurer
                     + " (and the issuing hospital's copy)")
    now = ctx.timestamp_ms
    day_start = ((now + TZ_MS) // DAY_MS) * DAY_MS - TZ_MS
    valid_end = day_start + valid_days * DAY_MS - 1
    rx = {
        "rx_id": rx_id,
        "patient": patient,
        "hospital": hospital,
        "hospital_level": ctx.caller.hospital_level,
        "doctor": ctx.caller.name,
        "dr_code": prac["code"],
        "insurer": insurer,
        "status": "ISSUED",
        "issued_ms": now,
        "valid_days": valid_days,
        "valid_end_ms": valid_end,
        "long_rx": supply["long_rx"],
        "days": supply["days"],
        "max_fills": supply["max_fills"],
        "fill_interval_days": supply["interval"],
        "fills": 0,
        "last_fill_ms": 0,
        "delivered_fills": 0,
        "pharmacy": pharmacy,
        "lock": None,
        "review": None,
        "revocation": None,
        "ciphertext": ciphertext,
        "commitment": commitment,
        "claim_ciphertext": claim_ciphertext,
        "claim_commitment": claim_commitment,
        "dx_tag": dx_tag,
        "step_count": 0,
    }
    n = 0
    for party in allowed:
        kind = "hospital"
        if party == "patient":
            kind = "patient"
        elif party == pharmacy:
            kind = "pharmacy"
        _grant(ctx, rx_id, party, kind, keys[party], n, None, claim_keys.get(party, ""))
        n = n + 1
    _grant(ctx, rx_id, insurer, "insurer", claim_keys[insurer], n)
    ctx.put("pidx/" + patient + "/" + rx_id, {"rx_id": rx_id})
    _save(ctx, rx, "issue", {"pharmacy": pharmacy, "valid_end_ms": valid_end})
    return {"rx_id": rx_id, "status": "ISSUED", "valid_end_ms": valid_end}


# ---------------------------------------------------------------- review, routing


def review(ctx: Context, rx_id: str, approve: bool, reason: str, note_ct: str = "", note_epoch: int = 0) -> dict:
    """Approve or reject (pharmacist of the issuing hospital or of the routed pharmacy).

    A rejection carries a code of REJECT_REASONS; an approval carries reason "". The
    optional ``note_ct`` is the client-encrypted note (base64) under the note key in force,
    ``note_epoch`` (0: the record key; README "Note keys")."""
    rx = _rx(ctx, rx_id)
    c = ctx.caller
    if c.org == rx["hospital"] and c.name == rx["doctor"]:
        ctx.fail("SOD_VIOLATION", "the prescriber may not review their own prescription")
    prac = _require_pharmacist(ctx)
    if prac["code"] == rx["dr_code"]:
        ctx.fail("SOD_VIOLATION", "the prescriber may not review their own prescription")
    if c.org != rx["hospital"] and c.org != rx["pharmacy"]:
        ctx.fail("NOT_ROUTED", "only the issuing hospital or the routed pharmacy reviews")
    if c.org != rx["hospital"]:
        # as for lock and dispense: a pharmacy whose registration is inactive does not approve
        # (an approval of its pharmacist would let any pharmacy dispense after a re-route)
        _require_active_pharmacy(ctx, c.org)
    if not isinstance(approve, bool) or not isinstance(reason, str):
        ctx.fail("BAD_ARGUMENTS", "approve is a boolean, reason a string")
    if approve and len(reason) > 0:
        ctx.fail("BAD_ARGUMENTS", "an approval carries no reason")
    note = _note(ctx, rx, note_ct, note_epoch)
    if rx["status"] == "REVOKED":
        ctx.fail("REVOKED", "the prescription was revoked")
    if rx["status"] in TERMINAL:
        ctx.fail(rx["status"], "the prescription is " + rx["status"])
    if rx["status"] != "ISSUED":
        ctx.fail("ALREADY_REVIEWED", "the prescription was already reviewed")
    if ctx.timestamp_ms > rx["valid_end_ms"]:
        ctx.fail("EXPIRED", "the prescription's validity ended")
    if not approve:
        _reason_code(ctx, reason, REJECT_REASONS, "a rejection")
    decision = "APPROVED"
    if not approve:
        decision = "REJECTED"
    rx["status"] = decision
    rx["review"] = {"decision": decision, "by": c.name, "org": c.org, "time_ms": ctx.timestamp_ms, "reason": reason}
    detail = {"decision": decision, "reason": reason}
    for k in note:
        rx["review"][k] = note[k]
        detail[k] = note[k]
    _save(ctx, rx, "review", detail)
    return {"rx_id": rx_id, "status": decision}


def route(
    ctx: Context, rx_id: str, pharmacy: str, wrapped_key: str, note_keys: dict | None = None,
    new_note_keys: dict | None = None,
) -> dict:
    """Route or re-route to a pharmacy: grants it, revokes the previous pharmacy's grant.
    ``note_keys``: the note keys made so far, each wrapped for it (README "Note keys").
    ``new_note_keys``: on a re-route, a fresh note key wrapped for every reader left (the new
    pharmacy in, the previous one out), the key of every later note: the pharmacy routed away
    keeps the keys it fetched, never this one. None: no key is made (the previous client, or
    one that could not reach a reader); {} on a first route (nobody is routed away).

    Callers: the issuing hospital's doctor/pharmacist/admin, or the patient."""
    rx = _rx(ctx, rx_id)
    c = ctx.caller
    hospital_staff = c.org == rx["hospital"] and c.role in ("doctor", "pharmacist", "admin")
    if not hospital_staff and not _is_patient(ctx, rx):
        ctx.fail("ACCESS_DENIED", "only the issuing hospital or the patient routes")
    if rx["status"] in TERMINAL:
        ctx.fail(rx["status"], "the prescription is " + rx["status"])
    dropped = ""
    if rx["lock"] is not None:
        holder = rx["lock"]["org"]
        if holder != rx["pharmacy"] or _pharmacy_active(ctx, holder):
            ctx.fail("ALREADY_LOCKED", "locked by " + holder + "; release it first")
        # the routed pharmacy's registration went inactive while it held the lock: it can no
        # longer dispense, so its lock does not hold the prescription hostage
        dropped = holder
        _unlock(rx)
    if rx["fills"] >= rx["max_fills"]:
        ctx.fail("ALREADY_DISPENSED", "nothing left to dispense")
    if not _is_id(pharmacy, 32):
        ctx.fail("BAD_ARGUMENTS", "pharmacy must be an org id")
    _require_active_pharmacy(ctx, pharmacy)
    if pharmacy == rx["pharmacy"]:
        ctx.fail("ALREADY_ROUTED", "already routed to " + pharmacy)
    if not _is_blob(wrapped_key):
        ctx.fail("BAD_ARGUMENTS", "a wrapped key for the new pharmacy is required")
    keys = _wrapped_map(ctx, note_keys, _epochs(rx))  # exactly 1..e: the caller's view is current
    old = rx["pharmacy"]
    epoch = 0
    others = []  # the readers left but the new pharmacy: their grants get the new key
    if old == "":
        _wrapped_map(ctx, new_note_keys, [], "new_note_keys")  # a first route makes no key
    elif new_note_keys is not None:
        names = [pharmacy]
        for g in _readers(ctx, rx_id):
            if g["party"] != old and g["party"] != pharmacy:
                others.append(g)
                names.append(g["party"])
        epoch = _next_note_key(ctx, rx, new_note_keys, names, "new_note_keys", "route without new_note_keys")
    n = 0
    if old != "":
        _drop_grant(ctx, rx_id, old, n)
        n = n + 1
    if epoch > 0:
        keys = dict(keys)
        keys[str(epoch)] = new_note_keys[pharmacy]
    _grant(ctx, rx_id, pharmacy, "pharmacy", wrapped_key, n, keys)
    rx["pharmacy"] = pharmacy
    detail = {"pharmacy": pharmacy, "previous": old}
    if dropped != "":
        detail["dropped_lock"] = dropped
    if epoch > 0:
        _audit(ctx, rx_id, n + 1, "GRANT", pharmacy, "note_key")
        _hand_out(ctx, rx, epoch, new_note_keys, others, n + 2)
        detail["note_epoch"] = epoch
    _save(ctx, rx, "route", detail)
    return {"rx_id": rx_id, "pharmacy": pharmacy, "previous": old}


# ---------------------------------------------------------------- lock, dispense, deliver


def lock(ctx: Context, rx_id: str) -> dict:
    """Lock for dispensing (pharmacist of the routed pharmacy); exactly one lock holder."""
    rx = _rx(ctx, rx_id)
    c = ctx.caller
    _require_pharmacist(ctx)
    _check_dispensable(ctx, rx)
    if rx["lock"] is not None:
        ctx.fail("ALREADY_LOCKED", "locked by " + rx["lock"]["org"])
    if c.org != _effective_pharmacy(rx):
        ctx.fail("NOT_ROUTED", "the prescription is routed to another pharmacy")
    if rx["pharmacy"] != "":
        _require_active_pharmacy(ctx, rx["pharmacy"])
    # the taking transaction is the lock's token (lock_id): a release naming it drops this
    # lock only, never one another call of the same pharmacy took after it
    rx["lock"] = {"org": c.org, "by": c.name, "time_ms": ctx.timestamp_ms, "tx_id": ctx.tx_id}
    rx["status"] = "LOCKED"
    _save(ctx, rx, "lock", {"fill": rx["fills"] + 1})
    return {"rx_id": rx_id, "status": "LOCKED", "fill": rx["fills"] + 1, "lock_id": ctx.tx_id}


def _check_token_shape(ctx: Context, lock_id: str) -> None:
    """``lock_id`` is "" (no token) or the 64 lower-case hex ``lock`` returned."""
    # (the signature makes it a str; strip checks the 64 characters in one metered call)
    if lock_id != "" and (len(lock_id) != 64 or lock_id.strip(HEX) != ""):
        ctx.fail("BAD_ARGUMENTS", "lock_id must be the 64 lower-case hex token lock returned, or empty")


def _check_token(ctx: Context, rx: dict, lock_id: str, verb: str) -> None:
    """With a token, the caller's pharmacy's lock (checked before) must be the lock it names:
    one taken since by another call, or one taken before locks had tokens, is ALREADY_LOCKED."""
    if lock_id == "":
        return
    held = ""
    if "tx_id" in rx["lock"]:  # absent on a lock taken before locks had tokens
        held = rx["lock"]["tx_id"]
    if held == "":
        ctx.fail("ALREADY_LOCKED", "held by another lock (taken before lock tokens): " + verb + " it without lock_id")
    if held != lock_id:
        ctx.fail("ALREADY_LOCKED", "held by another lock of " + ctx.caller.org + ", not lock " + lock_id)


def release(ctx: Context, rx_id: str, lock_id: str = "") -> dict:
    """Release a lock (a pharmacist of the lock-holding pharmacy): with ``lock_id`` only that
    lock, without it whichever lock the pharmacy holds (README "Lock tokens")."""
    _check_token_shape(ctx, lock_id)
    rx = _rx(ctx, rx_id)
    c = ctx.caller
    _require_pharmacist(ctx)
    if rx["lock"] is None:
        ctx.fail("NOT_LOCKED", "the prescription is not locked")
    if rx["lock"]["org"] != c.org:
        ctx.fail("ALREADY_LOCKED", "locked by another pharmacy")
    _check_token(ctx, rx, lock_id, "release")
    detail = {"lock_id": ""}  # the lock it dropped ("": one taken before locks had tokens)
    if "tx_id" in rx["lock"]:
        detail["lock_id"] = rx["lock"]["tx_id"]
    _unlock(rx)
    _save(ctx, rx, "release", detail)
    return {"rx_id": rx_id, "status": rx["status"]}


def _trace_hashes(ctx: Context, boxes: int) -> list:
    """Keyed hashes ``hmac_sha256_hex(trace_key, "trace|" + code)`` of the transient box
    trace codes (at most one per box), each usable once; no raw code reaches a block or the
    state. The first key used is recorded (``tracekey``), every later one must match it."""
    codes = ctx.transient("trace_codes")
    if codes is None:
        codes = []
    if not isinstance(codes, list) or len(codes) > boxes:
        ctx.fail("BAD_TRANSIENT", "transient trace_codes: at most one per box (" + str(boxes) + " boxes)")
    if len(codes) == 0:
        return []
    key = ctx.transient("trace_key")
    if not _is_hex(key, 64, 64):
        ctx.fail("BAD_TRANSIENT", "transient trace_key (64 lower-case hex) is required")
    check = ctx.sha256_hex("rxchain/trace-key-check|" + key)
    known = ctx.get("tracekey")
    if known is None:
        ctx.put("tracekey", {"check": check, "tx_id": ctx.tx_id})
    elif known["check"] != check:
        ctx.fail("BAD_TRANSIENT", "trace_key is not the consortium's trace-code key")
    hashes = []
    n = 0
    for code in codes:
        n = n + 1
        if not _is_id(code, MAX_TRACE_CODE):
            ctx.fail("BAD_TRANSIENT", "trace codes are 1-64 chars of [A-Za-z0-9-_.]")
        h = ctx.hmac_sha256_hex(key, "trace|" + code)
        if h in hashes or ctx.get("trace/" + h) is not None:
            ctx.fail("TRACE_CODE_REUSED", "trace code #" + str(n) + " was already used")
        hashes.append(h)
    return hashes


def dispense(ctx: Context, rx_id: str, lock_id: str = "") -> dict:
    """Dispense one fill (pharmacist of the lock-holding pharmacy). Transient: content, salt
    (re-checked against the commitment), trace_codes and trace_key (``_trace_hashes``).
    With ``lock_id`` only under that lock, without it under whichever lock the pharmacy
    holds (README "Lock tokens")."""
    _check_token_shape(ctx, lock_id)
    rx = _rx(ctx, rx_id)
    c = ctx.caller
    _require_pharmacist(ctx)
    _check_dispensable(ctx, rx)
    if rx["lock"] is None:
        if c.org != _effective_pharmacy(rx):
            ctx.fail("NOT_ROUTED", "the prescription is routed to another pharmacy")
        ctx.fail("NOT_LOCKED", "lock the prescription before dispensing")
    if rx["lock"]["org"] != c.org:
        ctx.fail("ALREADY_LOCKED", "locked by " + rx["lock"]["org"])
    _check_token(ctx, rx, lock_id, "dispense")
    if c.org != _effective_pharmacy(rx):
        ctx.fail("NOT_ROUTED", "the prescription is routed to another pharmacy")
    if rx["pharmacy"] != "":
        _require_active_pharmacy(ctx, rx["pharmacy"])
    under = ""  # the lock this fill was dispensed under ("": one taken before lock tokens)
    if "tx_id" in rx["lock"]:
        under = rx["lock"]["tx_id"]
    content = _verify_content(ctx, rx_id, rx["commitment"])
    # the issue's drug rules again, on the formulary as of this dispense (a drug reclassified
    # since issue; the supply cannot have changed)
    found = _check_drugs(ctx, content)
    _check_long_rx_classes(ctx, _long_supply(rx["long_rx"], rx["days"], rx["max_fills"]), found)
    boxes = 0
    for line in content["drugs"]:
        boxes = boxes + line["qty"]
    fill = rx["fills"] + 1
    hashes = _trace_hashes(ctx, boxes)
    for h in hashes:
        ctx.put("trace/" + h, {"rx_id": rx_id, "fill": fill, "tx_id": ctx.tx_id})
    ctx.put(
        _disp_key(rx_id, fill),
        {
            "rx_id": rx_id,
            "fill": fill,
            "pharmacy": c.org,
            "pharmacist": c.name,
            "time_ms": ctx.timestamp_ms,
            "tx_id": ctx.tx_id,
            "boxes": boxes,
            "trace_codes": len(hashes),
            "delivered": False,
        },
    )
    rx["fills"] = fill
    rx["last_fill_ms"] = ctx.timestamp_ms
    rx["lock"] = None
    rx["status"] = "DISPENSED"
    _save(ctx, rx, "dispense", {"fill": fill, "boxes": boxes, "trace_codes": len(hashes), "lock_id": under})
    left = rx["max_fills"] - fill
    return {"rx_id": rx_id, "status": "DISPENSED", "fill": fill, "fills_left": left}


def deliver(ctx: Context, rx_id: str, fill: int = 0) -> dict:
    """The courier of the dispensing pharmacy confirms the hand-over of fill ``fill`` (0: the
    latest fill its pharmacy dispensed, else the latest fill: a re-run is ALREADY_DELIVERED);
    a fill the issuing hospital's own pharmacy dispensed (hospitals have no couriers): its
    pharmacist, at the counter. ``delivered_fills`` counts the fills handed over."""
    rx = _rx(ctx, rx_id)
    c = ctx.caller
    if c.role != "courier" and not (c.role == "pharmacist" and c.org == rx["hospital"]):
        ctx.fail("WRONG_ROLE", "only a courier (or the hospital pharmacy's pharmacist) confirms delivery")
    if c.role == "pharmacist":
        _require_pharmacist(ctx)  # at the counter: a licensed pharmacist (UNAUTHORIZED)
    if rx["fills"] == 0:
        ctx.fail("NOT_DISPENSED", "nothing was dispensed yet")
    if rx["status"] == "ERASED":
        ctx.fail("ERASED", "the prescription was erased")
    if not _is_int(fill, 0, rx["fills"]):
        ctx.fail("BAD_ARGUMENTS", "fill must be a dispensed fill 1-" + str(rx["fills"]) + " (0: the default)")
    if fill == 0:
        fill = _latest_of(ctx, rx, c.org)
        if fill == 0:
            fill = rx["fills"]
    key = _disp_key(rx_id, fill)
    disp = ctx.get(key)
    if disp["pharmacy"] != c.org:
        ctx.fail("ACCESS_DENIED", "the courier must belong to the pharmacy that dispensed fill " + str(fill))
    if disp["delivered"]:
        ctx.fail("ALREADY_DELIVERED", "fill " + str(fill) + " was already delivered")
    disp["delivered"] = True
    disp["delivered_ms"] = ctx.timestamp_ms
    disp["courier"] = c.name
    ctx.put(key, disp)
    done = 0
    n = rx["fills"]
    while n > 0:
        if n == fill or ctx.get(_disp_key(rx_id, n))["delivered"]:
            done = done + 1
        n = n - 1
    rx["delivered_fills"] = done
    last = fill == rx["fills"] or ctx.get(_disp_key(rx_id, rx["fills"]))["delivered"]
    if rx["fills"] >= rx["max_fills"] and last:
        rx["status"] = "DELIVERED"  # the last fill handed over (an earlier one may follow)
    _save(ctx, rx, "deliver", {"fill": fill})
    return {"rx_id": rx_id, "status": rx["status"], "fill": fill}


# ---------------------------------------------------------------- revoke, expire, erase


def revoke(ctx: Context, rx_id: str, reason: str, note_ct: str = "", note_epoch: int = 0) -> dict:
    """Revoke before any dispensing: the issuing doctor or the hospital's pharmacy dept.

    ``reason`` is a code of REVOKE_REASONS; ``note_ct`` the optional client-encrypted note
    under note key ``note_epoch`` (as ``review``)."""
    rx = _rx(ctx, rx_id)
    c = ctx.caller
    is_doctor = c.org == rx["hospital"] and c.name == rx["doctor"] and c.role == "doctor"
    is_dept = c.org == rx["hospital"] and c.role == "pharmacist" and _pharmacist_licence(ctx) is not None
    if not is_doctor and not is_dept:
        ctx.fail("ACCESS_DENIED", "only the issuing doctor or the hospital pharmacy revokes")
    if rx["status"] == "REVOKED":
        ctx.fail("REVOKED", "already revoked")
    if rx["status"] in TERMINAL:
        ctx.fail(rx["status"], "the prescription is " + rx["status"] + " (a final state)")
    if rx["fills"] > 0:
        ctx.fail("REVOKE_NOT_ALLOWED", "the prescription was already dispensed")
    code = _reason_code(ctx, reason, REVOKE_REASONS, "a revocation")
    note = _note(ctx, rx, note_ct, note_epoch)
    rx["status"] = "REVOKED"
    rx["lock"] = None
    rx["revocation"] = {"by": c.name, "org": c.org, "time_ms": ctx.timestamp_ms, "reason": code}
    detail = {"reason": code}
    for k in note:
        rx["revocation"][k] = note[k]
        detail[k] = note[k]
    _save(ctx, rx, "revoke", detail)
    return {"rx_id": rx_id, "status": "REVOKED"}


def expire(ctx: Context, rx_id: str) -> dict:
    """Mark an undispensable prescription EXPIRED once its validity ended (any member)."""
    rx = _rx(ctx, rx_id)
    if rx["status"] in TERMINAL or rx["status"] == "DELIVERED":
        ctx.fail(rx["status"], "the prescription is " + rx["status"])
    if rx["fills"] >= rx["max_fills"]:
        ctx.fail("ALREADY_DISPENSED", "all fills were dispensed")
    if ctx.timestamp_ms <= _fill_deadline(rx):
        ctx.fail("NOT_EXPIRED", "still valid until " + _iso_utc(_fill_deadline(rx)))
    rx["status"] = "EXPIRED"
    rx["lock"] = None
    _save(ctx, rx, "expire", {})
    return {"rx_id": rx_id, "status": "EXPIRED"}


def erase(ctx: Context, rx_id: str, retention_days: int) -> dict:
    """Crypto-shredding after retention (issuing hospital admin): destroys every wrapped
    key and the ciphertexts, keeps a tombstone with the commitment and the status."""
    rx = _rx(ctx, rx_id)
    c = ctx.caller
    if c.org != rx["hospital"] or c.role != "admin":
        ctx.fail("ACCESS_DENIED", "only the issuing hospital's admin erases")
    if not _is_int(retention_days, MIN_RETENTION_DAYS, 36500):
        ctx.fail("BAD_ARGUMENTS", "retention_days must be 365-36500 (prescriptions are kept >= 1 year)")
    if rx["status"] == "ERASED":
        ctx.fail("ERASED", "already erased")
    if ctx.timestamp_ms < rx["issued_ms"] + retention_days * DAY_MS:
        ctx.fail("RETENTION_NOT_ELAPSED", "the retention period has not elapsed")
    n = 0
    for g in _grants(ctx, rx_id):
        _drop_grant(ctx, rx_id, g["party"], n)
        n = n + 1
    rx["ciphertext"] = ""
    rx["claim_ciphertext"] = ""
    if rx["review"] is not None and "note_ct" in rx["review"]:
        rx["review"]["note_ct"] = ""
    if rx["revocation"] is not None and "note_ct" in rx["revocation"]:
        rx["revocation"]["note_ct"] = ""
    rx["status"] = "ERASED"
    rx["lock"] = None
    _save(ctx, rx, "erase", {"grants_destroyed": n})
    return {"rx_id": rx_id, "status": "ERASED", "grants_destroyed": n}


# ---------------------------------------------------------------- keys, consent


def get_key(ctx: Context, rx_id: str) -> dict:
    """Return the caller's wrapped key (submitted tx: always audited). A denial writes a
    DENIED audit record and returns {"error": "NO_KEY_GRANT", ...} so the record commits --
    for anyone asking, party or not (DOMAIN.md section 4: every denied access is audited)."""
    rx = _rx(ctx, rx_id)
    c = ctx.caller
    party = c.org
    if _is_patient(ctx, rx):
        party = "patient"
    grant = ctx.get("grant/" + rx_id + "/" + party)
    ok = grant is not None
    if ok and party != "patient":
        ok = c.role in READ_ROLES.get(grant["kind"], ())
    if not ok:
        _audit(ctx, rx_id, 0, "KEY_FETCH", party, "DENIED")
        ctx.emit("rx.key_denied", {"rx_id": rx_id, "org": c.org, "role": c.role})
        return {"error": "NO_KEY_GRANT", "message": c.org + "/" + c.role + " holds no key grant"}
    _audit(ctx, rx_id, 0, "KEY_FETCH", party, "GRANTED")
    ctx.emit("rx.key_fetch", {"rx_id": rx_id, "org": c.org, "role": c.role})
    ciphertext = rx["ciphertext"]
    commitment = rx["commitment"]
    if grant["kind"] == "insurer":
        ciphertext = rx["claim_ciphertext"]
        commitment = rx["claim_commitment"]
    out = {
        "rx_id": rx_id,
        "party": party,
        "kind": grant["kind"],
        "wrapped_key": grant["wrapped_key"],
        "ciphertext": ciphertext,
        "commitment": commitment,
        "note_epoch": rx.get("note_epoch", 0),
        "note_keys": grant.get("note_keys", {}),
    }
    if c.org_kind == "insurer" and len(_former_insurer(ctx, rx)) > 0:
        # an insurer she left: no count of the note keys made, one per re-route and withdrawal
        # of consent -- those after the move too (as show); its claim work needs none (its
        # claim key opens its reversal notes; it writes no review or revocation note)
        del out["note_epoch"]
    if grant["kind"] == "hospital" and "claim_wrapped_key" in grant and c.role == "doctor":
        # the claim key wrapped at issue (context ".../claim") for the issuing doctor: a doctor
        # of the hospital hands it to a later insurer of record (grant_claim_key, doctors only);
        # never served to its pharmacists, who read the grant's record key too (README "Moving
        # an account")
        out["claim_wrapped_key"] = grant["claim_wrapped_key"]
    if party == "patient" or grant["kind"] == "hospital":
        # the routers (and the patient withdrawing a consent) wrap a new note key for the
        # readers: the patient, the issuing hospital and the routed pharmacy, the consents
        # (every party reads these in the trace's steps already)
        out["readers"] = []
        for g in _readers(ctx, rx_id):
            out["readers"].append(g["party"])
        out["pharmacy"] = rx["pharmacy"]
    return out


def grant_consent(ctx: Context, rx_id: str, org: str, wrapped_key: str, note_keys: dict | None = None) -> dict:
    """The patient grants another organisation read access (its wrapped key; ``note_keys``:
    the note keys made so far, each wrapped for it)."""
    rx = _patients_rx(ctx, rx_id, "grants consent")
    if rx["status"] == "ERASED":
        ctx.fail("ERASED", "the prescription was erased")
    if not _is_id(org, 32) or org == "patient" or not _is_blob(wrapped_key):
        ctx.fail("BAD_ARGUMENTS", "an org id and its wrapped key are required")
    old = ctx.get("grant/" + rx_id + "/" + org)
    if old is not None and old["kind"] != "consent":
        ctx.fail("ALREADY_GRANTED", org + " already holds a " + old["kind"] + " grant")
    if old is None:
        held = 0
        for g in _grants(ctx, rx_id):
            if g["kind"] == "consent":
                held = held + 1
        if held >= MAX_CONSENTS:  # each grant is work for every later withdrawal, route and erase
            ctx.fail("LIMIT_EXCEEDED", "a prescription holds at most " + str(MAX_CONSENTS) + " consent grants")
    _grant(ctx, rx_id, org, "consent", wrapped_key, 0, _wrapped_map(ctx, note_keys, _epochs(rx)))
    _save(ctx, rx, "consent", {"org": org})
    return {"rx_id": rx_id, "org": org, "granted": True}


def grant_claim_key(ctx: Context, rx_id: str, org: str, wrapped_key: str) -> dict:
    """A holder of the prescription's claim key wraps it for ``org``, an insurer of record of
    fills dispensed after her account moved (settlement's ``cover/{rx_id}`` names it: her
    insurer at their dispense, which settles them and checks the claim subset against the
    claim commitment). Holders: a clerk of an insurer holding it (an ``insurer`` grant), or a
    doctor of the issuing hospital when the issue kept the hospital a copy (its grant's
    ``claim_wrapped_key``). A caller holding no claim key of the prescription gets the missing
    id's answer."""
    _check_rx_id(ctx, rx_id)
    c = ctx.caller
    clerk = c.org_kind == "insurer" and c.role == "clerk"
    doctor = c.org_kind == "hospital" and c.role == "doctor"
    if not clerk and not doctor:
        ctx.fail("WRONG_ROLE", "a clerk of an insurer holding the claim key, or a doctor of the "
                 "issuing hospital, hands it over")
    rx = ctx.get("rx/" + rx_id)
    mine = None
    if rx is not None:
        mine = ctx.get("grant/" + rx_id + "/" + c.org)
    held = mine is not None and clerk and mine["kind"] == "insurer"
    if mine is not None and doctor:
        held = mine["kind"] == "hospital" and rx["hospital"] == c.org and "claim_wrapped_key" in mine
    if not held:
        _missing(ctx, rx_id)
    if not _is_id(org, 32) or not _is_blob(wrapped_key):
        ctx.fail("BAD_ARGUMENTS", "an insurer's org id and the claim key wrapped for it are required")
    cover = ctx.get_from("settlement", "cover/" + rx_id)
    named = False
    if cover is not None:
        for seg in cover["from"]:
            if seg["insurer"] == org:
                named = True
    if not named:
        ctx.fail("NOT_INSURER_OF_FILL", org + " insures no fill of " + rx_id + " (a move while "
                 "fills were still to dispense names the insurer taking her over)")
    if ctx.get("grant/" + rx_id + "/" + org) is not None:
        ctx.fail("ALREADY_GRANTED", org + " already holds a grant")
    _grant(ctx, rx_id, org, "insurer", wrapped_key, 0)
    _save(ctx, rx, "claim_key", {"org": org})
    return {"rx_id": rx_id, "org": org, "granted": True}


def revoke_consent(ctx: Context, rx_id: str, org: str, note_keys: dict | None = None, note_epoch: int = 0) -> dict:
    """The patient withdraws a consent grant. ``note_keys``: a new note key wrapped for every
    other reader (get_key's ``readers``), the key of every later note: ``org`` keeps the keys
    it fetched, never this one (README "Note keys"). ``note_epoch``: the number the client
    wrapped it under (0: not named), else NOTE_KEY_STALE: a re-route made a key meanwhile."""
    rx = _patients_rx(ctx, rx_id, "withdraws consent")
    old = ctx.get("grant/" + rx_id + "/" + org)
    if old is None or old["kind"] != "consent":
        ctx.fail("NO_KEY_GRANT", org + " holds no consent grant")
    if not _is_int(note_epoch, 0, MAX_NOTE_KEYS) or (note_epoch != 0 and note_keys is None):
        ctx.fail("BAD_ARGUMENTS", "note_epoch is the number (1-64) of the new note key of note_keys")
    detail = {"org": org}
    if note_keys is not None:
        readers = []
        names = []
        for g in _readers(ctx, rx_id):
            if g["party"] != org:
                readers.append(g)
                names.append(g["party"])
        epoch = _next_note_key(ctx, rx, note_keys, names, "note_keys", "withdraw without note_keys")
        if note_epoch != 0 and note_epoch != epoch:
            ctx.fail("NOTE_KEY_STALE", "the new note key is number " + str(epoch) + " (get_key)")
        _hand_out(ctx, rx, epoch, note_keys, readers, 1)
        detail["note_epoch"] = epoch
    _drop_grant(ctx, rx_id, org, 0)
    _save(ctx, rx, "consent_revoked", detail)
    return {"rx_id": rx_id, "org": org, "granted": False}


# ---------------------------------------------------------------- queries


def show(ctx: Context, rx_id: str) -> dict:
    """Public metadata (and the ciphertext) for parties allowed to see the prescription; a
    former insurer the record as of the move that ended its cover, without the fills not its
    own (_as_former_sees)."""
    rx = _party_rx(ctx, rx_id)
    former = _former_insurer(ctx, rx)
    if len(former) > 0:
        return _as_former_sees(ctx, rx, former, _former_versions(ctx, rx, former))
    return rx


AS_OF_MOVE = ("status", "pharmacy", "review", "revocation", "lock", "fills", "last_fill_ms")
UNREAD_AS_OF_MOVE = ("status", "pharmacy", "review", "revocation")  # left out without the version


def _as_former_sees(ctx: Context, rx: dict, former: list, seen: list) -> dict:
    """The record as a former insurer sees it (``former`` of _former_insurer, ``seen`` of
    _former_versions): the status, pharmacy, review, revocation, lock and fills as they stood
    before the first version stamped after the move that ended its cover (none ended it: as
    now; the peer's index holding no such version: those fields left out), its own deliveries
    since; the fill count, hand-overs and time of the latest fill capped at its own latest
    fill, no lock of a fill not its own, the status those leave; ``step`` the last step it sees
    (null: none); no ``step_count`` and no ``note_epoch`` (they count the steps, and the
    re-routes and withdrawals of consent, after the move too) (README "Moving an account")."""
    base = rx
    if former[1] >= 0:
        base = seen[1]
    view = dict(rx)
    for f in AS_OF_MOVE:
        if base is not None:
            view[f] = base[f]
        elif f in UNREAD_AS_OF_MOVE and f in view:  # (the fills: capped below, as now)
            del view[f]
    for count in ("step_count", "note_epoch"):  # how many steps, re-routes and withdrawals of
        if count in view:  # consent there were: the later ones are not its to know
            del view[count]
    view["step"] = None
    if len(seen[0]) > 0:
        view["step"] = seen[0][len(seen[0]) - 1]["value"]["step"]
    if rx["status"] == "ERASED":  # crypto-shredded: the history's notes are not served again
        for f in ("review", "revocation"):
            if view.get(f) is not None and "note_ct" in view[f]:
                view[f] = dict(view[f])
                view[f]["note_ct"] = ""
    last = 0
    for f in former[0]:
        if f <= view["fills"] and f > last:
            last = f
    changed = False
    if view["lock"] is not None and (view["fills"] + 1) not in former[0]:
        view["lock"] = None
        changed = True
    if view["delivered_fills"] > 0:  # the fills up to its own latest handed over: a later
        done = 0  # fill's hand-over counted too told of that fill
        for k in range(1, last + 1):
            disp = ctx.get(_disp_key(rx["rx_id"], k))
            if disp is not None and disp["delivered"]:
                done = done + 1
        view["delivered_fills"] = done
    if last < view["fills"]:
        view["fills"] = last
        view["last_fill_ms"] = 0
        disp = None
        if last > 0:
            disp = ctx.get(_disp_key(rx["rx_id"], last))
        if disp is not None:
            view["last_fill_ms"] = disp["time_ms"]
        changed = True
    if changed and view.get("status") in ("LOCKED", "DISPENSED", "DELIVERED"):
        view["status"] = "APPROVED"
        if last > 0 and view["delivered_fills"] >= last:
            view["status"] = "DELIVERED"
        elif last > 0:
            view["status"] = "DISPENSED"
    return view


def verify(ctx: Context, rx_id: str) -> dict:
    """Check decrypted content (transient content, salt) against the commitment: anyone
    holding it; a mismatch is HASH_MISMATCH to a party, NOT_FOUND to anyone else."""
    _check_rx_id(ctx, rx_id)
    given = _transient_content(ctx)
    rx = ctx.get("rx/" + rx_id)
    if rx is None or (given[1] != rx["commitment"] and not _can_view(ctx, rx)):
        _missing(ctx, rx_id)
    _check_content(ctx, rx_id, given, rx["commitment"])
    return {"rx_id": rx_id, "ok": True}


def trace_fills(ctx: Context, rx_id: str, hashes: list) -> dict:
    """Which fill of ``rx_id`` recorded each trace-code hash (``hmac_sha256_hex(trace_key,
    "trace|" + code)``, as ``dispense`` stores them): ``fills[i]`` is that fill, 0 for a hash
    this prescription never recorded (recorded on another one, or on none: not told apart).
    Parties. A pharmacy re-sending a dispense whose answer was lost tells its own dispense
    from another with as many codes; a recall traces a box to its fill."""
    rx = _party_rx(ctx, rx_id)
    if not isinstance(hashes, list) or len(hashes) == 0 or len(hashes) > MAX_ITEMS * MAX_QTY:
        ctx.fail("BAD_ARGUMENTS", "hashes: a list of 1-" + str(MAX_ITEMS * MAX_QTY) + " trace-code hashes")
    former = _former_insurer(ctx, rx)  # a former insurer: its own fills only (README)
    fills = []
    for h in hashes:
        if not _is_hex(h, 64, 64):
            ctx.fail("BAD_ARGUMENTS", "a trace-code hash is 64 lower-case hex")
        rec = ctx.get("trace/" + h)
        if rec is not None and rec["rx_id"] == rx_id and (len(former) == 0 or rec["fill"] in former[0]):
            fills.append(rec["fill"])
        else:
            fills.append(0)
    return {"rx_id": rx_id, "fills": fills}


def _former_insurer(ctx: Context, rx: dict) -> list:
    """[] for a caller who sees every fill of ``rx``; for a *former insurer* -- an insurer's
    member, its organisation no longer holding the patient's account, while settlement's
    ``cover/{rx_id}`` hands fills to an insurer (README "Moving an account": what an insurer
    she left sees) -- [own, cut]: the fill numbers whose insurer of record is the caller's
    organisation, and the time of the move that ended its latest cover of the prescription (-1:
    none ended it)."""
    c = ctx.caller
    if c.org_kind != "insurer":
        return []
    cover = ctx.get_from("settlement", "cover/" + rx["rx_id"])
    if cover is None:
        return []
    acct = ctx.get_from("settlement", "acct/" + rx["patient"])
    if acct is not None and acct["insurer"] == c.org:
        return []
    own = []
    for f in range(1, rx["max_fills"] + 1):
        insurer = rx["insurer"]
        for seg in cover["from"]:
            if seg["fill"] <= f:
                insurer = seg["insurer"]
        if insurer == c.org:
            own.append(f)
    cur = rx["insurer"]
    cut = -1
    named = rx["insurer"] == c.org
    for seg in cover["from"]:
        if seg["insurer"] == c.org:
            cut = -1  # its cover again from this fill
            named = True
        elif cur == c.org:
            cut = seg["ms"]
        cur = seg["insurer"]
    if cut < 0:
        # no entry ended its cover, yet she left it: a move back before the fill it was named
        # for replaced its entry, or she left after the last fill -- its view ends at the
        # latest move away from it (settlement's left/; moves from before it: the account's
        # transfers), when it insured fills or was handed the claim key for them
        if not named:
            grant = ctx.get("grant/" + rx["rx_id"] + "/" + c.org)
            named = grant is not None and grant["kind"] == "insurer"
        if named:
            cut = _left_ms(ctx, acct, rx["patient"], c.org)
    return [own, cut]


def _left_ms(ctx: Context, acct: dict, patient: str, org: str) -> int:
    """The time of the latest move of her account away from ``org`` (-1: none on record)."""
    left = ctx.get_from("settlement", "left/" + org + "/" + patient)
    if left is not None:
        return left["ms"]
    ms = -1
    if acct is not None:
        for m in acct.get("transfers", []):
            if m["from"] == org:
                ms = m["ms"]
    return ms


def _hidden_step(ctx: Context, former: list, h: dict) -> bool:
    """Whether a version of the record is hidden from a former insurer (``former`` of
    _former_insurer): a step of a fill not its own (lock, release, dispense, deliver), or any
    other step stamped after the move that ended its cover -- never a step its organisation
    took."""
    st = h["value"]["step"]
    if st["org"] == ctx.caller.org:
        return False
    fill = st["detail"].get("fill")
    if st["step"] == "release":
        fill = h["value"]["fills"] + 1
    if isinstance(fill, int):
        return fill not in former[0]
    return former[1] >= 0 and h["timestamp_ms"] > former[1]


def _former_versions(ctx: Context, rx: dict, former: list) -> list:
    """[seen, base] for a former insurer (``former`` of _former_insurer) of the record ``rx``:
    ``seen`` the versions of ``rx/{rx_id}`` it sees, in commit order (each ``{tx_id, block,
    timestamp_ms, is_delete, value: {step}}``: its trace cursors number these, not their
    positions in the index); ``base`` the record as it stood before the first version stamped
    after the move that ended its cover (None: no move ended it, or the index holds no version
    stamped at or before it). Reads the versions' values in paged ctx.history reads (each never
    empty while versions follow), until one comes back empty: its trace ends at its last version
    seen, and ``next``, ``left``, ``unreadable``, a cursor past it and ``show`` tell nothing of
    the hidden steps. Past the first version stamped after the move, only the versions'
    stamps are read (no values: gas that the hidden versions' values no longer drive), and the
    value of a version stamped as a step it may see (_former_stamps); every other one is hidden."""
    key = "rx/" + rx["rx_id"]
    stamps = None
    if former[1] >= 0:
        stamps = _former_stamps(ctx, rx, former)
    meta = []  # every version's stamp (no values), when the values past the move are not read
    cut = -1  # the position of the first version stamped after the move (-1: read them all)
    if stamps is not None:
        page = ctx.history(key, PAGE_MAX, 0, False)
        while len(page) > 0:
            meta.extend(page)
            page = ctx.history(key, PAGE_MAX, len(meta), False)
        for k in range(len(meta)):
            if cut < 0 and not meta[k]["is_delete"] and meta[k]["timestamp_ms"] > former[1]:
                cut = k
    seen = []
    base = None
    before = former[1] >= 0  # still before the first version stamped after the move
    pos = 0
    while cut < 0 or pos < cut:
        n = PAGE_MAX
        if cut >= 0:
            n = min(PAGE_MAX, cut - pos)
        page = ctx.history(key, n, pos)
        if len(page) == 0:
            break
        for k in range(len(page)):
            h = page[k]
            if h["is_delete"] or h["value"] is None:
                continue
            if before and h["timestamp_ms"] > former[1]:
                before = False
            if before:
                base = h["value"]
            if not _hidden_step(ctx, former, h):
                seen.append(_seen(h))
        pos = pos + len(page)
    if cut < 0:
        return [seen, base]
    # past the move: the value of a version stamped as a step it may see; the others hidden
    for k in range(cut, len(meta)):
        t = meta[k]["timestamp_ms"]
        if meta[k]["is_delete"] or (t not in stamps[0] and (stamps[1] < 0 or t <= stamps[1])):
            continue
        got = ctx.history(key, 1, k)
        if len(got) > 0 and not got[0]["is_delete"] and got[0]["value"] is not None \
                and not _hidden_step(ctx, former, got[0]):
            seen.append(_seen(got[0]))
    return [seen, base]


def _seen(h: dict) -> dict:
    return {"tx_id": h["tx_id"], "block": h["block"], "timestamp_ms": h["timestamp_ms"],
            "is_delete": False, "value": {"step": h["value"]["step"]}}


def _former_stamps(ctx: Context, rx: dict, former: list) -> list | None:
    """[stamps, after]: the stamps of the steps a former insurer may see after the move that
    ended its cover (``former[1]``), from the records those steps wrote: its own fills' dispenses and
    hand-overs (``disp/``: ``time_ms``, ``delivered_ms``), its organisation's hand-overs of
    the claim key (the grants it made: ``time_ms``) and, an expired record, ``after`` the
    fills' validity end: every later stamp (``expire``, which any member may call, and the
    steps after it; -1: none). None
    -- read every version's value -- when those records cannot tell: an erased record (its
    grants destroyed), a fill of its own not dispensed yet, a hand-over without its stamp."""
    if rx["status"] == "ERASED":
        return None
    out = []
    for f in former[0]:
        if f > rx["fills"]:
            return None
        disp = ctx.get(_disp_key(rx["rx_id"], f))
        if disp is None:
            return None
        out.append(disp["time_ms"])
        if disp["delivered"]:
            if "delivered_ms" not in disp:
                return None
            out.append(disp["delivered_ms"])
    for g in _grants(ctx, rx["rx_id"]):
        if g["granted_by"] == ctx.caller.org:
            out.append(g["time_ms"])
    after = -1
    if rx["status"] == "EXPIRED":
        after = _fill_deadline(rx)
    return [out, after]


def _claim_rows(ctx: Context, rx_id: str) -> list:
    """Every settlement index row ``rxclaim/{rx_id}/...`` (paged reads; gas bounds them)."""
    prefix = "rxclaim/" + rx_id + "/"
    rows = []
    page = ctx.range_from("settlement", prefix, prefix + "~", CLAIM_ROWS)
    while len(page) > 0:
        rows.extend(page)
        # next page after the last key ("!" sorts below every character of the index keys);
        # until a page comes back empty: the sandbox may cap a range below CLAIM_ROWS
        page = ctx.range_from("settlement", page[len(page) - 1][0] + "!", prefix + "~", CLAIM_ROWS)
    return rows


def _versions_follow(ctx: Context, key: str, count: int, pos: int, read: int) -> bool:
    """Whether the history index holds a version of ``key`` at position ``pos``, right after
    the ``read`` versions a page read (``count``: the record's step_count, -1 unknown). Asked
    of the index (metadata of one version: no block read) unless the count says none: a read
    of values ends early on its bytes or gas, and a peer whose state came from a snapshot
    lacks the oldest versions the count counts."""
    if read == 0 or (count >= 0 and pos >= count):
        return False
    return len(ctx.history(key, 1, pos, False)) > 0


def _trace_position(ctx: Context, key: str, claims: list, position: int) -> list:
    """The cursor [v, c] of the ``position``-th step of the trail (the merge of ``trace``;
    ``claims``: its claim events in trail order), from the versions' metadata (pages of
    1000: no block read); [] past the end."""
    v = 0
    c = 0
    n = 0
    meta = ctx.history(key, PAGE_MAX, 0, False)
    k = 0
    while n < position:
        if k >= len(meta) and len(meta) > 0:
            v = v + len(meta)
            meta = ctx.history(key, PAGE_MAX, v, False)
            k = 0
        if k < len(meta) and (c >= len(claims) or claims[c][0]["time_ms"] >= meta[k]["timestamp_ms"]):
            if not meta[k]["is_delete"]:
                n = n + 1
            k = k + 1
        elif c < len(claims):
            c = c + 1
            n = n + 1
        else:
            return []
    return [v + k, c]


def _claim_order(seqs: list, done: list, n: int) -> list:
    """The first ``n`` claim events not shown yet (``done[k]`` of fill k's shown), in trail
    order: of the fills' next events, the earliest (the lowest fill on a tie). A fill's
    events go in its index order -- settle, reverse, then the next claim's: the order they
    committed in, whatever their times -- so an event committed later never goes before one
    a page showed. [[step, k], ...]"""
    at = list(done)
    out = []
    while len(out) < n:
        best = -1
        for k in range(len(seqs)):
            if at[k] < len(seqs[k]) and (best < 0 or seqs[k][at[k]]["time_ms"] < seqs[best][at[best]]["time_ms"]):
                best = k
        if best < 0:
            break
        out.append([seqs[best][at[best]], best])
        at[best] = at[best] + 1
    return out


def _shown(seqs: list, ks: list) -> list:
    """How many events of each fill a run of claim events holds (``ks``: their fills' k)."""
    done = [0] * len(seqs)
    for k in ks:
        done[k] = done[k] + 1
    return done


def _trace_claims(ctx: Context, rx_id: str, only: str = "") -> list:
    """[fills, seqs]: the fill numbers with claim events (ascending) and each one's events
    as trace steps, in the index order of its claims (``rxclaim/{rx_id}/{fill3}/{n3}``).
    ``only``: the claims of that insurer alone (a former insurer's view), "" all."""
    fills = []
    seqs = []
    for pair in _claim_rows(ctx, rx_id):
        claim = ctx.get_from("settlement", "claim/" + pair[1]["claim_id"])
        if only != "" and claim["insurer"] != only:
            continue
        if claim["fill"] not in fills:
            fills.append(claim["fill"])
            seqs.append([])
        seq = seqs[fills.index(claim["fill"])]
        for ev in claim["events"]:
            detail = {"claim_id": claim["claim_id"], "fill": claim["fill"]}
            if ev["step"] == "reverse":
                detail["reason"] = claim.get("reversal_reason", "")
                detail["note_ct"] = claim.get("reversal_note_ct", "")
            t = ev["time_ms"]
            seq.append({"step": ev["step"], "actor": ev["actor"], "org": ev["org"], "role": ev["role"],
                        "time_ms": t, "time": _iso_utc(t), "tx_id": ev["tx_id"], "block": None, "detail": detail})
    return [fills, seqs]


def _claims_shown(ctx: Context, key: str, fills: list, seqs: list, cur: list) -> list:
    """[v, done] of a cursor (_trace_cursor): the version it starts at and how many events of
    each fill it has shown; [] past the end."""
    if cur[0] == "position":
        order = _claim_order(seqs, [0] * len(seqs), MAX_POSITION + 1)
        at = _trace_position(ctx, key, order, cur[1])
        if len(at) == 0:
            return []
        return [at[0], _shown(seqs, [e[1] for e in order[0:at[1]]])]
    if cur[0] == "timed":  # an earlier release's: the events in time order, ties in index order
        order = []
        for k in range(len(seqs)):
            for s in seqs[k]:
                order.append((s["time_ms"], len(order), k))
        if cur[2] > len(order):
            return []
        return [cur[1], _shown(seqs, [e[2] for e in sorted(order)[0:cur[2]]])]
    done = [0] * len(seqs)
    for f in range(len(cur[2])):
        e = cur[2][f]
        if e > 0:
            if f + 1 not in fills or e > len(seqs[fills.index(f + 1)]):
                return []
            done[fills.index(f + 1)] = e
    return [cur[1], done]


def _fills_cursor(after: int, fills: list, done: list) -> str:
    """A page's ``next``: "{after}/{e1}.{e2}...", the events shown of fills 1..the last one
    with any ("0": none)."""
    top = 0
    for k in range(len(fills)):
        if done[k] > 0 and fills[k] > top:
            top = fills[k]
    parts = []
    for f in range(1, top + 1):
        if f in fills:
            parts.append(str(done[fills.index(f)]))
        else:
            parts.append("0")
    if top == 0:
        parts = ["0"]
    return str(after) + "/" + ".".join(parts)


def trace(ctx: Context, rx_id: str, start: str = "", limit: int = 0) -> dict:
    """The whole trail from the history index (+ settlement records), paged: ``start`` is ""
    or the ``next`` of the previous page, ``limit`` 1-1000 (0 = 1000).

    The versions of ``rx/{rx_id}`` in commit order (their position in the history index,
    by block and tx: it never runs backwards, whatever the timestamps) merged by time with
    the claim events, each fill's in its index order (settle, reverse, next claim: commit
    order, whatever the times; _claim_order): an event goes before a version only when
    strictly earlier. A page reads its versions' values by one paged ctx.history from the
    cursor's version (README), so it may end early, never empty. ``next``:
    "{version}/{events of fill 1}.{of fill 2}..." shown before the first step not shown, so
    an event committed after a page never takes the place of one shown; ``left``: steps on
    later pages (-1: unknown, a record from before ``step_count``); ``unreadable``: versions
    ``step_count`` counts that this peer's history index does not hold; ``truncated``: more
    to read. An insurer she left (README "Moving an account"): ``{version}`` counts the
    versions it sees (_former_versions), ``left`` its steps alone; a ``position`` cursor is
    refused it."""
    rx = _party_rx(ctx, rx_id)
    cur = _trace_cursor(start)
    if len(cur) == 0 or not _is_int(limit, 0, PAGE_MAX):
        ctx.fail("BAD_ARGUMENTS", "start is a cursor from an earlier page's next (or empty), limit 0-1000")
    if limit == 0:
        limit = PAGE_MAX
    key = "rx/" + rx_id
    count = -1  # versions of the record: one per transaction (-1: a record from before step_count)
    if "step_count" in rx:
        count = rx["step_count"]
    former = _former_insurer(ctx, rx)  # a former insurer sees its own fills and claims (README)
    only = ""
    status = rx["status"]
    end = -1  # a former insurer: how many versions it sees (_former_versions)
    seen = [[], None]
    if len(former) > 0:
        if cur[0] == "position":  # the n-th step of every version's merge: it counts the hidden
            ctx.fail("BAD_ARGUMENTS", "start: a step's position (an earlier release's cursor) counts "
                     "the steps of every party; an insurer she left pages from \"\" and each next")
        only = ctx.caller.org
        seen = _former_versions(ctx, rx, former)
        status = _as_former_sees(ctx, rx, former, seen).get("status", "")
        end = len(seen[0])  # its cursors number the versions it sees, not their positions
    got = _trace_claims(ctx, rx_id, only)
    fills = got[0]
    seqs = got[1]
    at = _claims_shown(ctx, key, fills, seqs, cur)
    if len(at) == 0 or (count >= 0 and at[0] > count) or (end >= 0 and at[0] > end):
        ctx.fail("BAD_ARGUMENTS", "start is past the end of the trail")
    v = at[0]
    done = at[1]
    if count < 0 and end < 0:
        # no count: before reading from v, ask the index whether the record reaches half-way
        # there, at positions growing fourfold (metadata of one version, 1 gas per version
        # stepped over): a cursor past the end costs a multiple of the record's own versions,
        # never a walk to v (4294967295: OUT_OF_GAS), a good one at most 2/3 more
        q = PROBE_FROM
        while q * 2 < v:
            if len(ctx.history(key, 1, q, False)) == 0:
                ctx.fail("BAD_ARGUMENTS", "start is past the end of the trail")
            q = q * 4 + 3
    got = []
    if end >= 0:  # a former insurer: the versions it sees, from the v-th (read once above)
        got = seen[0][v:v + limit]
        count = end
    elif count < 0 or v < count:
        got = ctx.history(key, limit, v)  # a page of values from version v: may end early, never empty
    if count < 0 and v > 0 and len(got) == 0 and len(ctx.history(key, 1, v - 1, False)) == 0:
        ctx.fail("BAD_ARGUMENTS", "start is past the end of the trail")
    claims = _claim_order(seqs, done, limit)
    waiting = 0  # claim events not shown before this page
    for k in range(len(seqs)):
        waiting = waiting + len(seqs[k]) - done[k]
    page = []
    i = 0
    j = 0
    size = 0
    follow = -1  # whether the index holds versions after the ones read (-1: not asked yet)
    while len(page) < limit:
        claim = True
        if i < len(got):
            h = got[i]
            if j >= len(claims) or claims[j][0]["time_ms"] >= h["timestamp_ms"]:
                claim = False
                if h["is_delete"] or h["value"] is None:  # a delete, a damaged block: no step
                    i = i + 1
                    continue
        elif j >= len(claims):
            break
        else:
            if follow < 0 and end >= 0:
                follow = 1 if v + len(got) < end else 0
            elif follow < 0:
                follow = 1 if _versions_follow(ctx, key, count, v + len(got), len(got)) else 0
            if follow > 0:
                break  # the next page reads on from the version the read ended before
        if claim:
            s = claims[j][0]
        else:
            st = h["value"]["step"]
            t = h["timestamp_ms"]
            s = {"step": st["step"], "actor": st["actor"], "org": st["org"], "role": st["role"], "time_ms": t,
                 "time": _iso_utc(t), "tx_id": h["tx_id"], "block": h["block"], "detail": st["detail"]}
        if rx["status"] == "ERASED" and "note_ct" in s["detail"]:
            s["detail"]["note_ct"] = ""  # erase blanked the notes; the history still holds them
        size = size + len(ctx.canonical_json(s))
        if size > TRACE_BYTES and len(page) > 0:
            break
        page.append(s)
        if claim:
            done[claims[j][1]] = done[claims[j][1]] + 1
            j = j + 1
        else:
            i = i + 1
    after = v + i
    more = i < len(got)
    if not more:
        if follow < 0 and end >= 0:
            follow = 1 if after < end else 0
        elif follow < 0:
            follow = 1 if _versions_follow(ctx, key, count, after, len(got)) else 0
        more = follow > 0
    unreadable = 0
    left = waiting - j
    if more and count < 0:
        left = -1
    elif more:
        left = left + count - after
    elif count > after and end < 0:  # (a former insurer: its end is what this index holds)
        unreadable = count - after
    next_cursor = ""
    if more or waiting > j:
        next_cursor = _fills_cursor(after, fills, done)
    return {"rx_id": rx_id, "status": status, "steps": page, "next": next_cursor, "left": left,
            "unreadable": unreadable, "truncated": next_cursor != "" or unreadable != 0}


def audit_trail(ctx: Context, rx_id: str, start: str = "", limit: int = 0) -> dict:
    """Every grant / key fetch / denial of one prescription: the patient, the issuing
    hospital and the regulator's auditors may read it (metadata only). Paged by key:
    ``start`` is "" or the ``next`` of the previous page, ``limit`` 1-1000 (0 = 1000);
    ``truncated`` is true when more events follow (``next`` non-empty). Other roles are
    refused before the lookup; a non-party gets the missing id's answer."""
    _check_rx_id(ctx, rx_id)
    c = ctx.caller
    auditor = c.org_kind == "regulator" and c.role == "auditor"
    if not auditor and c.role != "patient" and not (c.org_kind == "hospital" and c.role == "admin"):
        ctx.fail("ACCESS_DENIED", "audit trails are for the patient, the hospital and auditors")
    rx = ctx.get("rx/" + rx_id)
    if rx is None:
        _missing(ctx, rx_id)
    hospital_admin = c.org == rx["hospital"] and c.role == "admin"
    if not auditor and not hospital_admin and not _is_patient(ctx, rx):
        if not _can_view(ctx, rx):
            _missing(ctx, rx_id)
        ctx.fail("ACCESS_DENIED", "audit trails are for the patient, the hospital and auditors")
    if not _is_page_key(start) or not _is_int(limit, 0, PAGE_MAX):
        ctx.fail("BAD_ARGUMENTS", "start is a cursor from an earlier page's next (or empty), limit 0-1000")
    if limit == 0:
        limit = PAGE_MAX
    prefix = "audit/" + rx_id + "/"
    rows = ctx.range(prefix + start, prefix + "~", limit)
    out = []
    for pair in rows:
        out.append(pair[1])
    next_key = ""
    if len(rows) > 0:
        # is there more? ("!" sorts below every character of the audit keys). Asked even for a
        # short page: the sandbox may cap a range below the limit asked for
        more = ctx.range(rows[len(rows) - 1][0] + "!", prefix + "~", 1)
        if len(more) > 0:
            next_key = more[0][0][len(prefix):]
    return {"rx_id": rx_id, "events": out, "next": next_key, "truncated": next_key != ""}


def audit_log(ctx: Context, start_key: str, limit: int) -> dict:
    """All audit events across prescriptions, paged by key (regulator auditors only)."""
    c = ctx.caller
    if c.org_kind != "regulator" or c.role != "auditor":
        ctx.fail("ACCESS_DENIED", "only the regulator's auditors read the global audit log")
    if not _is_int(limit, 1, 500) or not _is_page_key(start_key):
        ctx.fail("BAD_ARGUMENTS", "a start key (from an earlier page's next, or empty) and limit 1-500")
    start = "audit/" + start_key
    if start_key == "":
        start = "audit/"
    rows = ctx.range(start, "audit/~", limit + 1)
    out = []
    for pair in rows[0:limit]:
        out.append({"key": pair[0][6:], "event": pair[1]})
    next_key = ""
    if len(rows) > limit:
        next_key = rows[limit][0][6:]
    return {"events": out, "next": next_key}


def _summary(rx: dict) -> dict:
    return {
        "rx_id": rx["rx_id"],
        "status": rx["status"],
        "hospital": rx["hospital"],
        "pharmacy": rx["pharmacy"],
        "issued_ms": rx["issued_ms"],
        "valid_end_ms": rx["valid_end_ms"],
        "fills": rx["fills"],
        "max_fills": rx["max_fills"],
    }


def patient_prescriptions(ctx: Context, patient: str, start: str, limit: int) -> dict:
    """A patient's prescriptions (metadata), paged by rx_id: the patient herself, the
    enrolling hospital's admin and regulator auditors (e.g. to grant consent on each)."""
    c = ctx.caller
    if not _is_hex(patient, 64, 64) or not _is_page_key(start) or not _is_int(limit, 1, 200):
        ctx.fail("BAD_ARGUMENTS", "a 64-hex pseudonym, a start rx_id and limit 1-200")
    # before the lookup (as registry.get_patient): members compute pseudonyms from ID numbers,
    # and UNKNOWN_PATIENT against ACCESS_DENIED told any role who is in the chronic-disease scheme
    auditor = c.org_kind == "regulator" and c.role == "auditor"
    if not auditor and c.role != "patient" and not (c.org_kind == "hospital" and c.role == "admin"):
        ctx.fail("ACCESS_DENIED", "only the patient, her hospital's admin and auditors")
    enrol = ctx.get_from("registry", "patient/" + patient)
    if enrol is None:
        ctx.fail("UNKNOWN_PATIENT", "patient is not enrolled")
    allowed = c.org_kind == "regulator" and c.role == "auditor"
    allowed = allowed or (c.org == enrol["hospital"] and c.role == "admin")
    if not allowed and c.role == "patient":
        allowed = _is_enrolled_user(ctx, patient)
    if not allowed:
        ctx.fail("ACCESS_DENIED", "only the patient, her hospital's admin and auditors")
    prefix = "pidx/" + patient + "/"
    rows = ctx.range(prefix + start, prefix + "~", limit + 1)
    out = []
    for pair in rows[0:limit]:
        out.append(_summary(ctx.get("rx/" + pair[1]["rx_id"])))
    next_id = ""
    if len(rows) > limit:
        next_id = rows[limit][1]["rx_id"]
    return {"prescriptions": out, "next": next_id}


def list_prescriptions(ctx: Context, start: str, limit: int) -> dict:
    """Every prescription's metadata (no ciphertext), paged by rx_id: regulator auditors."""
    c = ctx.caller
    if c.org_kind != "regulator" or c.role != "auditor":
        ctx.fail("ACCESS_DENIED", "only the regulator's auditors list all prescriptions")
    if not _is_page_key(start) or not _is_int(limit, 1, 200):
        ctx.fail("BAD_ARGUMENTS", "a start rx_id (or empty) and limit 1-200")
    rows = ctx.range("rx/" + start, "rx/~", limit + 1)
    out = []
    for pair in rows[0:limit]:
        out.append(_summary(pair[1]))
    next_id = ""
    if len(rows) > limit:
        next_id = rows[limit][1]["rx_id"]
    return {"prescriptions": out, "next": next_id}
