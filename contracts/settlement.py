"""rxchain settlement contract (namespace ``settlement``): outpatient chronic-disease claims.

The formula of DOMAIN.md section 3, in integer fen, rounding half-up per line (a line is
a line of the claim as it lists them: the same drug on two lines is rounded twice):

    medfee  = sum price * qty                         (all lines)
    fulamt  = sum off-list lines
    overlmt = sum max(0, price - standard) * qty       (A and B lines)
    preself = sum B lines: rhu(min(price, standard) * qty * b_share_bp / 10000)
    inscp   = medfee - fulamt - overlmt - preself
    dedc    = min(inscp, deductible remaining this year)
    fund    = min(rhu((inscp - dedc) * ratio_bp / 10000), cap remaining this year)
    patient = medfee - fund
    account = min(patient - fulamt - overlmt, account balance)
    cash    = patient - account

with rhu(a * b / 10000) = (2 * a * b + 10000) // 20000 for non-negative a, b. Prices, classes,
the policy version and the benefit year are those of the date of service (the fill's dispense
time), never of the settling transaction.

Ownership of money: the registry's enrolment holds no money and no insurer. The patient's
insurer (a clerk or admin) opens her account with ``open_account``: ``acct/{pseudonym}`` =
{"insurer", ...}, the opening ``bal/{pseudonym}`` = {"balance_fen"} and the seed
``ctr/{pseudonym}/{year}`` = {"deductible_used_fen", "cap_used": {dx_tag: fen}} (cap usage
per disease; year = China-local calendar year). Counters of a year without a record are
zero. The account moves to another insurer with ``request_transfer`` (the patient, or her
insurer) and ``accept_transfer`` (the receiving insurer), never while a claim of hers is
outstanding -- a fill left unsettled over UNSETTLED_WINDOW_MS after its dispense no longer is:
the move lists it and its insurer of record still settles it, within LATE_SETTLE_WINDOW_MS of
the move (``left/{insurer}/{pseudonym}``: the latest move away from each insurer); a fill not
yet dispensed has no claim: the fills dispensed after the move are the new insurer's
(``cover/{rx_id}``); the money moves unchanged. Claims: ``claim/{claim_id}``,
the duplicate guard ``claimed/{rx_id}/{fill3}`` and the index ``rxclaim/{rx_id}/{fill3}/{n3}``
(read by the prescription contract's trace).

Claim subset: the insurer clerk's client decrypts the claim ciphertext (its key comes from
``prescription.get_key``) and passes it as transient ``claim`` with transient ``claim_salt``;
the contract checks it against the prescription's claim commitment [HASH_MISMATCH]. An
optional transient ``lines`` ([{code, qty}]) claims less than was dispensed
[ITEM_NOT_DISPENSED, QTY_EXCEEDS_DISPENSED]. No drug line is written to state.
"""

from rxchain_contract import Context

DAY_MS = 86400000
TZ_MS = 28800000
MAX_INV = 9999999999999
MAX_FEN = 100000000000
HEX = "0123456789abcdef"
ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_."
REVERSAL_REASONS = ("BILLING_ERROR", "RETURNED_GOODS", "DUPLICATE", "OTHER")
B64_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
MIN_NOTE_CT = 40
MAX_NOTE_CT = 4096
TRAIL_PAGE = 64  # claims per page of trail (also the default page)
STAFF_ROLES = ("doctor", "pharmacist", "nurse", "admin", "courier", "clerk")  # as prescription's
MAX_TRANSFERS = 16  # moves an account record keeps, the latest (the older ones: the key's history)
TRANSFER_EXPIRY_MS = 30 * 24 * 3600 * 1000  # a pending transfer request is accepted within 30 days
# claims of one fill (each settled, all but the last reversed): every trace page reads them all
MAX_CLAIMS_PER_FILL = 128  # (x 12 fills: ~1,500 claims, ~0.5M gas a trace page at most)
CLOSED = ("REJECTED", "REVOKED", "EXPIRED", "ERASED")  # prescription.TERMINAL
# the largest clock skew the validators may allow: a tx timestamp within the consortium's
# limits.max_clock_skew_ms either side of its block's, at most 1 day by the config rules
# (node.orderer.configrules.LIMIT_BOUNDS; contracts see no config, so they hold its bound)
MAX_CLOCK_SKEW_MS = DAY_MS
# how long past its next fill's deadline a prescription not marked EXPIRED still counts as
# dispensable for a move: a dispense stamped before the deadline may commit after a move stamped
# after it, and the move does not conflict with it
SKEW_MARGIN_MS = 2 * MAX_CLOCK_SKEW_MS
# a formulary entry's or a policy's first version stamped at most this after a dispense was in
# force at it: the entry (policy) existed when the dispense committed -- issue and dispense check
# the formulary, opening an account and a move take a policy in force --, so its stamp is at
# most two skews past the dispense's (each at most one skew from its block's)
FIRST_VERSION_WINDOW_MS = 2 * MAX_CLOCK_SKEW_MS
VERSION_PAGE = 64  # versions read a page (the oldest in the window: then halving, ~28 reads)
# a dispensed fill its insurer leaves unsettled (never settled, or reversed) for more than this
# after its dispense (the transactions' timestamps) no longer holds a move up: the move lists it
# and the insurer of the prescription's issue still settles it afterwards (README "Moving an
# account"); without a bound an insurer that never settled kept her for good
UNSETTLED_WINDOW_MS = 30 * DAY_MS
MAX_UNSETTLED_LISTED = 16  # fills a move lists as left unsettled (all of them are counted)
# the insurer of a prescription's issue settles a fill a move left unsettled within this after
# the move (the settling tx's timestamp against the move's), no later: its settle -- and any
# preview of one -- shows her account's figures (balance, deductible and cap left), which it no
# longer reads otherwise (patient_status); without a bound it watched her account for good
LATE_SETTLE_WINDOW_MS = 30 * DAY_MS


def _only(s: str, chars: str, lo: int, hi: int) -> bool:
    """``s`` is a string of ``lo``-``hi`` characters, each one of ``chars``."""
    if not isinstance(s, str) or len(s) < lo or len(s) > hi:
        return False
    for ch in s:
        if ch not in chars:
            return False
    return True


def _is_id(s: str, max_len: int) -> bool:
    return _only(s, ID_CHARS, 1, max_len)


def _is_hex(s: str, lo: int, hi: int) -> bool:
    return _only(s, HEX, lo, hi)


def _is_blank(s: str) -> bool:
    """No visible character: not a string, empty, whitespace or invisible format characters
    only (the prescription contract holds the same rule)."""
    if not isinstance(s, str):
        return True
    for ch in s:
        if ch.isprintable() and not ch.isspace():
            return False
    return True


def _is_int(v: int, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _china_year(ms: int) -> int:
    days = (ms + TZ_MS) // DAY_MS
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    if mp >= 10:
        y = y + 1
    return y


def _rhu_bp(amount: int, bp: int) -> int:
    """round_half_up(amount * bp / 10000) for non-negative integers."""
    return (2 * amount * bp + 10000) // 20000


def _largest_below(ctx: Context, prefix: str, lo: int, hi: int) -> list:
    """The row with the largest key under ``prefix`` in [``lo``, ``hi``) (13-digit keys), or
    None. Bounded: one page of VERSION_PAGE rows; a full page, then the rest of the range
    halved per read of one row (about log2(hi - lo) reads)."""
    if hi <= lo:
        return None
    page = ctx.range_from("registry", prefix + str(lo).zfill(13), prefix + str(hi).zfill(13),
                          VERSION_PAGE)
    if len(page) == 0:
        return None
    best = page[len(page) - 1]
    if len(page) == VERSION_PAGE:
        # more may follow: the largest is the largest key in [a, hi), else ``best``
        a = int(best[0][len(prefix):]) + 1
        while a < hi:
            mid = (a + hi) // 2
            found = ctx.range_from("registry", prefix + str(mid).zfill(13),
                                   prefix + str(hi).zfill(13), 1)
            if len(found) > 0:
                best = found[0]
                a = int(found[0][0][len(prefix):]) + 1
            else:
                hi = mid
    return best


def _first_in_window(ctx: Context, prefix: str, at_ms: int) -> dict:
    """The oldest registry version under ``prefix`` (keys ``{prefix}{9999999999999 - ms, 13
    digits}``) stamped in (``at_ms``, ``at_ms`` + FIRST_VERSION_WINDOW_MS], or None (the
    largest key of the window: about 28 reads for a 2-day window beyond a page)."""
    hi = MAX_INV - at_ms  # exclusive: a version at or before at_ms has an inv of hi or more
    best = _largest_below(ctx, prefix, max(0, hi - FIRST_VERSION_WINDOW_MS), hi)
    if best is None:
        return None
    return best[1]


def _policy(ctx: Context, insurer: str, at_ms: int, when: str = "") -> dict:
    """The version of ``insurer``'s policy in force at ``at_ms`` (NO_POLICY, naming ``when``).
    With ``when`` (a dispense's date of service), a first policy effective at most
    FIRST_VERSION_WINDOW_MS after it covers it: the dispense's stamp is skewed (opening an
    account and a move take a policy in force); one later had no policy then (NO_POLICY)."""
    inv = str(MAX_INV - at_ms).zfill(13)
    prefix = "policy/" + insurer + "/"
    found = ctx.range_from("registry", prefix + inv, prefix + "~", 1)
    if len(found) == 0:
        first = None
        if when != "":
            first = _first_in_window(ctx, prefix, at_ms)
        if first is None:
            ctx.fail("NO_POLICY", "no policy of " + insurer + " in force" + when)
        return first
    return found[0][1]


def _drug(ctx: Context, code: str, at_ms: int, insurer: str, own_prices: bool) -> dict:
    """The class, price and standard of ``code`` for ``insurer``'s claims in force at
    ``at_ms``: the insurer's own price version (``pricever/{insurer}/{code}/{inv13}``) when it
    had published one by then (looked for only when ``own_prices``: the registry's
    ``priced/{insurer}`` mark exists), else the formulary entry's: the registry keeps every
    version as ``drugver/{code}/{inv13}``; an entry without versions (written before they were
    kept, never updated since) is read as is. An entry whose first version is later than
    ``at_ms`` by FIRST_VERSION_WINDOW_MS at most is priced by that first version: it existed
    when the dispense committed (issue and dispense check the formulary), the dispense's stamp
    is skewed. One whose versions all lie further on existed before its first version: an entry
    from before versions were kept, updated by the registry that introduced them, which kept no
    copy of it (ms 0) -- priced by its oldest version on record (the entry it was then is not on
    record; the entry as it is at the settle let its owner re-price the claim). Only an entry
    without any version is read as it is."""
    inv = str(MAX_INV - at_ms).zfill(13)
    if own_prices:
        own = "pricever/" + insurer + "/" + code + "/"
        found = ctx.range_from("registry", own + inv, own + "~", 1)
        if len(found) > 0:
            return found[0][1]
    prefix = "drugver/" + code + "/"
    found = ctx.range_from("registry", prefix + inv, prefix + "~", 1)
    if len(found) > 0:
        return found[0][1]
    first = _first_in_window(ctx, prefix, at_ms)
    if first is not None:
        return first
    # (no version up to the window's end: every one lies further on) the oldest on record, the
    # entry as it was first kept -- the entry as it is at the settle let its owner re-price
    # the claim by updating it
    oldest = _largest_below(ctx, prefix, 0, max(0, MAX_INV - at_ms - FIRST_VERSION_WINDOW_MS))
    if oldest is not None:
        return oldest[1]
    rec = ctx.get_from("registry", "drug/" + code)
    if rec is None:
        ctx.fail("UNKNOWN_DRUG", "drug " + code + " is not in the formulary")
    return rec


def _counters(ctx: Context, pseudonym: str, year: int) -> dict:
    ctr = ctx.get("ctr/" + pseudonym + "/" + str(year))
    if ctr is not None:
        return ctr
    return {"deductible_used_fen": 0, "cap_used": {}}


def _account(ctx: Context, pseudonym: str) -> dict:
    acct = ctx.get("acct/" + pseudonym)
    if acct is None:
        ctx.fail("NO_ACCOUNT", "the patient's insurer has not opened her account")
    return acct


def _balance(ctx: Context, pseudonym: str) -> int:
    bal = ctx.get("bal/" + pseudonym)
    if bal is None:
        return 0
    return bal["balance_fen"]


def open_account(ctx: Context, pseudonym: str, year: int, balance_fen: int,
                 deductible_used_fen: int) -> dict:
    """Open an enrolled patient's insurance account (clerk or admin of the insurer she asked).

    ``balance_fen`` is the opening personal-account balance; ``deductible_used_fen`` and the
    transient ``cap_used_by_disease`` ({ICD-10: fen}, with transient ``dx_key``: no ICD-10
    code reaches a block or the state) seed the counters of ``year`` (0 = this year; not in
    the future). It takes her own pending request naming the caller's insurer
    (``request_transfer`` by the patient, within its 30 days; it is consumed): without one the
    answer is NOT_FOUND, nothing written, whether she is enrolled or not -- an insurer she has
    no tie to used to tell an enrolled patient (an account opened, or ACCOUNT_EXISTS naming her
    insurer) from one never enrolled (UNKNOWN_PATIENT). The insurer needs a policy in force
    (NO_POLICY). An account is opened once; afterwards only claims and reversals move the
    money."""
    c = ctx.caller
    if c.org_kind != "insurer" or c.role not in ("clerk", "admin"):
        ctx.fail("WRONG_ROLE", "only an insurer clerk or admin opens an account")
    this_year = _china_year(ctx.timestamp_ms)
    if year == 0:
        year = this_year
    if not _is_hex(pseudonym, 64, 64) or not _is_int(year, 1970, this_year):
        ctx.fail("BAD_ARGUMENTS", "a 64-hex pseudonym and a year 1970..this year (0 = this year)")
    if not _is_int(balance_fen, 0, MAX_FEN) or not _is_int(deductible_used_fen, 0, MAX_FEN):
        ctx.fail("BAD_ARGUMENTS", "amounts are non-negative integer fen")
    # before the enrolment is read: an insurer she did not ask learns nothing of her
    req = ctx.get("xfer/" + pseudonym)
    if not _asked_by_her(ctx, req):
        ctx.fail("NOT_FOUND", "no request of this patient to open her account with " + c.org
                 + " is pending (she asks with settlement.request_transfer; 30 days)")
    enrol = ctx.get_from("registry", "patient/" + pseudonym)
    if enrol is None:  # (cannot happen: only she, enrolled, makes a request)
        ctx.fail("NOT_FOUND", "no request of this patient to open her account with " + c.org
                 + " is pending (she asks with settlement.request_transfer; 30 days)")
    old = ctx.get("acct/" + pseudonym)
    if old is not None:  # (her request is a move: accept_transfer)
        ctx.fail("ACCOUNT_EXISTS", "the account is held by " + old["insurer"])
    # an insurer with a policy in force (NO_POLICY), as accept_transfer: every dispense of a
    # prescription it insures then follows a policy of its own -- one written later covers a
    # dispense stamped before it by the clock skew only (FIRST_VERSION_WINDOW_MS), never one
    # the insurer saw before writing its first policy
    _policy(ctx, c.org, ctx.timestamp_ms)
    seeds = ctx.transient("cap_used_by_disease")
    if seeds is None:
        seeds = {}
    if not isinstance(seeds, dict) or len(seeds) > 16:
        ctx.fail("BAD_TRANSIENT", "transient cap_used_by_disease maps ICD-10 -> fen (<= 16)")
    cap_used = {}
    if len(seeds) > 0:
        key = ctx.transient("dx_key")
        if not _is_hex(key, 64, 64):
            ctx.fail("BAD_TRANSIENT", "transient dx_key (64 lower-case hex) is required")
        for dx in sorted(seeds.keys()):
            if not _is_id(dx, 16) or not _is_int(seeds[dx], 0, MAX_FEN):
                ctx.fail("BAD_TRANSIENT", "cap_used_by_disease: ICD-10 code -> non-negative fen")
            cap_used[ctx.hmac_sha256_hex(key, pseudonym + "|" + dx)] = seeds[dx]
    acct = {
        "pseudonym": pseudonym,
        "insurer": c.org,
        "opened_by": c.name,
        "opened_ms": ctx.timestamp_ms,
        "tx_id": ctx.tx_id,
        "opening_balance_fen": balance_fen,
        "seed_year": year,
        "request_tx_id": req["tx_id"],
    }
    ctx.delete("xfer/" + pseudonym)
    ctx.put("acct/" + pseudonym, acct)
    ctx.put("bal/" + pseudonym, {"balance_fen": balance_fen})
    ctx.put("ctr/" + pseudonym + "/" + str(year),
            {"deductible_used_fen": deductible_used_fen, "cap_used": cap_used})
    ctx.emit("account.opened", {"insurer": c.org})
    return acct


def _cover(ctx: Context, rx: dict, moved: bool) -> dict:
    """``cover/{rx_id}`` (or None): who insures the fills dispensed after a move. A move writes
    it for each prescription of hers that can still be dispensed: ``from`` = [{fill, insurer,
    move_tx_id, ms}], ascending ``fill``, each entry naming the insurer of that fill and every
    later one (until the next entry): the insurer holding her account when the fill's dispense
    committed -- the move read the prescription's record, which every dispense writes, so a
    dispense is ordered before or after it (MVCC). At most one entry a fill number (a move
    before the same fill replaces the entry): bounded by max_fills. Read only for an account
    that moved (``moved``): no move, no record."""
    if not moved:
        return None
    return ctx.get("cover/" + rx["rx_id"])


def _insurer_of(rx: dict, cover: dict, fill: int) -> str:
    """The insurer of record of ``fill``: her insurer at its dispense -- the insurer of the
    prescription's issue, or the one the latest cover entry at or below ``fill`` names."""
    insurer = rx["insurer"]
    if cover is not None:
        for seg in cover["from"]:
            if seg["fill"] <= fill:
                insurer = seg["insurer"]
    return insurer


def _open_claims(ctx: Context, pseudonym: str, moved: bool) -> list:
    """[n, left, n_left, carried]: ``n`` her prescriptions with a claim outstanding -- a
    dispensed fill without an active claim dispensed UNSETTLED_WINDOW_MS ago at most; ``left``
    the first MAX_UNSETTLED_LISTED fills without an active claim dispensed longer ago ({rx_id,
    fill, insurer, dispensed_ms}, ``insurer`` that fill's insurer of record: it left them
    unsettled; they no longer hold a move), ``n_left`` all of them (of the prescriptions with
    nothing outstanding); ``carried`` [rx, cover] of each prescription that can still be
    dispensed, by its status, or by the clock until SKEW_MARGIN_MS past its next fill's deadline
    (``prescription.expire`` closes it at once). A fill not yet dispensed has no claim: it holds
    no move; the move makes the insurer taking her over the insurer of record of the fills
    dispensed after it (``cover/``). Erased prescriptions are past their retention (their keys
    destroyed): never claimable, never outstanding. All her prescriptions are read (pages of 64
    index rows; bounded by gas)."""
    prefix = "pidx/" + pseudonym + "/"
    end = prefix + "~"
    now = ctx.timestamp_ms
    n = 0
    left = []
    n_left = 0
    carried = []
    page = ctx.range_from("prescription", prefix, end, 64)
    while len(page) > 0:
        for pair in page:
            rx = ctx.get_from("prescription", "rx/" + pair[1]["rx_id"])
            if rx is None or rx["status"] == "ERASED":
                continue
            cover = _cover(ctx, rx, moved)
            deadline = rx["valid_end_ms"] + rx["fills"] * rx["fill_interval_days"] * DAY_MS
            if rx["status"] not in CLOSED and rx["fills"] < rx["max_fills"] and now <= deadline + SKEW_MARGIN_MS:
                carried.append([rx, cover])
            fill = 1
            stale = []
            while fill <= rx["fills"]:
                fill3 = str(fill).zfill(3)
                guard = ctx.get("claimed/" + rx["rx_id"] + "/" + fill3)
                # (a fill its insurer claimed and reversed MAX_CLAIMS_PER_FILL times is claimed
                # no more: were it outstanding, that insurer could keep her by reversing)
                if guard is None or (guard["active"] == "" and guard["count"] < MAX_CLAIMS_PER_FILL):
                    # from its dispense, also once settled and reversed: a reversal never
                    # restarts the window (the insurer could keep her by reversing)
                    disp = ctx.get_from("prescription", "disp/" + rx["rx_id"] + "/" + fill3)
                    if disp is None or now <= disp["time_ms"] + UNSETTLED_WINDOW_MS:
                        n = n + 1
                        stale = None
                        break
                    stale.append({"rx_id": rx["rx_id"], "fill": fill,
                                  "insurer": _insurer_of(rx, cover, fill),
                                  "dispensed_ms": disp["time_ms"]})
                fill = fill + 1
            if stale is not None:
                n_left = n_left + len(stale)
                for u in stale:
                    if len(left) < MAX_UNSETTLED_LISTED:
                        left.append(u)
        # next page after the last key ("!" sorts below every rx id character)
        page = ctx.range_from("prescription", page[len(page) - 1][0] + "!", end, 64)
    return [n, left, n_left, carried]


def _asked_by_her(ctx: Context, req: dict) -> bool:
    """``req`` (the pending request, or None) is one the patient made herself naming the
    caller's insurer, within its TRANSFER_EXPIRY_MS."""
    return req is not None and req["to"] == ctx.caller.org and req["requested_by"] == "patient" \
        and ctx.timestamp_ms <= req["ms"] + TRANSFER_EXPIRY_MS


def _transfer_party(ctx: Context, pseudonym: str) -> list:
    """[enrolment, account, who] for a transfer request or its withdrawal: the patient herself
    (her binding; her account None when none is opened yet: a request to open one) or a
    clerk/admin of the insurer holding her account; ``who`` is "patient" or that insurer's id.
    An insurer not holding her account is refused before her enrolment is read, the same
    whether she is enrolled or not (it used to tell UNKNOWN_PATIENT from NO_ACCOUNT and
    ACCESS_DENIED)."""
    c = ctx.caller
    if not _is_hex(pseudonym, 64, 64):
        ctx.fail("BAD_ARGUMENTS", "pseudonym must be 64 lower-case hex (HMAC-SHA256)")
    if c.role != "patient" and (c.org_kind != "insurer" or c.role not in ("clerk", "admin")):
        ctx.fail("WRONG_ROLE", "the patient or her insurer's clerk or admin asks for a transfer")
    if c.role != "patient":
        acct = ctx.get("acct/" + pseudonym)
        if acct is None or acct["insurer"] != c.org:
            ctx.fail("ACCESS_DENIED", "the patient is not insured by " + c.org)
        return [ctx.get_from("registry", "patient/" + pseudonym), acct, c.org]
    enrol = ctx.get_from("registry", "patient/" + pseudonym)
    if enrol is None:
        ctx.fail("UNKNOWN_PATIENT", "patient is not enrolled")
    if not _is_patient(ctx, enrol):  # before telling whether she has an account
        ctx.fail("ACCESS_DENIED", "only the patient herself (her binding) or her insurer")
    return [enrol, ctx.get("acct/" + pseudonym), "patient"]


def _not_hers(ctx: Context, req: dict, who: str) -> None:
    """ACCESS_DENIED when ``req`` (the pending request, or None) is the patient's own and ``who``
    is not the patient: the insurer she asks to leave would withdraw or replace every request of
    hers (it sees each one's event) and so keep her; her request is hers to withdraw or replace,
    and the insurer asked declines it. A request past its TRANSFER_EXPIRY_MS (no longer
    accepted: TRANSFER_EXPIRED) is no pending request here, as in accept_transfer,
    _may_read_account and the registry's ``_insures``: it held her insurer's own request and
    withdrawal up until she withdrew it or the insurer it names declined it."""
    if req is not None and req["requested_by"] == "patient" and who != "patient" \
            and ctx.timestamp_ms <= req["ms"] + TRANSFER_EXPIRY_MS:
        ctx.fail("ACCESS_DENIED", "the patient's own request to move to " + req["to"] + " is pending: "
                 "only she withdraws or replaces it (" + req["to"] + " may decline it)")


def request_transfer(ctx: Context, pseudonym: str, to_insurer: str) -> dict:
    """Ask to move the patient's account to ``to_insurer`` (the patient with her binding, or a
    clerk/admin of her insurer); a clerk or admin of ``to_insurer`` completes it with
    ``accept_transfer``. So a move takes the patient's consent or both insurers', and always
    the receiving insurer's. A later request replaces a pending one -- her own only by her.
    The patient's request while no account of hers is open asks ``to_insurer`` to open it
    (``from`` ""; its clerk or admin completes it with ``open_account``, which checks its
    policy)."""
    if not _is_id(to_insurer, 32):
        ctx.fail("BAD_ARGUMENTS", "to_insurer is an insurer's organisation id")
    party = _transfer_party(ctx, pseudonym)
    acct = party[1]
    held = ""  # her insurer ("" none yet: a request to open her account)
    if acct is not None:
        held = acct["insurer"]
        if to_insurer == held:
            ctx.fail("BAD_ARGUMENTS", "the account is held by " + to_insurer + " already")
        _policy(ctx, to_insurer, ctx.timestamp_ms)  # an insurer with a policy in force (NO_POLICY)
    _not_hers(ctx, ctx.get("xfer/" + pseudonym), party[2])
    by = ctx.caller.name
    if party[2] == "patient":
        by = ""  # her certificate's name is never stored (README "Patient certificate binding")
    req = {
        "from": held,
        "to": to_insurer,
        "requested_by": party[2],
        "by": by,
        "ms": ctx.timestamp_ms,
        "tx_id": ctx.tx_id,
    }
    ctx.put("xfer/" + pseudonym, req)
    ctx.emit("account.transfer_requested", {"from": held, "to": to_insurer})
    return req


def cancel_transfer(ctx: Context, pseudonym: str) -> dict:
    """Withdraw a pending transfer (the patient; her insurer's clerk/admin one it asked for) or
    decline it (a clerk/admin of the insurer it is addressed to)."""
    c = ctx.caller
    if not _is_hex(pseudonym, 64, 64):
        ctx.fail("BAD_ARGUMENTS", "pseudonym must be 64 lower-case hex (HMAC-SHA256)")
    req = ctx.get("xfer/" + pseudonym)
    declined = req is not None and c.org_kind == "insurer" and c.role in ("clerk", "admin") \
        and c.org == req["to"]
    if not declined:
        party = _transfer_party(ctx, pseudonym)  # the patient or her insurer, before telling anything
        if req is None:
            ctx.fail("NOT_FOUND", "no transfer of this patient's account is pending")
        _not_hers(ctx, req, party[2])
    ctx.delete("xfer/" + pseudonym)
    ctx.emit("account.transfer_cancelled", {"from": req["from"], "to": req["to"]})
    return req


def accept_transfer(ctx: Context, pseudonym: str) -> dict:
    """Take over the patient's account (clerk or admin of the insurer a pending request names).

    Refused while a claim of hers is outstanding (OPEN_CLAIMS: a fill dispensed at most 30 days
    ago unclaimed): its insurer of record settles it first -- never lost, never paid twice. A
    fill its insurer left unsettled longer holds the move up no more: the move lists it
    (``unsettled``, ``unsettled_count``) and that insurer still settles it afterwards
    (``settle``), nobody else. A fill not yet dispensed has no claim and holds no move: of each
    prescription of hers that can still be dispensed, the fills dispensed after the move are
    the new insurer's (``cover/{rx_id}``: her insurer at their date of service), the earlier
    ones stay their insurer's. The money moves unchanged: the personal-account
    balance and this and earlier years' deductible and cap counters are hers; the new
    insurer's policy applies to dispenses from the move on. The previous insurer's claims stay
    its own and can no longer be reversed (ACCOUNT_TRANSFERRED): the refund would land in an
    account it no longer holds -- but for one it settles late under this move, within its
    LATE_SETTLE_WINDOW_MS (``reverse``)."""
    c = ctx.caller
    if c.org_kind != "insurer" or c.role not in ("clerk", "admin"):
        ctx.fail("WRONG_ROLE", "a clerk or admin of the receiving insurer accepts a transfer")
    if not _is_hex(pseudonym, 64, 64):
        ctx.fail("BAD_ARGUMENTS", "pseudonym must be 64 lower-case hex (HMAC-SHA256)")
    req = ctx.get("xfer/" + pseudonym)
    if req is None or req["to"] != c.org:
        ctx.fail("NOT_FOUND", "no transfer of this patient's account to " + c.org + " is pending")
    if ctx.timestamp_ms > req["ms"] + TRANSFER_EXPIRY_MS:
        # consent given for a move now, not one an insurer completes whenever it suits it
        ctx.fail("TRANSFER_EXPIRED", "the request to move her account to " + c.org + " is over 30 "
                 "days old: it is asked again (request_transfer) or withdrawn")
    acct = _account(ctx, pseudonym)
    if acct["insurer"] != req["from"]:  # cannot happen: every move deletes the request
        ctx.fail("NOT_FOUND", "the pending transfer is stale")
    found = _open_claims(ctx, pseudonym, len(acct.get("transfers", [])) > 0)
    n = found[0]
    if n > 0:
        ctx.fail("OPEN_CLAIMS", str(n) + " of her prescriptions have a claim outstanding (a fill "
                 "dispensed in the last 30 days, unsettled: its insurer settles it first)")
    _policy(ctx, c.org, ctx.timestamp_ms)
    move = {
        "from": acct["insurer"],
        "to": c.org,
        "requested_by": req["requested_by"],
        "request_tx_id": req["tx_id"],
        "accepted_by": c.name,
        "ms": ctx.timestamp_ms,
        "tx_id": ctx.tx_id,
        # fills their insurer left unsettled over UNSETTLED_WINDOW_MS: still its to settle
        "unsettled": found[1],
        "unsettled_count": found[2],
    }
    # the latest MAX_TRANSFERS moves (a bounded record): a cap on the moves themselves let two
    # insurers pass her back and forth 16 times -- each move takes only both insurers -- and
    # keep her for good, her own requests refused LIMIT_EXCEEDED
    kept = acct.get("transfers", []) + [move]
    acct["transfers"] = kept[max(0, len(kept) - MAX_TRANSFERS):]
    acct["insurer"] = c.org
    ctx.put("acct/" + pseudonym, acct)
    # the latest move away from the insurer she leaves, by that insurer and patient: its window
    # to settle (and reverse) what the move left (_move_away) no longer depends on the bounded
    # ``transfers`` -- 16 moves among other insurers within its 30 days cut it short. One
    # record per insurer she left (a later move away from it replaces it)
    ctx.put("left/" + move["from"] + "/" + pseudonym, move)
    # the fills still to dispense: hers under the insurer taking her over (the date of service)
    for pair in found[3]:
        rx = pair[0]
        segs = []
        if pair[1] is not None:
            segs = pair[1]["from"]
        nxt = rx["fills"] + 1
        if len(segs) > 0 and segs[len(segs) - 1]["fill"] == nxt:
            segs = segs[0:len(segs) - 1]  # moved again before that fill: the latest move decides
        segs = segs + [{"fill": nxt, "insurer": c.org, "move_tx_id": ctx.tx_id,
                        "ms": ctx.timestamp_ms}]
        ctx.put("cover/" + rx["rx_id"], {"rx_id": rx["rx_id"], "from": segs})
    ctx.delete("xfer/" + pseudonym)
    ctx.emit("account.transferred", {"from": move["from"], "to": c.org, "unsettled": found[2]})
    return acct


def _compute(lines: list, policy: dict, level: str, diagnosis: str, ded_used: int,
            cap_used: int, balance: int) -> dict:
    """Pure settlement arithmetic; ``lines`` = [{qty, price_fen, standard_fen, cls}].

    Returns every amount of the formula plus the policy figures used. Raises nothing:
    an unknown hospital level gets ratio 0 (the caller checks it first)."""
    ratio = policy["ratio_bp"].get(level, 0)
    cap = policy["cap_by_disease"].get(diagnosis, policy["cap_fen"])
    medfee = 0
    fulamt = 0
    overlmt = 0
    preself = 0
    for ln in lines:
        price = ln["price_fen"]
        std = ln["standard_fen"]
        qty = ln["qty"]
        medfee = medfee + price * qty
        if ln["cls"] == "OFF_LIST":
            fulamt = fulamt + price * qty
            continue
        if price > std:
            overlmt = overlmt + (price - std) * qty
        if ln["cls"] == "B":
            preself = preself + _rhu_bp(min(price, std) * qty, policy["b_share_bp"])
    inscp = medfee - fulamt - overlmt - preself
    ded_remaining = max(0, policy["deductible_fen"] - ded_used)
    cap_remaining = max(0, cap - cap_used)
    dedc = min(inscp, ded_remaining)
    fund = min(_rhu_bp(inscp - dedc, ratio), cap_remaining)
    patient = medfee - fund
    account = min(patient - fulamt - overlmt, balance)
    cash = patient - account
    return {
        "medfee_fen": medfee,
        "fulamt_fen": fulamt,
        "overlmt_fen": overlmt,
        "preself_fen": preself,
        "inscp_fen": inscp,
        "deductible_fen": dedc,
        "fund_fen": fund,
        "patient_fen": patient,
        "account_fen": account,
        "cash_fen": cash,
        "ratio_bp": ratio,
        "cap_fen": cap,
        "deductible_remaining_fen": ded_remaining - dedc,
        "cap_remaining_fen": cap_remaining - fund,
        "balance_after_fen": balance - account,
    }


def _claimed_lines(ctx: Context, dispensed: list) -> list:
    """The lines to claim (default: everything dispensed), checked per code against the
    dispense, as the claim lists them: each is an invoice line, priced and rounded on its
    own (the same drug on two lines rounds twice, DOMAIN.md section 3)."""
    disp_qty = {}
    for ln in dispensed:
        disp_qty[ln["code"]] = disp_qty.get(ln["code"], 0) + ln["qty"]
    wanted = ctx.transient("lines")
    if wanted is None:
        wanted = dispensed
    if not isinstance(wanted, list) or len(wanted) == 0 or len(wanted) > 5:
        ctx.fail("BAD_TRANSIENT", "transient lines: 1-5 objects {code, qty}")
    claim_qty = {}
    out = []
    for ln in wanted:
        # only the shape here (a positive integer of sane size): a line above what was dispensed
        # is QTY_EXCEEDS_DISPENSED and an item never dispensed ITEM_NOT_DISPENSED (DOMAIN.md 3),
        # whatever its quantity -- a per-line cap of 1000 answered both BAD_TRANSIENT
        if not isinstance(ln, dict) or not _is_int(ln.get("qty"), 1, MAX_FEN):
            ctx.fail("BAD_TRANSIENT", "each claimed line needs a positive integer quantity")
        code = ln.get("code")
        if not isinstance(code, str) or code not in disp_qty:
            ctx.fail("ITEM_NOT_DISPENSED", "claimed item " + str(code) + " was not dispensed")
        claim_qty[code] = claim_qty.get(code, 0) + ln["qty"]
        if claim_qty[code] > disp_qty[code]:
            ctx.fail("QTY_EXCEEDS_DISPENSED", "claimed quantity of " + code + " exceeds dispense")
        out.append({"code": code, "qty": ln["qty"]})
    return out


def _per_code(lines: list) -> list:
    """What ``lines_commitment`` commits: one {code, qty} per code, in order of first
    appearance, with the code's line quantities (ascending) as ``lines`` when the claim lists
    the code on more than one line. The split is part of the money (the B share is rounded per
    line), so a claim split another way commits otherwise; a claim listing each code once
    commits exactly the per-code quantities it always did."""
    parts = {}
    order = []
    for ln in lines:
        if ln["code"] not in parts:
            order.append(ln["code"])
            parts[ln["code"]] = []
        parts[ln["code"]].append(ln["qty"])
    out = []
    for code in order:
        entry = {"code": code, "qty": sum(parts[code])}
        if len(parts[code]) > 1:
            entry["lines"] = sorted(parts[code])
        out.append(entry)
    return out


def _move_away(ctx: Context, acct: dict, insurer: str) -> dict:
    """The latest move of her account away from ``insurer``, or None: its record
    ``left/{insurer}/{pseudonym}`` (each move writes it), else -- moves from before that record
    -- the latest such move in ``acct.transfers`` (the latest 16 moves)."""
    rec = ctx.get("left/" + insurer + "/" + acct["pseudonym"])
    if rec is not None:
        return rec
    return _latest_move_away(acct, insurer)


def _latest_move_away(acct: dict, insurer: str) -> dict:
    """The latest move in ``acct.transfers`` away from ``insurer``, or None."""
    moves = acct.get("transfers", [])
    i = len(moves) - 1
    while i >= 0 and moves[i]["from"] != insurer:
        i = i - 1
    if i < 0:
        return None
    return moves[i]


def _late_settle(ctx: Context, acct: dict, rx: dict, fill: int, disp_ms: int, insurer: str) -> dict:
    """A fill its insurer of record (``insurer``) settles after her account moved away from
    it: one the
    latest move away from it left unsettled (listed in the move's ``unsettled``, or -- the list
    full -- dispensed over UNSETTLED_WINDOW_MS before it), within LATE_SETTLE_WINDOW_MS of that
    move's time (ACCOUNT_TRANSFERRED, SETTLE_WINDOW_CLOSED). A settle, or its preview, shows the
    figures of an account that insurer no longer holds (balance, deductible and cap left), which
    patient_status refuses it: for that window only. Returns the move."""
    m = _move_away(ctx, acct, insurer)
    move = None
    if m is not None:
        listed = m.get("unsettled", [])
        for u in listed:
            if u["rx_id"] == rx["rx_id"] and u["fill"] == fill:
                move = m
        if move is None and m.get("unsettled_count", 0) > len(listed) \
                and disp_ms + UNSETTLED_WINDOW_MS < m["ms"]:
            move = m
    if move is None:
        ctx.fail("ACCOUNT_TRANSFERRED", "the patient's account has moved to another insurer and "
                 "no move on record left fill " + str(fill) + " unsettled with " + insurer)
    if ctx.timestamp_ms > move["ms"] + LATE_SETTLE_WINDOW_MS:
        ctx.fail("SETTLE_WINDOW_CLOSED", "fill " + str(fill) + " was left unsettled when her account "
                 "moved (" + str(move["ms"]) + " ms): its insurer settles it within 30 days of the "
                 "move, no later (it is settled between the insurers off the ledger)")
    return move


def settle(ctx: Context, rx_id: str, fill: int) -> dict:
    """Settle one dispense (insurer clerk of the fill's insurer of record: her insurer on the
    date of service -- the insurer of the prescription's issue, or the one a move handed the
    fills dispensed after it, ``cover/`` -- also after her account moved, for a fill a move left
    unsettled). fill 0 = latest fill. Transient: claim, claim_salt
    [, lines]. Priced and covered as of the dispense: no price or policy in force then is
    UNKNOWN_DRUG or NO_POLICY."""
    c = ctx.caller
    if c.role != "clerk" or c.org_kind != "insurer":
        ctx.fail("WRONG_ROLE", "only an insurer clerk settles claims")
    if not _is_id(rx_id, 64) or not _is_int(fill, 0, 99):
        ctx.fail("BAD_ARGUMENTS", "rx_id and a fill number 0-99 are required")
    rx = ctx.get_from("prescription", "rx/" + rx_id)
    if rx is None:
        ctx.fail("NOT_FOUND", "no prescription " + rx_id)
    acct = _account(ctx, rx["patient"])
    # the insurers of its fills: the insurer of its issue, and the insurer taking her over at a
    # move while fills were still to dispense (cover/); never naming her insurer to another one
    # (as reverse, get_claim)
    cover = _cover(ctx, rx, len(acct.get("transfers", [])) > 0)
    insurers = [rx["insurer"]]
    if cover is not None:
        for seg in cover["from"]:
            insurers.append(seg["insurer"])
    if c.org not in insurers:
        ctx.fail("ACCESS_DENIED", "the patient is not insured by " + c.org + " for this prescription")
    if fill == 0:
        fill = rx["fills"]
    if fill == 0 or fill > rx["fills"]:
        ctx.fail("NOT_DISPENSED", "that fill was not dispensed")
    # its insurer of record: her insurer at its dispense. A move waits for the fills dispensed
    # to be settled, except those left unsettled over UNSETTLED_WINDOW_MS -- still their
    # insurer's (its policy, its claim key); the fills dispensed after it are the new insurer's
    insurer = _insurer_of(rx, cover, fill)
    if insurer != c.org:
        ctx.fail("NOT_INSURER_OF_FILL", "fill " + str(fill) + " is not insured by " + c.org + ": it "
                 "was dispensed under another insurer's cover (her account moved while fills were "
                 "still to dispense; her insurer at the fill's dispense settles it)")
    fill3 = str(fill).zfill(3)
    guard = ctx.get("claimed/" + rx_id + "/" + fill3)
    if guard is not None and guard["active"] != "":
        ctx.fail("DUPLICATE_CLAIM", "fill " + str(fill) + " already claimed: " + guard["active"])
    if guard is not None and guard["count"] >= MAX_CLAIMS_PER_FILL:
        ctx.fail("LIMIT_EXCEEDED", "fill " + str(fill) + " was claimed " + str(MAX_CLAIMS_PER_FILL)
                 + " times, each reversed: it is settled off the ledger")
    disp = ctx.get_from("prescription", "disp/" + rx_id + "/" + fill3)
    if disp is None:
        ctx.fail("NOT_DISPENSED", "no dispense record of fill " + str(fill))
    late = None
    if acct["insurer"] != c.org:
        late = _late_settle(ctx, acct, rx, fill, disp["time_ms"], insurer)
    # the date of service: its prices, policy version and benefit year (never the settling tx's)
    served = disp["time_ms"]
    claim = ctx.transient("claim")
    salt = ctx.transient("claim_salt")
    if not isinstance(claim, dict) or not _is_hex(salt, 32, 128):
        ctx.fail("BAD_TRANSIENT", "transient claim (decrypted subset) and claim_salt required")
    text = ctx.canonical_json(claim)
    if text == "" or ctx.sha256_hex(salt + text) != rx["claim_commitment"]:
        ctx.fail("HASH_MISMATCH", "claim subset does not match the prescription's commitment")
    lines = _claimed_lines(ctx, claim["lines"])
    priced = []
    # (read by every claim, so an insurer publishing its first own price conflicts with a
    # claim settled without it: MVCC; absent, no line looks for the insurer's own versions)
    own_prices = ctx.get_from("registry", "priced/" + c.org) is not None
    for ln in lines:
        drug = _drug(ctx, ln["code"], served, c.org, own_prices)
        priced.append(
            {
                "qty": ln["qty"],
                "price_fen": drug["price_fen"],
                "standard_fen": drug["standard_fen"],
                "cls": drug["cls"],
            }
        )
    now = ctx.timestamp_ms
    policy = _policy(ctx, c.org, served, " at the dispense (" + str(served) + " ms)")
    level = rx["hospital_level"]
    if level not in policy["ratio_bp"]:
        ctx.fail("NO_POLICY", "the policy has no ratio for hospital level " + level)
    year = _china_year(served)
    ctr = _counters(ctx, rx["patient"], year)
    tag = rx["dx_tag"]
    cap_used = ctr["cap_used"].get(tag, 0)
    balance = _balance(ctx, rx["patient"])
    r = _compute(priced, policy, level, claim["diagnosis"], ctr["deductible_used_fen"],
                cap_used, balance)
    count = 0
    if guard is not None:
        count = guard["count"]
    claim_id = "CLM-" + rx_id + "-" + str(fill) + "-" + str(count + 1)
    ctr["deductible_used_fen"] = ctr["deductible_used_fen"] + r["deductible_fen"]
    ctr["cap_used"][tag] = cap_used + r["fund_fen"]
    ctx.put("ctr/" + rx["patient"] + "/" + str(year), ctr)
    ctx.put("bal/" + rx["patient"], {"balance_fen": balance - r["account_fen"]})
    rec = {
        "claim_id": claim_id,
        "rx_id": rx_id,
        "fill": fill,
        "patient": rx["patient"],
        "insurer": c.org,
        "year": year,
        "dispensed_ms": served,
        "dx_tag": tag,
        "hospital_level": level,
        "policy_effective_ms": policy["effective_ms"],
        "status": "SETTLED",
        "lines_commitment": ctx.sha256_hex(salt + ctx.canonical_json(_per_code(lines))),
        "events": [
            {
                "step": "settle",
                "actor": c.name,
                "org": c.org,
                "role": c.role,
                "time_ms": now,
                "tx_id": ctx.tx_id,
            }
        ],
    }
    for k in (
        "medfee_fen",
        "fulamt_fen",
        "overlmt_fen",
        "preself_fen",
        "inscp_fen",
        "deductible_fen",
        "fund_fen",
        "patient_fen",
        "account_fen",
        "cash_fen",
        "ratio_bp",
        "deductible_remaining_fen",
        "cap_remaining_fen",
        "balance_after_fen",
    ):
        rec[k] = r[k]
    if late is not None:
        # settled after her account moved away, under that move: reversed within its window
        rec["late_move_tx_id"] = late["tx_id"]
        rec["late_move_ms"] = late["ms"]
    ctx.put("claim/" + claim_id, rec)
    ctx.put("claimed/" + rx_id + "/" + fill3, {"active": claim_id, "count": count + 1})
    index = "rxclaim/" + rx_id + "/" + fill3 + "/" + str(count + 1).zfill(3)
    ctx.put(index, {"claim_id": claim_id})
    ctx.emit("claim.settled", {"claim_id": claim_id, "rx_id": rx_id, "insurer": c.org})
    return rec


def reverse(ctx: Context, claim_id: str, reason: str, note_ct: str = "") -> dict:
    """Reverse a settled claim (clerk of the same insurer): restores exactly the counters
    of the claim's year and the account balance; the fill may then be claimed again. After
    her account moved away (ACCOUNT_TRANSFERRED) only a claim settled late under the latest
    move away from the insurer, within that move's 30 days (SETTLE_WINDOW_CLOSED after).

    ``reason`` is a code of REVERSAL_REASONS; ``note_ct`` an optional client-encrypted note
    (base64 AES-GCM ciphertext under the prescription's claim key)."""
    c = ctx.caller
    if c.role != "clerk" or c.org_kind != "insurer":
        ctx.fail("WRONG_ROLE", "only an insurer clerk reverses claims")
    if not isinstance(claim_id, str) or len(claim_id) > 128:
        ctx.fail("BAD_ARGUMENTS", "claim_id is a string")
    if _is_blank(reason):
        ctx.fail("REASON_REQUIRED", "a reversal needs a reason code: " + ", ".join(REVERSAL_REASONS))
    if reason not in REVERSAL_REASONS:
        codes = ", ".join(REVERSAL_REASONS)
        ctx.fail("BAD_ARGUMENTS", "reason must be one of " + codes + " (free text goes in note_ct)")
    if not isinstance(note_ct, str):
        ctx.fail("BAD_ARGUMENTS", "note_ct must be a base64 string")
    if len(note_ct) > 0:
        if len(note_ct) < MIN_NOTE_CT or len(note_ct) > MAX_NOTE_CT or len(note_ct) % 4 != 0:
            ctx.fail("BAD_ARGUMENTS", "note_ct must be base64 ciphertext of 40-4096 characters")
        if not _only(note_ct, B64_CHARS, 0, MAX_NOTE_CT):
            ctx.fail("BAD_ARGUMENTS", "note_ct must be base64 ciphertext (client-side encrypted)")
    if not _is_id(claim_id, 128):
        ctx.fail("BAD_ARGUMENTS", "claim_id is 1-128 chars of [A-Za-z0-9-_.]")
    rec = ctx.get("claim/" + claim_id)
    if rec is None or rec["insurer"] != c.org:  # another insurer's claim: as if missing (get_claim)
        ctx.fail("CLAIM_NOT_FOUND", "no claim " + claim_id + " of " + c.org)
    if rec["status"] != "SETTLED":
        ctx.fail("ALREADY_REVERSED", "the claim was already reversed")
    acct = _account(ctx, rec["patient"])
    if acct["insurer"] != c.org:
        # her account moved to another insurer: the fill would reopen with nobody to settle it
        # (the claim key is this insurer's), and the refund would land in an account it no
        # longer holds -- a correction is between the insurers, off the ledger. Except a claim
        # it settled after the latest move away from it, under that move (late_move_tx_id):
        # within that move's LATE_SETTLE_WINDOW_MS it still settles the fill again, so it
        # reverses it, the money going back to her account as it came
        move = _move_away(ctx, acct, c.org)
        if move is None or rec.get("late_move_tx_id", "") != move["tx_id"]:
            ctx.fail("ACCOUNT_TRANSFERRED", "the patient's account has moved to another insurer")
        if ctx.timestamp_ms > move["ms"] + LATE_SETTLE_WINDOW_MS:
            ctx.fail("SETTLE_WINDOW_CLOSED", "claim " + claim_id + " was settled after her account "
                     "moved (" + str(move["ms"]) + " ms): its insurer reverses it within 30 days of "
                     "the move, no later (it is corrected between the insurers off the ledger)")
    key = "ctr/" + rec["patient"] + "/" + str(rec["year"])
    ctr = ctx.get(key)
    ctr["deductible_used_fen"] = ctr["deductible_used_fen"] - rec["deductible_fen"]
    ctr["cap_used"][rec["dx_tag"]] = ctr["cap_used"][rec["dx_tag"]] - rec["fund_fen"]
    ctx.put(key, ctr)
    bal = ctx.get("bal/" + rec["patient"])
    ctx.put("bal/" + rec["patient"], {"balance_fen": bal["balance_fen"] + rec["account_fen"]})
    fill3 = str(rec["fill"]).zfill(3)
    guard = ctx.get("claimed/" + rec["rx_id"] + "/" + fill3)
    ctx.put("claimed/" + rec["rx_id"] + "/" + fill3, {"active": "", "count": guard["count"]})
    rec["status"] = "REVERSED"
    rec["reversal_reason"] = reason
    rec["reversal_note_ct"] = note_ct
    rec["events"] = rec["events"] + [
        {
            "step": "reverse",
            "actor": c.name,
            "org": c.org,
            "role": c.role,
            "time_ms": ctx.timestamp_ms,
            "tx_id": ctx.tx_id,
        }
    ]
    ctx.put("claim/" + claim_id, rec)
    ctx.emit("claim.reversed", {"claim_id": claim_id, "rx_id": rec["rx_id"], "insurer": c.org})
    return rec


def _is_patient(ctx: Context, enrol: dict) -> bool:
    """Same rule as the registry: certificate attribute, or transient patient_binding."""
    c = ctx.caller
    if c.role != "patient":
        return False
    if c.attrs.get("pseudonym", "") == enrol["pseudonym"] and c.org == enrol["hospital"]:
        return True  # any other hospital's CA could mint the attribute: its binding decides
    binding = ctx.transient("patient_binding")
    if not _is_hex(binding, 64, 64):
        return False
    return enrol["user_tag"] == ctx.hmac_sha256_hex(binding, "patient-user|" + c.org + "|" + c.name)


def _may_read_patient(ctx: Context, enrol: dict) -> bool:
    c = ctx.caller
    if c.org_kind == "regulator" and c.role == "auditor":
        return True
    if c.org_kind == "insurer" and c.role in ("clerk", "admin"):
        acct = ctx.get("acct/" + enrol["pseudonym"])
        return acct is not None and acct["insurer"] == c.org
    if c.org == enrol["hospital"] and c.role in ("admin", "doctor", "pharmacist"):
        return True
    return _is_patient(ctx, enrol)


def _may_read_account(ctx: Context, enrol: dict) -> bool:
    """``_may_read_patient``, or a clerk/admin of the insurer a pending transfer of her account
    is addressed to -- one she asked for herself, within its 30 days (it decides whether to
    take over her balance and counters; her claims stay her insurer's to read). A request her
    insurer made without her shows it nothing: her per-disease counters tell her diagnoses."""
    if _may_read_patient(ctx, enrol):
        return True
    c = ctx.caller
    if c.org_kind != "insurer" or c.role not in ("clerk", "admin"):
        return False
    req = ctx.get("xfer/" + enrol["pseudonym"])
    return req is not None and req["to"] == c.org and req["requested_by"] == "patient" \
        and ctx.timestamp_ms <= req["ms"] + TRANSFER_EXPIRY_MS


def _insurer_tie(ctx: Context, pseudonym: str) -> None:
    """An insurer's clerk or admin reads a patient's account only holding it, or asked by her
    (a pending request she made herself names it, _asked_by_her): any other insurer is refused
    ACCESS_DENIED before her enrolment is read, the answer an enrolled patient it may not read
    gets -- it used to be UNKNOWN_PATIENT for one never enrolled. (Other roles as before.)"""
    c = ctx.caller
    if c.org_kind != "insurer":
        return
    acct = ctx.get("acct/" + pseudonym)
    if acct is not None and acct["insurer"] == c.org:
        return
    if not _asked_by_her(ctx, ctx.get("xfer/" + pseudonym)):
        ctx.fail("ACCESS_DENIED", "not allowed to read this patient's account")


def get_account(ctx: Context, pseudonym: str) -> dict:
    """Who insures the patient (the account metadata, no balance): those who may read her
    status, and hospital doctors (a prescriber wraps the claim key for her insurer)."""
    if not _is_hex(pseudonym, 64, 64):
        ctx.fail("BAD_ARGUMENTS", "pseudonym must be 64 lower-case hex (HMAC-SHA256)")
    if not _may_ask(ctx):  # before the lookup: enrolment says she is in a chronic-disease scheme
        ctx.fail("ACCESS_DENIED", "not allowed to read patients' accounts")
    _insurer_tie(ctx, pseudonym)
    enrol = ctx.get_from("registry", "patient/" + pseudonym)
    if enrol is None:
        ctx.fail("UNKNOWN_PATIENT", "patient is not enrolled")
    c = ctx.caller
    doctor = c.org_kind == "hospital" and c.role == "doctor"
    if not doctor and not _may_read_account(ctx, enrol):
        ctx.fail("ACCESS_DENIED", "not allowed to read this patient's account")
    acct = _account(ctx, pseudonym)
    return {"pseudonym": pseudonym, "insurer": acct["insurer"], "opened_ms": acct["opened_ms"]}


def _may_ask(ctx: Context) -> bool:
    """Roles that read some patients' claims and accounts (decided from the certificate alone,
    before any claim or enrolment is looked up): regulator auditors, insurer clerks and admins,
    hospital admins, doctors and pharmacists, patients. Everybody else (pharmacy staff,
    couriers, nurses, ...) is refused whatever the id: the answer cannot tell them whether it
    exists."""
    c = ctx.caller
    if c.role == "patient":  # her certificate is issued by an org of any kind (a hospital's)
        return True
    if c.org_kind == "regulator":
        return c.role == "auditor"
    if c.org_kind == "insurer":
        return c.role in ("clerk", "admin")
    if c.org_kind == "hospital":
        return c.role in ("admin", "doctor", "pharmacist")
    return False


def get_claim(ctx: Context, claim_id: str) -> dict:
    """A claim record (the insurer, the patient's hospital, the patient, auditors).

    Existence is never told to a caller who may not read the claim (a claim id is derived from
    the prescription id and the fill: its existence says the prescription was dispensed and
    claimed): a role that reads no claims at all is refused ACCESS_DENIED before anything is
    looked up; for the others a missing claim and a claim they may not read are the same
    CLAIM_NOT_FOUND, with the same message."""
    if not _is_id(claim_id, 128):
        ctx.fail("BAD_ARGUMENTS", "claim_id is 1-128 chars of [A-Za-z0-9-_.]")
    if not _may_ask(ctx):
        ctx.fail("ACCESS_DENIED", "claims are read by the patient, her hospital, her insurer and auditors")
    rec = ctx.get("claim/" + claim_id)
    enrol = None
    if rec is not None:
        enrol = ctx.get_from("registry", "patient/" + rec["patient"])
    c = ctx.caller
    own = rec is not None and c.org_kind == "insurer" and c.role in ("clerk", "admin") \
        and rec["insurer"] == c.org  # its own claim, also after her account moved
    if enrol is None or not (own or _may_read_patient(ctx, enrol)):
        ctx.fail("CLAIM_NOT_FOUND", "no claim " + claim_id + " that you may read")
    return rec


def patient_status(ctx: Context, pseudonym: str, year: int) -> dict:
    """Counters of a patient for a year (0 = this year) and the account balance."""
    if not _is_hex(pseudonym, 64, 64):
        ctx.fail("BAD_ARGUMENTS", "pseudonym must be 64 lower-case hex (HMAC-SHA256)")
    if not _may_ask(ctx):  # before the lookup, as get_account
        ctx.fail("ACCESS_DENIED", "not allowed to read patients' accounts")
    _insurer_tie(ctx, pseudonym)
    enrol = ctx.get_from("registry", "patient/" + pseudonym)
    if enrol is None:
        ctx.fail("UNKNOWN_PATIENT", "patient is not enrolled")
    if not _may_read_account(ctx, enrol):
        ctx.fail("ACCESS_DENIED", "not allowed to read this patient's account")
    if year == 0:
        year = _china_year(ctx.timestamp_ms)
    if not _is_int(year, 1970, 9999):
        ctx.fail("BAD_ARGUMENTS", "year must be 1970-9999 or 0")
    _account(ctx, pseudonym)
    ctr = _counters(ctx, pseudonym, year)
    total = 0
    for tag in sorted(ctr["cap_used"].keys()):
        total = total + ctr["cap_used"][tag]
    return {
        "pseudonym": pseudonym,
        "year": year,
        "deductible_used_fen": ctr["deductible_used_fen"],
        "cap_used_fen": total,
        "cap_used_by_disease": ctr["cap_used"],
        "account_balance_fen": _balance(ctx, pseudonym),
    }


def _may_view_rx(ctx: Context, rx: dict) -> bool:
    c = ctx.caller
    if c.org_kind == "regulator" and c.role == "auditor":
        return True
    if c.role == "patient":
        enrol = ctx.get_from("registry", "patient/" + rx["patient"])
        return enrol is not None and _may_read_patient(ctx, enrol)
    if c.role not in STAFF_ROLES:  # as prescription._can_view: a node's or client's certificate
        return False  # (peer, orderer, client) of a party's org is no party (trace: NOT_FOUND)
    if c.org == rx["hospital"] or c.org == rx["pharmacy"] or c.org == rx["insurer"]:
        return True
    if ctx.get_from("prescription", "grant/" + rx["rx_id"] + "/" + c.org) is not None:
        return True
    # as prescription._can_view: re-routed away with the latest fill not handed over yet (its
    # courier still delivers it) -- trace read it and this trail answered it NOT_FOUND
    if rx["fills"] == 0:
        return False
    disp = ctx.get_from("prescription", "disp/" + rx["rx_id"] + "/" + str(rx["fills"]).zfill(3))
    return disp is not None and disp["pharmacy"] == c.org and not disp["delivered"]


def _is_claim_cursor(s: str) -> bool:
    """A trail cursor: empty (from the start) or ``{fill3}/{n3}`` a page handed back."""
    return _only(s, "0123456789/", 0, 16)


def _own_claim_rows(ctx: Context, prefix: str, start: str, n: int, insurer: str) -> list:
    """The first ``n`` index rows ``{prefix}...`` from ``start`` on whose claim is ``insurer``'s
    (an insurer she left reads its own claims alone: its pages hold as many of them as it asks
    for, and a page's ``next`` names a row of its own, never one of the new insurer's claims).
    Paged reads until ``n`` or the end ("!" sorts below every character of the index keys;
    a page may come back shorter than asked: the sandbox caps a range)."""
    out = []
    page = ctx.range(prefix + start, prefix + "~", n)
    while len(page) > 0 and len(out) < n:
        for pair in page:
            claim = ctx.get("claim/" + pair[1]["claim_id"])
            if claim is not None and claim["insurer"] == insurer and len(out) < n:
                out.append(pair)
        if len(out) < n:
            page = ctx.range(page[len(page) - 1][0] + "!", prefix + "~", n)
    return out


def trail(ctx: Context, rx_id: str, start: str = "", limit: int = 0) -> dict:
    """Settle/reverse steps of a prescription with their blocks, from this contract's history
    index (the prescription contract's trace cannot read another namespace's history).

    Paged by claim: ``start`` is "" or the ``next`` of the previous page, ``limit`` claims
    per page 1-64 (0 = 64); ``truncated`` is true when more claims follow. A caller who is no
    party of the prescription gets the missing id's NOT_FOUND (same message), never
    ACCESS_DENIED: its existence is told to its parties only."""
    if not _is_id(rx_id, 64):
        ctx.fail("BAD_ARGUMENTS", "rx_id must be 1-64 chars of [A-Za-z0-9-_.]")
    if not _is_claim_cursor(start) or not _is_int(limit, 0, TRAIL_PAGE):
        ctx.fail("BAD_ARGUMENTS", "start is a cursor from an earlier page's next (or empty), limit 0-64")
    if limit == 0:
        limit = TRAIL_PAGE
    rx = ctx.get_from("prescription", "rx/" + rx_id)
    if rx is None or not _may_view_rx(ctx, rx):  # a non-party: as a missing id (as prescription.trace)
        ctx.fail("NOT_FOUND", "no prescription " + rx_id)
    only = ""  # an insurer she left: the claims it settled alone (README "Moving an account")
    c = ctx.caller
    if c.org_kind == "insurer":
        acct = ctx.get("acct/" + rx["patient"])
        if acct is None or acct["insurer"] != c.org:
            only = c.org
    prefix = "rxclaim/" + rx_id + "/"
    if only != "":
        rows = _own_claim_rows(ctx, prefix, start, limit + 1, only)
    else:
        rows = ctx.range(prefix + start, prefix + "~", limit + 1)
    steps = []
    for pair in rows[0:limit]:
        for h in ctx.history("claim/" + pair[1]["claim_id"], 16):
            if h["is_delete"] or h["value"] is None:
                continue
            if only != "" and h["value"]["insurer"] != only:
                continue
            ev = h["value"]["events"][len(h["value"]["events"]) - 1]
            steps.append(
                {
                    "step": ev["step"],
                    "actor": ev["actor"],
                    "org": ev["org"],
                    "role": ev["role"],
                    "time_ms": h["timestamp_ms"],
                    "tx_id": h["tx_id"],
                    "block": h["block"],
                    "detail": {"claim_id": pair[1]["claim_id"], "fill": h["value"]["fill"]},
                }
            )
    next_key = ""
    if len(rows) > limit:
        next_key = rows[limit][0][len(prefix):]
    return {"rx_id": rx_id, "steps": steps, "next": next_key, "truncated": next_key != ""}
