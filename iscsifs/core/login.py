"""The login phase of one connection, initiator side (RFC 7143 §6.3, §11.12, §11.13).

Owns: the sequence of Login Requests from the first one to full feature phase — the security
stage (CSG=0: names, SessionType, AuthMethod, CHAP driven through
`iscsifs.core.chap.ChapInitiator`), the operational stage (CSG=1: keys negotiated by
`iscsifs.core.keys.Negotiator`), the T (transit) and C (continue) bits, the version check,
ITT/ISID/TSIH checks, CmdSN / ExpStatSN tracking during login, and the mapping of Login
Response status classes to exceptions.

Knows nothing of sockets or time: ``start()`` gives the first LoginRequest, each
``receive(LoginResponse)`` gives the next LoginRequest or a LoginComplete. Any failure raises
(LoginError, AuthenticationError, RemoteProtocolError) and leaves the object failed; the caller
then closes the connection (RFC 7143 §6.2: on a negotiation violation the initiator MUST drop
the connection). Exception messages are one line naming the target and never carry secrets.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from iscsifs.core.keys import (
    NOT_UNDERSTOOD,
    Negotiator,
    NegotiatedParams,
    LoginParams,
    Pairs,
    TextAccumulator,
    encode_text,
)
from iscsifs.core.pdu import LoginRequest, LoginResponse
from iscsifs.errors import (
    AuthenticationError,
    LocalProtocolError,
    LoginError,
    RemoteProtocolError,
)

if TYPE_CHECKING:
    from iscsifs.core.chap import ChapCredentials

log = logging.getLogger(__name__)

# Stages, RFC 7143 §11.12 (CSG / NSG)
SECURITY = 0
OPERATIONAL = 1
FULL_FEATURE = 3

LOGIN_ITT = 0               # one ITT for the whole login (RFC 7143 §11.12)
ISCSI_VERSION = 0x00        # §11.12: Version-max / Version-min
# During login both sides must accept 8192 bytes of data per PDU (§13.12 default); longer
# text is split with the C bit (§11.12.2).
LOGIN_SEGMENT = 8192
MAX_EXCHANGES = 32          # round trips before we give up on a login that does not converge

# Login status (RFC 7143 §11.13): class 1 redirection, 2 initiator error, 3 target error.
_STATUS_TEXT = {
    (1, 1): "target moved temporarily",
    (1, 2): "target moved permanently",
    (2, 0): "initiator error",
    (2, 1): "authentication failure",
    (2, 2): "authorization failure (this initiator may not access the target)",
    (2, 3): "target not found",
    (2, 4): "target removed",
    (2, 5): "unsupported iSCSI version",
    (2, 6): "too many connections",
    (2, 7): "missing parameter",
    (2, 8): "cannot include this connection in the session",
    (2, 9): "session type not supported",
    (2, 10): "session does not exist",
    (2, 11): "invalid request during login",
    (3, 0): "target error",
    (3, 1): "service unavailable",
    (3, 2): "out of resources",
}
_CHAP_NOT_CONFIGURED = ("CHAP authentication is required by the target but not configured "
                        "(set node.session.auth.username and password)")
_CLASS_TEXT = {1: "redirection", 2: "initiator error", 3: "target error"}


@dataclass(frozen=True)
class LoginComplete:
    """The login reached full feature phase."""

    params: NegotiatedParams
    tsih: int
    isid: int
    cmd_sn: int             # the CmdSN of the first command (login does not advance it)
    exp_cmd_sn: int
    max_cmd_sn: int
    exp_stat_sn: int        # the StatSN we expect next
    auth_method: str        # "None" or "CHAP"


class _State(enum.Enum):
    IDLE = "idle"
    SECURITY = "security"
    OPERATIONAL = "operational"
    DONE = "done"
    FAILED = "failed"


class Login:
    """One connection's login. See the module docstring."""

    def __init__(self, *, initiator_name: str, target_name: str | None, isid: int,
                 tsih: int = 0, cid: int = 0,
                 session_type: Literal["Normal", "Discovery"] = "Normal",
                 params: LoginParams = LoginParams(),
                 chap: ChapCredentials | None = None, initiator_alias: str | None = None,
                 cmd_sn: int = 0, exp_stat_sn: int = 0):
        if session_type not in ("Normal", "Discovery"):
            raise LocalProtocolError(f"unknown session type {session_type!r}")
        if session_type == "Normal" and not target_name:
            raise LocalProtocolError("a Normal session needs a target name")
        if not 0 <= isid < 1 << 48:
            raise LocalProtocolError("ISID must be a 48-bit number")
        if not 0 <= tsih <= 0xFFFF or not 0 <= cid <= 0xFFFF:
            raise LocalProtocolError("TSIH and CID are 16-bit numbers")
        if not initiator_name:
            raise LocalProtocolError("an initiator name is required")
        self.initiator_name = initiator_name
        self.target_name = target_name if session_type == "Normal" else None
        self.session_type = session_type
        self.isid = isid
        self.tsih = tsih
        self.cid = cid
        self.initiator_alias = initiator_alias
        self.cmd_sn = cmd_sn & 0xFFFFFFFF
        self.exp_stat_sn = exp_stat_sn & 0xFFFFFFFF
        self.exp_cmd_sn = self.cmd_sn
        self.max_cmd_sn = self.cmd_sn
        self.auth_method: str | None = None
        self._creds = chap
        self._chap = None               # ChapInitiator once the target picks CHAP
        self._negotiator = Negotiator(params, session_type)
        self._text = TextAccumulator()
        self._state = _State.IDLE
        self._first_response = True
        self._exchanges = 0
        self._outbox: list[LoginRequest] = []   # our own C-bit continuation PDUs
        self._last: LoginRequest | None = None
        self._transit_asked = False             # our last (non-continuation) request's T bit
        # With mutual CHAP configured we insist that the target authenticates itself, so we
        # do not offer "None" (a target picking None would skip mutual authentication).
        if chap is None:
            self._auth_offer = ["None"]
        elif chap.mutual:
            self._auth_offer = ["CHAP"]
        else:
            self._auth_offer = ["CHAP", "None"]

    # -- public -------------------------------------------------------------------------------

    @property
    def who(self) -> str:
        """How messages name the login's target."""
        return self.target_name if self.target_name else "discovery session"

    @property
    def done(self) -> bool:
        return self._state is _State.DONE

    def start(self) -> LoginRequest:
        """The first Login Request: security stage (open-iscsi always starts there)."""
        if self._state is not _State.IDLE:
            raise LocalProtocolError("Login.start() called twice")
        self._state = _State.SECURITY
        pairs: Pairs = [("InitiatorName", self.initiator_name)]
        if self.initiator_alias:
            pairs.append(("InitiatorAlias", self.initiator_alias))
        pairs.append(("SessionType", self.session_type))
        if self.target_name:
            pairs.append(("TargetName", self.target_name))
        pairs.append(("AuthMethod", ",".join(self._auth_offer)))
        # Without CHAP there is nothing more to say in the security stage: ask to transit.
        transit = self._creds is None
        log.debug("login to %s: starting (ISID 0x%012x, TSIH %d, CID %d, AuthMethod=%s)",
                  self.who, self.isid, self.tsih, self.cid, ",".join(self._auth_offer))
        return self._send(SECURITY, OPERATIONAL, transit, pairs)

    def receive(self, resp: LoginResponse) -> LoginRequest | LoginComplete:
        """Take the target's Login Response; return the next request or LoginComplete."""
        if self._state in (_State.IDLE, _State.DONE, _State.FAILED):
            raise LocalProtocolError(f"Login.receive() in state {self._state.value}")
        try:
            return self._receive(resp)
        except LoginError as exc:   # includes AuthenticationError
            self._state = _State.FAILED
            if exc.who is None:
                exc.located(self.who)
            raise
        except RemoteProtocolError as exc:
            self._state = _State.FAILED
            if exc.who is None:
                exc.located(self.who)
            raise
        except BaseException:
            self._state = _State.FAILED
            raise

    # -- sending ------------------------------------------------------------------------------

    def _send(self, csg: int, nsg: int, transit: bool, pairs: Pairs, *,
              continuation: bool = False) -> LoginRequest:
        """Build the request(s) for ``pairs``; text over 8192 bytes goes out in C-bit PDUs.

        ``continuation``: an empty request that only fetches the rest of a continued response;
        it does not withdraw an earlier request to transit (the final part may carry T=1).
        """
        if not continuation:
            self._transit_asked = transit
        self._exchanges += 1
        if self._exchanges > MAX_EXCHANGES:
            raise RemoteProtocolError(f"login did not complete after {MAX_EXCHANGES} "
                                      f"exchanges")
        data = encode_text(pairs)
        chunks = [data[i:i + LOGIN_SEGMENT] for i in range(0, len(data), LOGIN_SEGMENT)] or [b""]
        requests = []
        for n, chunk in enumerate(chunks):
            last = n == len(chunks) - 1
            # §11.12.2: a Login Request with C=1 MUST have T=0
            requests.append(LoginRequest(
                isid=self.isid, tsih=self.tsih, itt=LOGIN_ITT, cid=self.cid,
                cmd_sn=self.cmd_sn, exp_stat_sn=self.exp_stat_sn, csg=csg, nsg=nsg,
                transit=transit and last, cont=not last, version_max=ISCSI_VERSION,
                version_min=ISCSI_VERSION, data=chunk))
        self._outbox = requests[1:]
        return self._emit(requests[0])

    def _emit(self, req: LoginRequest) -> LoginRequest:
        # ExpStatSN may have advanced since the request was built
        if req.exp_stat_sn != self.exp_stat_sn:
            req = LoginRequest(
                isid=req.isid, tsih=req.tsih, itt=req.itt, cid=req.cid, cmd_sn=req.cmd_sn,
                exp_stat_sn=self.exp_stat_sn, csg=req.csg, nsg=req.nsg, transit=req.transit,
                cont=req.cont, version_max=req.version_max, version_min=req.version_min,
                data=req.data)
        self._last = req
        log.debug("login to %s: request CSG=%d NSG=%d T=%d C=%d %d bytes", self.who, req.csg,
                  req.nsg, req.transit, req.cont, len(req.data))
        return req

    def _empty(self, csg: int, nsg: int, transit: bool) -> LoginRequest:
        return self._send(csg, nsg, transit, [])

    # -- receiving ----------------------------------------------------------------------------

    def _receive(self, resp: LoginResponse) -> LoginRequest | LoginComplete:
        if not isinstance(resp, LoginResponse):
            raise RemoteProtocolError(f"expected a Login Response, got {type(resp).__name__}")
        assert self._last is not None
        # Status first: a failed login ends here whatever else the header says, and some
        # targets (tgt) leave ISID/ITT zero in a failure response.
        if resp.status_class != 0:
            self._status_error(resp)
        if resp.itt != LOGIN_ITT:
            raise RemoteProtocolError(f"Login Response with ITT 0x{resp.itt:08x}, "
                                      f"expected 0x{LOGIN_ITT:08x}")
        if resp.isid != self.isid:
            raise RemoteProtocolError(f"Login Response for ISID 0x{resp.isid:012x}, "
                                      f"ours is 0x{self.isid:012x}")
        if resp.status_detail != 0:
            raise RemoteProtocolError(f"Login Response status 0x00{resp.status_detail:02x} "
                                      f"is not defined")
        # §11.13: Version-active must be within what we offered (only version 0 exists)
        if resp.version_active != ISCSI_VERSION:
            raise RemoteProtocolError(f"target chose iSCSI version {resp.version_active}, "
                                      f"we support only {ISCSI_VERSION}")
        self._track_sequence(resp)
        if self.tsih and resp.tsih not in (0, self.tsih):
            raise RemoteProtocolError(f"Login Response with TSIH {resp.tsih}, ours is "
                                      f"{self.tsih}")
        last = self._last
        if resp.csg != last.csg:
            raise RemoteProtocolError(f"Login Response for stage {resp.csg}, we are in stage "
                                      f"{last.csg}")
        if resp.transit and not self._transit_asked:
            raise RemoteProtocolError("target set the T bit although we did not ask to transit")
        if resp.transit and resp.cont:
            raise RemoteProtocolError("Login Response with both T and C bits (§11.13)")
        if resp.transit and (resp.nsg not in (OPERATIONAL, FULL_FEATURE)
                             or resp.nsg <= resp.csg or resp.nsg > last.nsg):
            raise RemoteProtocolError(f"target chose next stage {resp.nsg} from stage "
                                      f"{resp.csg} (we asked for {last.nsg})")

        if last.cont:
            # §11.12.2: while our own text is continued the target answers with empty responses
            if resp.data or resp.transit or resp.cont:
                raise RemoteProtocolError("target answered a continued Login Request with "
                                          "more than an empty response")
            return self._emit(self._outbox.pop(0))

        pairs = self._text.add(resp.data, resp.cont)
        if pairs is None:
            # §11.13: continued response; answer with an empty request, T=0 C=0
            return self._send(last.csg, last.nsg, False, [], continuation=True)
        log.debug("login to %s: response CSG=%d NSG=%d T=%d keys %s", self.who, resp.csg,
                  resp.nsg, resp.transit, [k for k, _ in pairs])
        keys = [k for k, _ in pairs]
        for key in keys:
            if keys.count(key) > 1:
                raise RemoteProtocolError(f"key {key} sent twice in one Login Response")
        if last.csg == SECURITY:
            return self._security(resp, pairs)
        return self._operational(resp, pairs)

    def _track_sequence(self, resp: LoginResponse) -> None:
        """StatSN / ExpCmdSN / MaxCmdSN during login (§11.13, §4.2.2)."""
        if self._first_response:
            # the first response's StatSN starts the connection's status numbering
            self._first_response = False
        elif resp.stat_sn != self.exp_stat_sn:
            log.warning("login to %s: StatSN %d, expected %d; resynchronising", self.who,
                        resp.stat_sn, self.exp_stat_sn)
        self.exp_stat_sn = (resp.stat_sn + 1) & 0xFFFFFFFF
        self.exp_cmd_sn = resp.exp_cmd_sn
        self.max_cmd_sn = resp.max_cmd_sn

    def _status_error(self, resp: LoginResponse) -> None:
        cls, detail = resp.status_class, resp.status_detail
        reason = _STATUS_TEXT.get((cls, detail)) or _CLASS_TEXT.get(cls, "unknown status class")
        status = f"status 0x{cls:02x}{detail:02x}"
        if cls == 1:
            address = None
            try:
                for key, value in TextAccumulator().add(resp.data, False) or []:
                    if key == "TargetAddress":
                        address = value
            except RemoteProtocolError:
                pass
            where = f" to {address}" if address else " without a new address"
            raise LoginError(f"redirected: {reason}{where} ({status})", cls, detail,
                             target_address=address)
        message = f"{reason} ({status})"
        hint = self._chap_algs_hint(cls, detail)
        if cls == 2 and detail in (1, 2):
            if detail == 1 and self._creds is None:
                message += "; the target may require CHAP, which is not configured"
            elif detail == 1:
                message += "; check the CHAP username and password"
            if hint:
                message += f"; {hint}"
            raise AuthenticationError(message, cls, detail)
        if hint:
            message += f"; {hint}"
        if cls == 3:
            message += "; try again later"
        raise LoginError(message, cls, detail)

    def _chap_algs_hint(self, cls: int, detail: int) -> str:
        """For a CHAP login the target ended with "initiator error" or "authentication
        failure" after we offered more than MD5: name the key that changes the offer. tgt
        answers CHAP_A=7 (SHA-256) but computes SHA-1, and refuses algorithms it lacks with
        status 0x0200 (RFC 7143 §12.1.3 lists 5 (MD5) as the one every target has)."""
        if self.auth_method != "CHAP" or self._creds is None or (cls, detail) not in (
                (2, 0), (2, 1)):
            return ""
        algs = self._creds.algorithms
        if algs == ("MD5",):
            return ""
        key = ("node.session.auth.chap_algs" if self.session_type == "Normal"
               else "discovery.sendtargets.auth.chap_algs")
        return (f"the target may lack or mishandle the CHAP algorithms offered "
                f"({','.join(algs)}; tgt gets SHA256 wrong): set {key} = MD5")

    # -- security stage (§6.3, §12) -------------------------------------------------------------

    def _security(self, resp: LoginResponse, pairs: Pairs) -> LoginRequest | LoginComplete:
        declarations = [(k, v) for k, v in pairs
                        if k in ("TargetAlias", "TargetPortalGroupTag")]
        self._negotiator.receive(declarations)
        values = dict(pairs)
        for key in values:
            if key not in ("AuthMethod", "TargetAlias", "TargetPortalGroupTag") \
                    and not key.startswith("CHAP_"):
                log.debug("login to %s: ignoring %s in the security stage", self.who, key)

        if self.auth_method is None:
            return self._auth_method_answer(resp, values)
        if "AuthMethod" in values:
            raise RemoteProtocolError("target sent AuthMethod twice")
        if self.auth_method == "CHAP":
            return self._chap_step(resp, pairs)
        return self._security_continue(resp)

    def _auth_method_answer(self, resp: LoginResponse,
                            values: dict[str, str]) -> LoginRequest | LoginComplete:
        method = values.get("AuthMethod")
        if method is None:
            if any(k.startswith("CHAP_") for k in values):
                raise RemoteProtocolError("target sent CHAP keys before choosing AuthMethod")
            if not resp.transit:
                # nothing chosen yet (e.g. a response carrying only TargetPortalGroupTag)
                return self._empty(SECURITY, OPERATIONAL, self._last.transit)
            if "None" not in self._auth_offer:
                raise AuthenticationError("the target skipped authentication, but mutual "
                                          "CHAP is configured")
            log.info("login to %s: target did not answer AuthMethod; assuming None", self.who)
            method = "None"
        if method == "CHAP":
            if self._creds is None:
                raise AuthenticationError(_CHAP_NOT_CONFIGURED, 2, 1)
            if resp.transit:
                raise RemoteProtocolError("target chose CHAP but left the security stage")
            from iscsifs.core.chap import ChapInitiator   # only needed when CHAP is in use
            self.auth_method = "CHAP"
            self._chap = ChapInitiator(self._creds)
            return self._send(SECURITY, OPERATIONAL, False, self._chap.first_keys())
        if method == "None" and "None" in self._auth_offer:
            self.auth_method = "None"
            return self._security_continue(resp)
        if method == "None":
            raise AuthenticationError("the target offers no authentication, but mutual CHAP "
                                      "is configured")
        if method == "Reject":
            if self._creds is None:
                raise AuthenticationError("the target refused AuthMethod=None; "
                                          + _CHAP_NOT_CONFIGURED, 2, 1)
            raise AuthenticationError(f"the target accepts none of the authentication "
                                      f"methods {','.join(self._auth_offer)}")
        raise RemoteProtocolError(f"target chose AuthMethod={method[:40]!r}, which we did not "
                                  f"offer ({','.join(self._auth_offer)})")

    def _chap_step(self, resp: LoginResponse, pairs: Pairs) -> LoginRequest | LoginComplete:
        chap = self._chap
        assert chap is not None
        if chap.awaiting_target:
            chap.verify(pairs)                 # mutual: the target's CHAP_N / CHAP_R
            log.debug("login to %s: target authenticated (mutual CHAP)", self.who)
            return self._security_continue(resp)
        if chap.done:
            if any(k.startswith("CHAP_") for k, _ in pairs):
                raise RemoteProtocolError("target sent CHAP keys after CHAP completed")
            return self._security_continue(resp)
        if resp.transit:
            raise AuthenticationError("target left the security stage before CHAP completed")
        answer = chap.receive(pairs)
        if answer is None:
            return self._empty(SECURITY, OPERATIONAL, False)   # CHAP_A only; wait for CHAP_C
        # we are ready to leave the security stage once the target accepts our response
        return self._send(SECURITY, OPERATIONAL, True, answer)

    def _security_continue(self, resp: LoginResponse) -> LoginRequest | LoginComplete:
        """Authentication is settled: move on when the target transits, else ask to."""
        if not resp.transit:
            return self._empty(SECURITY, OPERATIONAL, True)
        if resp.nsg == FULL_FEATURE:   # impossible while we ask for NSG=1; kept for clarity
            return self._complete(resp)
        self._state = _State.OPERATIONAL
        return self._send(OPERATIONAL, FULL_FEATURE, True, self._negotiator.offer())

    # -- operational stage (§6.2, §13) ----------------------------------------------------------

    def _operational(self, resp: LoginResponse, pairs: Pairs) -> LoginRequest | LoginComplete:
        answers = self._negotiator.receive(pairs)
        if resp.transit:
            # §6.2: a key we do not understand only ever gets "NotUnderstood", which commits
            # neither side to anything; in the final response nothing is left to carry it, so
            # the key is ignored (an X- vendor key, iSCSIProtocolLevel, a key from a newer RFC)
            ignored = [k for k, v in answers if v == NOT_UNDERSTOOD]
            if ignored:
                log.info("login to %s: ignoring %s in the final login response", self.who,
                         ", ".join(ignored))
                answers = [(k, v) for k, v in answers if v != NOT_UNDERSTOOD]
            if answers:
                raise RemoteProtocolError(
                    f"target ended the login while proposing {', '.join(k for k, _ in answers)}"
                    f" without waiting for our answer")
            return self._complete(resp)
        return self._send(OPERATIONAL, FULL_FEATURE, True, answers)

    def _complete(self, resp: LoginResponse) -> LoginComplete:
        # §11.13 TSIH: the final response of a leading login carries the new session's TSIH
        if resp.tsih == 0:
            raise RemoteProtocolError("final Login Response has TSIH 0")
        if self.tsih and resp.tsih != self.tsih:
            raise RemoteProtocolError(f"final Login Response has TSIH {resp.tsih}, ours is "
                                      f"{self.tsih}")
        params = self._negotiator.result()
        self._state = _State.DONE
        done = LoginComplete(params=params, tsih=resp.tsih, isid=self.isid, cmd_sn=self.cmd_sn,
                             exp_cmd_sn=self.exp_cmd_sn, max_cmd_sn=self.max_cmd_sn,
                             exp_stat_sn=self.exp_stat_sn, auth_method=self.auth_method or "None")
        log.debug("login to %s complete: TSIH %d, AuthMethod=%s", self.who, done.tsih,
                 done.auth_method)
        return done
