"""Unit tests of `core.tokens`: device tokens (HS256, RS256, ES256) and backend API keys.

Tokens the library would refuse to make (alg none, HS256 keyed with a public key) are built by
hand, byte by byte, as an attacker would.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from core.errors import Forbidden, InvalidToken, Unauthorized
from core.tokens import AuthConfig, DeviceIdentity, TokenVerifier, bearer, check_key, issue_token

SECRET = "auth-test-secret-of-at-least-32-bytes"
OTHER_SECRET = "another-secret-of-at-least-32-bytes!"


def claims(**replace: Any) -> dict[str, Any]:
    """Valid claims; `replace` overrides one, or removes it when given `...`."""
    values: dict[str, Any] = {"sub": "user-1", "cid": "client-1", "dt": "android",
                              "exp": int(time.time()) + 3600}
    values.update(replace)
    return {name: value for name, value in values.items() if value is not ...}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade(header: dict[str, Any], payload: dict[str, Any], key: bytes | None) -> str:
    """A compact JWS; signed with HMAC-SHA256 under `key`, or with an empty signature."""
    signing_input = f"{b64url(orjson.dumps(header))}.{b64url(orjson.dumps(payload))}"
    signature = b"" if key is None else hmac.new(key, signing_input.encode(),
                                                 hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def public_pem(
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey,
) -> str:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def other_ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


HS = TokenVerifier(AuthConfig(secret=SECRET))


def reason(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(InvalidToken) as info:
        verifier.verify(token)
    assert info.value.http_status == 401
    assert info.value.body()["error"]["code"] == "invalid_token"
    return str(info.value)


# HS256


def test_good_hs256_token() -> None:
    identity = HS.verify(jwt.encode(claims(), SECRET, algorithm="HS256"))
    assert identity == DeviceIdentity("client-1", "user-1", "android", claims()["exp"])


def test_issue_token_round_trips() -> None:
    token = issue_token(SECRET, client_id="c9", user_id="u9", device_type="tv", ttl_s=60)
    identity = HS.verify(token)
    assert (identity.client_id, identity.user_id, identity.device_type) == ("c9", "u9", "tv")
    assert identity.expires_at - int(time.time()) in range(58, 61)


def test_device_types_are_interned() -> None:
    one = HS.verify(jwt.encode(claims(dt="".join(["set", "top"])), SECRET, algorithm="HS256"))
    two = HS.verify(jwt.encode(claims(dt="".join(["set", "top"])), SECRET, algorithm="HS256"))
    assert one.device_type is two.device_type


def test_expired_token() -> None:
    token = jwt.encode(claims(exp=int(time.time()) - 60), SECRET, algorithm="HS256")
    assert "expired" in reason(HS, token)


def test_issue_token_with_past_now_is_expired() -> None:
    token = issue_token(SECRET, client_id="c", user_id="u", device_type="d", ttl_s=10,
                        now=time.time() - 100)
    assert "expired" in reason(HS, token)


def test_wrong_secret() -> None:
    assert "signature" in reason(HS, jwt.encode(claims(), OTHER_SECRET, algorithm="HS256"))


def test_alg_none_is_rejected() -> None:
    token = handmade({"alg": "none", "typ": "JWT"}, claims(), None)
    assert token.endswith(".")
    assert "'none'" in reason(HS, token)


@pytest.mark.parametrize("alg", ["None", "NONE", "HS512", "HS384", "RS256", "ES256"])
def test_unconfigured_algorithms_are_rejected(alg: str) -> None:
    assert "not accepted" in reason(HS, handmade({"alg": alg}, claims(), SECRET.encode()))


def test_header_without_alg_is_rejected() -> None:
    reason(HS, handmade({"typ": "JWT"}, claims(), SECRET.encode()))


def test_handmade_hs256_matches_the_library() -> None:
    # The hand-made tokens below are only meaningful if this helper signs like PyJWT does.
    token = handmade({"alg": "HS256", "typ": "JWT"}, claims(), SECRET.encode())
    assert HS.verify(token).client_id == "client-1"


def test_tampered_payload_is_rejected() -> None:
    header, _, signature = jwt.encode(claims(), SECRET, algorithm="HS256").split(".")
    forged_payload = b64url(orjson.dumps(claims(cid="someone-else")))
    assert "signature" in reason(HS, f"{header}.{forged_payload}.{signature}")


@pytest.mark.parametrize("claim", ["sub", "cid", "dt", "exp"])
def test_missing_claim(claim: str) -> None:
    token = jwt.encode(claims(**{claim: ...}), SECRET, algorithm="HS256")
    assert repr(claim) in reason(HS, token)


@pytest.mark.parametrize(
    "claim, value",
    [("cid", 123), ("cid", ""), ("cid", None), ("cid", ["a"]), ("cid", "x" * 257),
     ("sub", 7), ("sub", {"id": 1}), ("dt", 1.5), ("dt", True), ("dt", ""),
     ("exp", "soon"), ("exp", float(int(time.time()) + 3600))],
)
def test_non_string_or_bad_claims(claim: str, value: object) -> None:
    reason(HS, jwt.encode(claims(**{claim: value}), SECRET, algorithm="HS256"))


@pytest.mark.parametrize(
    "token", ["", "abc", "a.b", "a.b.c", "..", "é.é.é", "eyJhbGciOiJIUzI1NiJ9..", "a.b.c.d"])
def test_malformed_tokens(token: str) -> None:
    reason(HS, token)


# RS256 / ES256 with a public key only


def test_rs256_with_public_key(rsa_key: rsa.RSAPrivateKey) -> None:
    verifier = TokenVerifier(AuthConfig(public_key=public_pem(rsa_key)))
    token = jwt.encode(claims(), rsa_key, algorithm="RS256")
    assert verifier.verify(token).client_id == "client-1"


def test_es256_with_public_key(ec_key: ec.EllipticCurvePrivateKey) -> None:
    verifier = TokenVerifier(AuthConfig(public_key=public_pem(ec_key)))
    token = jwt.encode(claims(), ec_key, algorithm="ES256")
    assert verifier.verify(token).client_id == "client-1"


def test_rs256_signed_by_another_key(rsa_key: rsa.RSAPrivateKey,
                                     other_rsa_key: rsa.RSAPrivateKey) -> None:
    verifier = TokenVerifier(AuthConfig(public_key=public_pem(rsa_key)))
    assert "signature" in reason(verifier, jwt.encode(claims(), other_rsa_key, algorithm="RS256"))


def test_es256_signed_by_another_key(ec_key: ec.EllipticCurvePrivateKey,
                                     other_ec_key: ec.EllipticCurvePrivateKey) -> None:
    verifier = TokenVerifier(AuthConfig(public_key=public_pem(ec_key)))
    assert "signature" in reason(verifier, jwt.encode(claims(), other_ec_key, algorithm="ES256"))


def test_expired_rs256(rsa_key: rsa.RSAPrivateKey) -> None:
    verifier = TokenVerifier(AuthConfig(public_key=public_pem(rsa_key)))
    token = jwt.encode(claims(exp=int(time.time()) - 5), rsa_key, algorithm="RS256")
    assert "expired" in reason(verifier, token)


def test_algorithm_of_the_other_key_type_is_invalid_token(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    # An ES256 header against an RSA key (and the reverse) is a bad token, not a crash.
    rsa_verifier = TokenVerifier(AuthConfig(public_key=public_pem(rsa_key)))
    ec_verifier = TokenVerifier(AuthConfig(public_key=public_pem(ec_key)))
    reason(rsa_verifier, jwt.encode(claims(), ec_key, algorithm="ES256"))
    reason(ec_verifier, jwt.encode(claims(), rsa_key, algorithm="RS256"))


def test_hs256_keyed_with_the_public_pem_is_rejected(rsa_key: rsa.RSAPrivateKey) -> None:
    """Algorithm confusion: the public key is public, so it must never work as an HMAC secret."""
    pem = public_pem(rsa_key)
    forged = handmade({"alg": "HS256", "typ": "JWT"}, claims(), pem.encode())
    public_only = TokenVerifier(AuthConfig(public_key=pem))
    assert "not accepted" in reason(public_only, forged)
    both = TokenVerifier(AuthConfig(secret=SECRET, public_key=pem))
    assert "signature" in reason(both, forged)


def test_verifier_with_secret_and_public_key_takes_both(rsa_key: rsa.RSAPrivateKey) -> None:
    both = TokenVerifier(AuthConfig(secret=SECRET, public_key=public_pem(rsa_key)))
    assert both.verify(jwt.encode(claims(cid="hs"), SECRET, algorithm="HS256")).client_id == "hs"
    rs = jwt.encode(claims(cid="rs"), rsa_key, algorithm="RS256")
    assert both.verify(rs).client_id == "rs"


def test_verifier_needs_a_key() -> None:
    with pytest.raises(ValueError):
        TokenVerifier(AuthConfig())


def test_public_key_of_an_unsupported_type_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="public_key"):
        TokenVerifier(AuthConfig(public_key=public_pem(ed25519.Ed25519PrivateKey.generate())))


# API keys and the Authorization header


def test_check_key_accepts_any_configured_key() -> None:
    check_key("k2", ("k1", "k2", "k3"))
    check_key("ключ", ("ключ",))


@pytest.mark.parametrize("presented", [None, ""])
def test_check_key_missing_is_unauthorized(presented: str | None) -> None:
    with pytest.raises(Unauthorized) as info:
        check_key(presented, ("k1",))
    assert info.value.http_status == 401


@pytest.mark.parametrize("presented", ["k", "k11", "K1", "k1 ", "x"])
def test_check_key_wrong_is_forbidden(presented: str) -> None:
    with pytest.raises(Forbidden) as info:
        check_key(presented, ("k1",), what="admin key")
    assert info.value.http_status == 403
    assert "admin key" in str(info.value)


def test_check_key_with_no_keys_configured_forbids() -> None:
    with pytest.raises(Forbidden):
        check_key("anything", ())


@pytest.mark.parametrize(
    "header, expected",
    [(None, None), ("", None), ("Bearer abc", "abc"), ("bearer  abc ", "abc"),
     ("Basic abc", None), ("Bearer", None), ("Bearer   ", None)],
)
def test_bearer(header: str | None, expected: str | None) -> None:
    assert bearer(header) == expected


# the HS256 fast path: it accepts only what PyJWT accepts, and leaves the rest to PyJWT


def test_fast_path_takes_a_usual_token() -> None:
    verifier = TokenVerifier(AuthConfig(secret=SECRET))
    token = issue_token(SECRET, client_id="c", user_id="u", device_type="tv")
    assert TokenVerifier._fast_hs256(token, verifier._hs256) is not None  # type: ignore[arg-type]
    assert verifier.verify(token) == TokenVerifier._decode(token, SECRET, ["HS256"])


@pytest.mark.parametrize("payload", [
    claims(exp=int(time.time()) - 1),          # expired
    claims(iat=int(time.time()) + 3600),       # issued in the future
    claims(aud="someone"),                     # a claim PyJWT checks
    claims(nbf=int(time.time()) + 3600),
    claims(exp=float(time.time() + 3600)),     # not an int
    claims(cid=...),                           # missing claim
    claims(dt=""),                             # empty claim
])
def test_fast_path_defers_what_it_does_not_accept(payload: dict[str, Any]) -> None:
    verifier = TokenVerifier(AuthConfig(secret=SECRET))
    token = handmade({"alg": "HS256", "typ": "JWT"}, payload, SECRET.encode())
    assert TokenVerifier._fast_hs256(token, verifier._hs256) is None  # type: ignore[arg-type]
    try:
        expected: DeviceIdentity | str = TokenVerifier._decode(token, SECRET, ["HS256"])
    except InvalidToken as exc:
        expected = str(exc)
    try:
        got: DeviceIdentity | str = verifier.verify(token)
    except InvalidToken as exc:
        got = str(exc)
    assert got == expected


@pytest.mark.parametrize("header", [
    {"alg": "HS256", "typ": "JWT", "kid": "k"}, {"alg": "HS384", "typ": "JWT"}, {"alg": "none"}])
def test_fast_path_defers_unusual_headers(header: dict[str, Any]) -> None:
    verifier = TokenVerifier(AuthConfig(secret=SECRET))
    token = handmade(header, claims(), SECRET.encode())
    assert TokenVerifier._fast_hs256(token, verifier._hs256) is None  # type: ignore[arg-type]


def test_fast_path_defers_a_wrong_signature_and_garbage() -> None:
    verifier = TokenVerifier(AuthConfig(secret=SECRET))
    for token in (issue_token(OTHER_SECRET, client_id="c", user_id="u", device_type="tv"),
                  "a.b.c", "a.b", "a.b.c.d", "ä.b.c", "...", "e30.e30.!!"):
        assert TokenVerifier._fast_hs256(token, verifier._hs256) is None  # type: ignore[arg-type]
        with pytest.raises(InvalidToken):
            verifier.verify(token)
