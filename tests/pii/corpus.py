"""The PII test corpus: sentences as they occur in calls, with the exact strings that must go and
the strings that must stay.

`MUST_REDACT` pairs a sentence with the personal strings in it (each must be gone from the
redacted sentence) and the tokens that must replace them. `MUST_SURVIVE` sentences hold numbers
that look a bit like personal data and are not: redaction must leave them byte for byte.
Phone numbers use ranges reserved for fiction or documentation where a country has one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    text: str
    secrets: tuple[str, ...]
    tokens: tuple[str, ...]


MUST_REDACT: tuple[Case, ...] = (
    # United States, national formats and E.164.
    Case("Call me back at (415) 555-0132 after five.", ("(415) 555-0132",), ("[PHONE]",)),
    Case("My cell is 415-555-0178, thanks.", ("415-555-0178",), ("[PHONE]",)),
    Case("You can reach me on 415.555.0191 anytime.", ("415.555.0191",), ("[PHONE]",)),
    Case("The number is +1 202 555 0143 for the office.", ("+1 202 555 0143", "202 555 0143"), ("[PHONE]",)),
    Case("Text +12025550189 when you arrive.", ("+12025550189", "2025550189"), ("[PHONE]",)),
    # United Kingdom.
    Case("Ring the London office on 020 7946 0958 please.", ("020 7946 0958",), ("[PHONE]",)),
    Case("My mobile is 07911 123456.", ("07911 123456",), ("[PHONE]",)),
    Case("From abroad dial +44 20 7946 0321.", ("+44 20 7946 0321",), ("[PHONE]",)),
    # Germany.
    Case(
        "Meine Nummer ist 030 901820 oder mobil 0151 23456789.", ("030 901820", "0151 23456789"), ("[PHONE]",)
    ),
    Case("International: +49 30 901820.", ("+49 30 901820",), ("[PHONE]",)),
    # France.
    Case("Appelez le 01 42 68 53 00 demain.", ("01 42 68 53 00",), ("[PHONE]",)),
    Case("Ou le +33 1 42 68 53 01.", ("+33 1 42 68 53 01",), ("[PHONE]",)),
    # Australia.
    Case("Sydney office 02 9374 4000, mobile 0412 345 678.", ("02 9374 4000", "0412 345 678"), ("[PHONE]",)),
    # Other countries, international format only.
    Case("In India call +91 98765 43210.", ("+91 98765 43210", "98765 43210"), ("[PHONE]",)),
    Case("Our Madrid desk: +34 912 345 678.", ("+34 912 345 678", "912 345 678"), ("[PHONE]",)),
    # E-mail addresses.
    Case("Send it to jane.doe+billing@example.com today.", ("jane.doe+billing@example.com",), ("[EMAIL]",)),
    Case("Use JOHN.SMITH@EXAMPLE.ORG for the invoice.", ("JOHN.SMITH@EXAMPLE.ORG",), ("[EMAIL]",)),
    Case(
        "it's maria_garcia-2024@mail.example.co.uk", ("maria_garcia-2024@mail.example.co.uk",), ("[EMAIL]",)
    ),
    # Payment cards (all Luhn-valid test numbers).
    Case("My card is 4111 1111 1111 1111, expiry in May.", ("4111 1111 1111 1111",), ("[CARD]",)),
    Case("Charge 5555-5555-5555-4444 please.", ("5555-5555-5555-4444",), ("[CARD]",)),
    Case("Amex 378282246310005 works too.", ("378282246310005",), ("[CARD]",)),
    Case("The Visa is 4012888888881881.", ("4012888888881881",), ("[CARD]",)),
    # Several kinds in one turn.
    Case(
        "Email ANA@Example.com or call 415-555-0110; card 4242 4242 4242 4242.",
        ("ANA@Example.com", "415-555-0110", "4242 4242 4242 4242"),
        ("[EMAIL]", "[PHONE]", "[CARD]"),
    ),
)

MUST_SURVIVE: tuple[str, ...] = (
    "Your order number is 48213377.",
    "Order #100234567 shipped on 14/05/2026.",
    "We spoke on 2026-05-14 at 14:30.",
    "The appointment is at 09:15 on 05/14/2026.",
    "It costs $1,249.99 or €1.249,99 per month.",
    "That comes to 12,500 dollars in total.",
    "Your reference is ABC-1234, booking code 7Q9XZ2.",
    "Invoice 2024-00042 is paid.",
    "The tracking number 4111 1111 1111 1112 is not a card.",
    "Account 1234 5678 9012 3456 was closed.",
    "Gate code 4821, unit 12B.",
    "Between 8 and 10 people, around 3 pm.",
)

# Every string that must not survive redaction, for the end-to-end tests.
SECRETS: tuple[str, ...] = tuple(secret for case in MUST_REDACT for secret in case.secrets)
