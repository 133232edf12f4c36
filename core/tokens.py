"""Device tokens and backend API keys.

A device token is a JWT with claims `sub` (user id), `cid` (client id), `dt` (device type) and
`exp`. Nodes that sign tokens hold the HS256 secret; nodes that only verify may instead hold an
RS256/ES256 public key, so edge nodes need not carry the signing key. `alg: none`, any algorithm
not configured, a wrong signature, a missing claim or an expired token is rejected with
`InvalidToken` naming the reason.

Token times (`exp`, `iat`) are the system's wall clock (`core.clock.wall_s`), not an injected
one: PyJWT, which checks every token the fast HS256 path does not take, reads the system clock
itself, and both paths must judge a token alike.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from core.clock import wall_s
from core.errors import Forbidden, InvalidToken, Unauthorized

_CLAIMS = ("sub", "cid", "dt", "exp")
_FAST_HEADERS = frozenset({b'{"alg":"HS256","typ":"JWT"}', b'{"typ":"JWT","alg":"HS256"}'})
"""Header JSON the HS256 fast path takes as is (PyJWT and jose libraries write these)."""
_FAST_CLAIMS = frozenset({"sub", "cid", "dt", "exp", "iat"})
"""Claims the fast path knows; a token with any other (`aud`, `nbf`, ...) takes PyJWT's path."""
_ASYMMETRIC = ("RS256", "ES256")


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """Who a verified device token says the device is."""

    client_id: str
    user_id: str
    device_type: str
    expires_at: int


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Secrets: `secret` signs and checks HS256 tokens; `public_key` (PEM text or the path of a
    PEM file) checks RS256/ES256 tokens."""

    secret: str = ""
    public_key: str = ""
    api_keys: tuple[str, ...] = ()
    admin_key: str = ""


class TokenVerifier:
    """Checks device tokens against the configured keys. Stateless after construction."""

    __slots__ = ("_algorithms", "_hs256", "_keys")

    def __init__(self, config: AuthConfig) -> None:
        keys: list[tuple[object, list[str]]] = []
        if config.secret:
            keys.append((config.secret, ["HS256"]))
        if config.public_key:
            # Parsed once here: PyJWT would otherwise parse the PEM on every verification.
            public_key = serialization.load_pem_public_key(_pem(config.public_key))
            keys.append((public_key, [_algorithm_of(public_key)]))
        if not keys:
            raise ValueError("a device-token secret or public key is required")
        self._keys = tuple(keys)
        self._algorithms = tuple(alg for _, algs in keys for alg in algs)
        # The keyed HMAC state, made once: each check copies it (PyJWT would prepare the key,
        # parse the header twice and run its claim validators on every token).
        self._hs256 = hmac.new(config.secret.encode(), digestmod=hashlib.sha256) \
            if config.secret else None

    def verify(self, token: str) -> DeviceIdentity:
        """The identity in `token`, or InvalidToken saying why not."""
        if not token:
            raise InvalidToken("missing device token")
        if self._hs256 is not None:
            identity = self._fast_hs256(token, self._hs256)
            if identity is not None:
                return identity
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("malformed device token") from None
        alg = header.get("alg")
        for key, algorithms in self._keys:
            if alg in algorithms:
                return self._decode(token, key, algorithms)
        raise InvalidToken(f"token algorithm {alg!r} is not accepted")

    @staticmethod
    def _fast_hs256(token: str, mac: hmac.HMAC) -> DeviceIdentity | None:
        """The identity of a well-formed, valid HS256 token with a usual header and only our
        claims; None for anything else (invalid, expired, unusual), which then takes PyJWT's
        path, so that a token is rejected, and with the same words, exactly as before. Accepts
        only what PyJWT accepts: a good signature, `exp` an integer in the future, `iat` (if
        present) an integer not in the future, the required claims present."""
        try:
            raw = token.encode("ascii")
        except UnicodeEncodeError:
            return None
        signing_input, dot, signature = raw.rpartition(b".")
        header, dot2, payload = signing_input.partition(b".")
        if not dot or not dot2 or b"." in payload:
            return None
        try:
            if _b64(header) not in _FAST_HEADERS:
                return None
            digest = mac.copy()
            digest.update(signing_input)
            if not hmac.compare_digest(digest.digest(), _b64(signature)):
                return None
            claims = orjson.loads(_b64(payload))
        except (binascii.Error, ValueError):
            return None
        if type(claims) is not dict or not claims.keys() <= _FAST_CLAIMS or \
                not all(name in claims for name in _CLAIMS):
            return None
        now = wall_s()
        exp, iat = claims["exp"], claims.get("iat", 0)
        if type(exp) is not int or exp <= now or type(iat) is not int or iat > now:
            return None
        try:
            return _identity(claims)
        except InvalidToken:
            return None

    @staticmethod
    def _decode(token: str, key: object, algorithms: list[str]) -> DeviceIdentity:
        try:
            claims = jwt.decode(
                token, key, algorithms=algorithms,  # type: ignore[arg-type]
                options={"require": list(_CLAIMS)},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("device token expired") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(f"device token lacks claim {exc.claim!r}") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken("device token signature is invalid") from None
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"device token rejected: {exc}") from None
        return _identity(claims)


def _b64(segment: bytes) -> bytes:
    """base64url without padding, strictly (binascii.Error on a character outside it)."""
    return base64.b64decode(segment.replace(b"-", b"+").replace(b"_", b"/")
                            + b"=" * (-len(segment) % 4), validate=True)


def _algorithm_of(public_key: object) -> str:
    """The one algorithm a public key verifies: PyJWT raises TypeError, not a PyJWTError, when
    a token names the other key type's algorithm (ES256 against an RSA key)."""
    if isinstance(public_key, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return "ES256"
    raise ValueError(f"public_key: a {'/'.join(_ASYMMETRIC)} key is needed (RSA or EC P-256)")


def _pem(value: str) -> bytes:
    """`public_key` is PEM text, or the path of a file holding it."""
    if value.lstrip().startswith("-----BEGIN"):
        return value.encode()
    try:
        return Path(value).read_bytes()
    except OSError as exc:
        raise ValueError(f"public_key: cannot read {value!r}: {exc.strerror}") from None


def _identity(claims: dict[str, object]) -> DeviceIdentity:
    values = []
    for claim in ("cid", "sub", "dt"):
        value = claims[claim]
        if not isinstance(value, str) or not value or len(value) > 256:
            raise InvalidToken(f"device token claim {claim!r} must be a non-empty string")
        values.append(value)
    exp = claims["exp"]
    if not isinstance(exp, int):
        raise InvalidToken("device token claim 'exp' must be an integer")
    # Device types are few and repeated on every connection: share one string object each.
    return DeviceIdentity(values[0], values[1], sys.intern(values[2]), exp)


def issue_token(
    secret: str,
    *,
    client_id: str,
    user_id: str,
    device_type: str,
    ttl_s: int = 24 * 3600,
    now: float | None = None,
) -> str:
    """A signed HS256 device token issued at `now` (wall-clock seconds; the system clock's by
    default). For RS256/ES256, sign with your own key and the same claims."""
    issued = int(wall_s() if now is None else now)
    claims = {"sub": user_id, "cid": client_id, "dt": device_type, "iat": issued,
              "exp": issued + ttl_s}
    return jwt.encode(claims, secret, algorithm="HS256")


def check_key(presented: str | None, accepted: Iterable[str], *, what: str = "API key") -> int:
    """Raise Unauthorized (absent) or Forbidden (wrong) unless `presented` is one of `accepted`;
    its position in `accepted` (the first, if listed twice): an id for the key that names it
    in logs and metrics without showing it.

    Every accepted key is compared in constant time, so timing reveals neither which key nor how
    much of one matched.
    """
    if not presented:
        raise Unauthorized(f"missing {what}: send 'Authorization: Bearer <key>'")
    candidate = presented.encode()
    found = -1
    for index, key in enumerate(accepted):
        if hmac.compare_digest(candidate, key.encode()) and found < 0:
            found = index
    if found < 0:
        raise Forbidden(f"{what} not accepted")
    return found


def bearer(authorization: str | None) -> str | None:
    """The token in an `Authorization: Bearer <token>` header value, if any."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None
