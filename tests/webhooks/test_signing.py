import hashlib
import hmac

import pytest

from apten_assets.webhooks.signing import sign, verify

BODY = (
    '{"event":"call.completed","data":{"profile":"Café – 北京"},"timestamp":"2024-01-15T14:30:00Z"}'.encode()
)
SECRET = "s3cret"


def test_sign_is_hex_hmac_sha256_of_the_raw_body() -> None:
    assert sign(BODY, SECRET) == hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()


@pytest.mark.parametrize(
    "header",
    [
        sign(BODY, SECRET),
        sign(BODY, SECRET).upper(),
        f"  {sign(BODY, SECRET)}\t",
        f"sha256={sign(BODY, SECRET)}",
        f"SHA256={sign(BODY, SECRET).upper()}",
    ],
)
def test_verify_accepts_the_tolerated_spellings(header: str) -> None:
    assert verify(BODY, header, SECRET)


@pytest.mark.parametrize(
    "header",
    [None, "", sign(BODY, "other"), sign(BODY + b" ", SECRET), sign(BODY, SECRET)[:-1], "é" * 64, "sha256="],
)
def test_verify_refuses_anything_else(header: str | None) -> None:
    assert not verify(BODY, header, SECRET)


def test_verify_refuses_everything_without_a_secret() -> None:
    assert not verify(BODY, sign(BODY, ""), "")
