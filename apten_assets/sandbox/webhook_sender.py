"""Deliver signed Apten webhooks the way Apten does, plus the ways real delivery goes wrong.

Envelope builders reproduce the call-lifecycle events of apten-api.md §5.4/§5.5 field for field,
from plain call parameters; `call_lifecycle_envelopes` strings them into one call's sequence.
`WebhookSender.send_many` posts a list with redeliveries, out-of-order arrival and the odd
forged signature, all drawn from a seeded RNG so a run can be repeated exactly.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import httpx

from apten_assets.sandbox.data import ORG_ID, SandboxDataset
from apten_assets.webhooks.signing import SIGNATURE_HEADER, sign

TransferType = Literal["WARM", "COLD"]
TransferOutcome = Literal["connected", "missed"]

Envelope = dict[str, Any]


def webhook_timestamp(when: datetime) -> str:
    """Second precision with `Z`, as in every webhook example (`2024-01-15T14:30:00Z`)."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _envelope(event: str, data: dict[str, Any], when: datetime) -> Envelope:
    # Key order as in the docs' examples: event, data, timestamp.
    return {"event": event, "data": data, "timestamp": webhook_timestamp(when)}


def _present(*fields: tuple[str, Any]) -> dict[str, Any]:
    """`data` in the docs' field order, leaving out optional fields that are not set (None)."""
    return {name: value for name, value in fields if value is not None}


def _lead_fields(lead_id: str, external_lead_id: str | None, phone: str, profile: str) -> dict[str, Any]:
    return _present(
        ("leadId", lead_id), ("externalLeadId", external_lead_id), ("phone", phone), ("profile", profile)
    )


def call_completed(
    *,
    when: datetime,
    call_id: str,
    lead_id: str,
    phone: str,
    profile: str,
    duration_seconds: int,
    direction: Literal["INBOUND", "OUTBOUND"],
    summary: str | None = None,
    external_lead_id: str | None = None,
) -> Envelope:
    """`call.completed`; `summary` is left out entirely when None (it is optional in the docs)."""
    data = _lead_fields(lead_id, external_lead_id, phone, profile) | _present(
        ("callId", call_id),
        ("durationSeconds", duration_seconds),
        ("direction", direction),
        ("summary", summary),
    )
    return _envelope("call.completed", data, when)


def call_transferred(
    *,
    when: datetime,
    call_id: str,
    lead_id: str,
    phone: str,
    profile: str,
    transfer_type: TransferType,
    transfer_to: str,
    external_lead_id: str | None = None,
) -> Envelope:
    """`call.transferred`: a transfer starts, whatever its outcome."""
    data = _lead_fields(lead_id, external_lead_id, phone, profile)
    data |= {"callId": call_id, "transferType": transfer_type, "transferTo": transfer_to}
    return _envelope("call.transferred", data, when)


def call_transfer_connected(
    *,
    when: datetime,
    call_id: str,
    lead_id: str | None,
    phone: str,
    profile: str,
    transfer_number: str,
    first_name: str | None = None,
    last_name: str | None = None,
    session_id: str | None = None,
    external_lead_id: str | None = None,
    close_crm_lead_id: str | None = None,
) -> Envelope:
    """`call.transfer.connected`: a warm transfer bridged the human agent in.

    The docs' example is a lead call; for a webchat call (`session_id`, no lead) the same event
    with `sessionId` instead of the lead fields is our guess.
    """
    data = _present(
        ("leadId", lead_id),
        ("sessionId", session_id),
        ("firstName", first_name),
        ("lastName", last_name),
        ("externalLeadId", external_lead_id),
        ("phone", phone),
        ("profile", profile),
        ("callId", call_id),
        ("transferNumber", transfer_number),
        ("close_crm_leadId", close_crm_lead_id),
    )
    return _envelope("call.transfer.connected", data, when)


def agent_missed_transfer(
    *,
    when: datetime,
    call_id: str,
    lead_id: str | None,
    phone: str,
    profile: str,
    transfer_number: str,
    fallback_transfer_number: str | None = None,
    channel: Literal["SMS", "WEBCHAT"] = "SMS",
    session_id: str | None = None,
    external_lead_id: str | None = None,
    close_crm_lead_id: str | None = None,
) -> Envelope:
    """`agentMissedTransfer`, the terminal event of a failed warm transfer.

    `fallbackAttempted` is true exactly when a `fallback_transfer_number` is given (the docs send
    the number only when a fallback was tried). For WEBCHAT the docs show no lead fields; sending
    `sessionId` instead of `leadId` is our guess.
    """
    data = _present(
        ("leadId", lead_id),
        ("sessionId", session_id),
        ("externalLeadId", external_lead_id),
        ("phone", phone),
        ("profile", profile),
        ("callId", call_id),
        ("transferNumber", transfer_number),
        ("fallbackAttempted", fallback_transfer_number is not None),
        ("fallbackTransferNumber", fallback_transfer_number),
        ("channel", channel),
        ("close_crm_leadId", close_crm_lead_id),
    )
    return _envelope("agentMissedTransfer", data, when)


def transfer_fallback_triggered(
    *,
    when: datetime,
    call_id: str,
    lead_id: str,
    phone: str,
    profile: str,
    original_transfer_number: str,
    fallback_transfer_number: str,
    external_lead_id: str | None = None,
    close_crm_lead_id: str | None = None,
) -> Envelope:
    """`transferFallbackTriggered`: the missed warm transfer's fallback was dispatched (SMS leads only)."""
    data = _lead_fields(lead_id, external_lead_id, phone, profile) | _present(
        ("callId", call_id),
        ("originalTransferNumber", original_transfer_number),
        ("fallbackTransferNumber", fallback_transfer_number),
        ("close_crm_leadId", close_crm_lead_id),
    )
    return _envelope("transferFallbackTriggered", data, when)


def webchat_call_transferred(
    *,
    when: datetime,
    call_id: str,
    session_id: str,
    org_id: str,
    profile: str,
    transfer_type: TransferType,
    transfer_to: str,
    origin: str | None = None,
) -> Envelope:
    """`webchat.call.transferred`: sent instead of `call.transferred` for calls started from webchat."""
    data = _present(
        ("sessionId", session_id),
        ("orgId", org_id),
        ("profile", profile),
        ("origin", origin),
        ("callId", call_id),
        ("transferType", transfer_type),
        ("transferTo", transfer_to),
    )
    return _envelope("webchat.call.transferred", data, when)


@dataclass(frozen=True)
class CallLifecycle:
    """The facts about one call that decide which webhooks Apten sends for it.

    A lead call has `lead_id`; a webchat call has `session_id` (and `org_id`) and no lead.
    `transfer_type=None` means no transfer. Outcomes and fallbacks apply to WARM transfers only.
    """

    call_id: str
    started_at: datetime
    duration_seconds: int
    direction: Literal["INBOUND", "OUTBOUND"] = "OUTBOUND"
    lead_id: str | None = None
    session_id: str | None = None
    org_id: str = "org-sandbox"
    phone: str = "+12025550189"
    profile: str = "Default Profile"
    external_lead_id: str | None = None
    first_name: str = "Jane"
    last_name: str = "Doe"
    summary: str | None = None
    transfer_type: TransferType | None = None
    transfer_to: str = "+12025550100"
    transfer_after_seconds: int = 30
    transfer_outcome: TransferOutcome = "connected"
    fallback_transfer_number: str | None = None
    origin: str | None = None

    def __post_init__(self) -> None:
        if (self.lead_id is None) == (self.session_id is None):
            raise ValueError(
                f"call {self.call_id}: give exactly one of lead_id (lead call) or session_id (webchat)"
            )


def call_lifecycle_envelopes(call: CallLifecycle) -> list[Envelope]:
    """The webhooks for one call, in the order Apten sends them.

    transfer start (`call.transferred`, or `webchat.call.transferred` for webchat) -> for WARM:
    `call.transfer.connected`, or a miss (`transferFallbackTriggered` first when an SMS lead's
    fallback was dispatched, then `agentMissedTransfer`) -> `call.completed` for lead calls (the
    docs do not say whether webchat calls get one, so they don't here).
    """
    envelopes: list[Envelope] = []
    transfer_at = call.started_at + timedelta(seconds=min(call.transfer_after_seconds, call.duration_seconds))
    answer_by = transfer_at + timedelta(
        seconds=min(20, max(call.duration_seconds - call.transfer_after_seconds, 0))
    )
    ended_at = call.started_at + timedelta(seconds=call.duration_seconds)
    webchat = call.session_id is not None
    who = {"call_id": call.call_id, "phone": call.phone, "profile": call.profile}
    lead = {"lead_id": call.lead_id, "external_lead_id": call.external_lead_id}

    if call.transfer_type is not None:
        if webchat:
            envelopes.append(
                webchat_call_transferred(
                    when=transfer_at,
                    call_id=call.call_id,
                    session_id=call.session_id,
                    org_id=call.org_id,
                    profile=call.profile,
                    transfer_type=call.transfer_type,
                    transfer_to=call.transfer_to,
                    origin=call.origin,
                )
            )
        else:
            envelopes.append(
                call_transferred(
                    when=transfer_at,
                    **who,
                    **lead,
                    transfer_type=call.transfer_type,
                    transfer_to=call.transfer_to,
                )
            )
        if call.transfer_type == "WARM" and call.transfer_outcome == "connected":
            envelopes.append(
                call_transfer_connected(
                    when=answer_by,
                    **who,
                    **lead,
                    session_id=call.session_id,
                    transfer_number=call.transfer_to,
                    first_name=None if webchat else call.first_name,
                    last_name=None if webchat else call.last_name,
                )
            )
        elif call.transfer_type == "WARM":
            if call.fallback_transfer_number is not None and not webchat:
                envelopes.append(
                    transfer_fallback_triggered(
                        when=answer_by,
                        **who,
                        **lead,
                        original_transfer_number=call.transfer_to,
                        fallback_transfer_number=call.fallback_transfer_number,
                    )
                )
            envelopes.append(
                agent_missed_transfer(
                    when=answer_by,
                    **who,
                    **lead,
                    session_id=call.session_id,
                    transfer_number=call.transfer_to,
                    fallback_transfer_number=None if webchat else call.fallback_transfer_number,
                    channel="WEBCHAT" if webchat else "SMS",
                )
            )
    if not webchat:
        envelopes.append(
            call_completed(
                when=ended_at,
                **who,
                **lead,
                duration_seconds=call.duration_seconds,
                direction=call.direction,
                summary=call.summary,
            )
        )
    return envelopes


def encode(envelope: Envelope) -> bytes:
    """The body bytes sent (and signed) for an envelope."""
    return json.dumps(envelope, ensure_ascii=False).encode("utf-8")


@dataclass
class SendReport:
    """What a batch of sends got back, by kind of attempt and by HTTP status."""

    envelopes: int = 0
    attempts: int = 0
    redeliveries: int = 0
    forged: int = 0
    stored: int = 0
    duplicates: int = 0
    by_status: Counter[int] = field(default_factory=Counter)

    def summary(self) -> str:
        statuses = ", ".join(f"{code}: {n}" for code, n in sorted(self.by_status.items()))
        return (
            f"{self.envelopes} envelopes in {self.attempts} requests ({self.redeliveries} redeliveries, "
            f"{self.forged} forged); stored {self.stored}, duplicates {self.duplicates}; HTTP {statuses}"
        )


class WebhookSender:
    """Posts envelopes to a receiver URL, signed like Apten signs them."""

    def __init__(
        self, url: str, secret: str, *, timeout: float = 10.0, client: httpx.Client | None = None
    ) -> None:
        self.url = url
        self._secret = secret
        self._own_client = client is None
        self._client = client or httpx.Client(timeout=httpx.Timeout(timeout))

    def __repr__(self) -> str:
        return f"WebhookSender({self.url!r})"

    def close(self) -> None:
        if self._own_client:
            self._client.close()

    def __enter__(self) -> WebhookSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def post(self, body: bytes, *, bad_signature: bool = False) -> httpx.Response:
        """One request with `body` as is; `bad_signature` signs it with a different secret."""
        secret = f"not-{self._secret}" if bad_signature else self._secret
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(body, secret)}
        return self._client.post(self.url, content=body, headers=headers)

    def send(
        self, envelope: Envelope, *, bad_signature: bool = False, redeliver: int = 0
    ) -> list[httpx.Response]:
        """Deliver one envelope, then the identical bytes `redeliver` more times; all responses."""
        body = encode(envelope)
        return [self.post(body, bad_signature=bad_signature) for _ in range(1 + redeliver)]

    def send_many(
        self,
        envelopes: Sequence[Envelope],
        *,
        seed: int = 0,
        redeliver_rate: float = 0.1,
        max_displacement: int = 3,
        bad_signature_rate: float = 0.02,
    ) -> SendReport:
        """Deliver every envelope at least once, as an unreliable sender would.

        * each envelope is redelivered (same bytes, later in the stream) with `redeliver_rate`;
        * arrival order is shuffled locally: an item moves up to `max_displacement` places;
        * with `bad_signature_rate` a forged copy (wrong secret) is sent as well, which the
          receiver must refuse; the genuine copy still goes out, so nothing is meant to be lost.
        """
        rng = random.Random(seed)
        plan: list[tuple[float, bytes, bool]] = []
        report = SendReport(envelopes=len(envelopes))
        for index, envelope in enumerate(envelopes):
            body = encode(envelope)
            plan.append((index + rng.uniform(0, max_displacement), body, False))
            if rng.random() < redeliver_rate:
                report.redeliveries += 1
                plan.append((index + rng.uniform(1, 1 + 4 * max_displacement), body, False))
            if rng.random() < bad_signature_rate:
                report.forged += 1
                plan.append((index + rng.uniform(0, max_displacement), body, True))
        plan.sort(key=lambda item: item[0])
        for _, body, forged in plan:
            response = self.post(body, bad_signature=forged)
            report.attempts += 1
            report.by_status[response.status_code] += 1
            if response.status_code == 200:
                status = response.json().get("status")
                report.stored += status == "stored"
                report.duplicates += status == "duplicate"
        return report


WEBCHAT_ORIGINS = ("https://example.com/pricing", "https://example.com/contact", None)


class WebhookEmitter:
    """The sandbox's webhooks: what Apten would send as the dataset's calls end, posted to `url`.

    Every ended call yields its lifecycle (`call_lifecycle_envelopes`): `call.completed` for lead
    calls (with the summary when it is ready by then), the transfer events for transfer calls, and
    `webchat.call.transferred` (+ outcome) for transferred webchat calls, the only webhook the docs
    show for those. A call's transfer follows its record: `transferConnectedSeconds` means it
    connected (a share of those were COLD), otherwise a WARM transfer was missed, with its
    `fallbackTransferNumber` dispatched when it has one. Calls answering 404 or still in progress
    send nothing. Choices are seeded per call, so the same dataset and seed give the same bytes.
    """

    def __init__(
        self,
        dataset: SandboxDataset,
        url: str,
        secret: str,
        *,
        seed: int = 0,
        cold_share: float = 0.25,
        client: httpx.Client | None = None,
    ) -> None:
        self.dataset = dataset
        self.seed = seed
        self.cold_share = cold_share
        self._sender = WebhookSender(url, secret, client=client)

    def __repr__(self) -> str:
        return f"WebhookEmitter({self._sender.url!r})"

    def close(self) -> None:
        self._sender.close()

    def __enter__(self) -> WebhookEmitter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def lifecycle(self, call_id: str) -> CallLifecycle | None:
        """The facts deciding one call's webhooks, or None when Apten would send none."""
        call = self.dataset.call(call_id)
        if call is None or call.status == "IN_PROGRESS":
            return None
        rng = random.Random(f"{self.seed}:{call_id}:webhooks")
        fields: dict[str, Any] = {
            "call_id": call_id,
            "started_at": datetime.fromtimestamp(call.started_ms / 1000, UTC),
            "duration_seconds": call.duration_s,
            "direction": call.direction,
        }
        if call.lead_id is not None:
            lead = self.dataset.lead(call.lead_id) or {}
            fields |= {
                "lead_id": call.lead_id,
                "phone": lead.get("phone") or "+12025550189",
                "profile": lead.get("customerProfile") or "Default Profile",
                "external_lead_id": lead.get("externalLeadId"),
                "first_name": lead.get("firstName") or "Jane",
                "last_name": lead.get("lastName") or "Doe",
            }
            if call.summary_mode == "ready":
                body = self.dataset.call_json(call_id, datetime.max.replace(tzinfo=UTC) - timedelta(days=1))
                fields["summary"] = (body or {}).get("summary")
        else:
            if not call.is_transfer:
                return None
            fields |= {"session_id": call.session_id, "org_id": ORG_ID, "origin": rng.choice(WEBCHAT_ORIGINS)}
        if call.is_transfer and call.transfer_number is not None:
            connected = call.transfer_connected_seconds
            fields["transfer_to"] = call.transfer_number
            if connected is not None:
                fields["transfer_type"] = "COLD" if rng.random() < self.cold_share else "WARM"
                fields["transfer_outcome"] = "connected"
                fields["transfer_after_seconds"] = max(0, call.duration_s - connected - 20)
            else:
                fields["transfer_type"] = "WARM"
                fields["transfer_outcome"] = "missed"
                fields["fallback_transfer_number"] = call.fallback_transfer_number
                fields["transfer_after_seconds"] = call.duration_s // 2
        return CallLifecycle(**fields)

    def envelopes(self, call_ids: Sequence[str] | None = None) -> list[Envelope]:
        """The envelopes of these calls (None = every call), in the order the calls produced them."""
        chosen = (
            [*self.dataset.lead_call_ids, *self.dataset.webchat_call_ids] if call_ids is None else call_ids
        )
        envelopes = [
            envelope
            for call_id in chosen
            if (lifecycle := self.lifecycle(call_id)) is not None
            for envelope in call_lifecycle_envelopes(lifecycle)
        ]
        # Stable: a call's own events keep their lifecycle order within one second.
        return sorted(envelopes, key=lambda envelope: envelope["timestamp"])

    def emit(
        self,
        call_ids: Sequence[str] | None = None,
        *,
        redeliver_rate: float = 0.1,
        max_displacement: int = 3,
        bad_signature_rate: float = 0.02,
    ) -> SendReport:
        """Send the calls' webhooks as an unreliable sender would (see `WebhookSender.send_many`):
        some redelivered, some out of order, the odd forged copy, all seeded."""
        return self._sender.send_many(
            self.envelopes(call_ids),
            seed=self.seed,
            redeliver_rate=redeliver_rate,
            max_displacement=max_displacement,
            bad_signature_rate=bad_signature_rate,
        )
