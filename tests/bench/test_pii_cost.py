"""The PII-dense bench text: numbers made unique must keep what redaction does to them, or the
bench would time a different mix of phones, cards and look-alikes than the corpus has."""

from __future__ import annotations

import pytest

from apten_assets.lib.pii import CARD, EMAIL, PHONE, redact_text
from bench.pii_cost import unique_variant
from tests.pii.corpus import MUST_REDACT, MUST_SURVIVE

STAMPS = (0, 1, 42, 777, 5000, 9999)


def _tokens(text: str) -> tuple[int, int, int]:
    return text.count(PHONE), text.count(EMAIL), text.count(CARD)


@pytest.mark.parametrize("case", MUST_REDACT, ids=lambda case: case.text[:40])
def test_variants_of_personal_data_are_redacted_alike(case) -> None:
    expected = _tokens(redact_text(case.text))
    variants = {unique_variant(case.text, k) for k in STAMPS}
    assert len(variants) == len(STAMPS)  # each stamp gives another text
    for variant in variants:
        assert _tokens(redact_text(variant)) == expected, variant


@pytest.mark.parametrize("text", MUST_SURVIVE)
def test_variants_of_look_alikes_survive(text: str) -> None:
    for k in STAMPS:
        variant = unique_variant(text, k)
        assert redact_text(variant) == variant
