"""The cached token record: where its background renewal is placed."""

from __future__ import annotations

from authserver.tokens.model import EARLY_REFRESH_MS, RENEW_LEAD_MS, TokenRecord


def record(token: str, life_ms: int) -> TokenRecord:
    """A record issued at 0 that is handed out until `life_ms`."""
    return TokenRecord(
        token=token,
        type="R",
        resources=("a/b",),
        expire_ms=life_ms + 600_000,
        refresh_at_ms=life_ms,
        issued_ms=0,
        subject="s",
        instance_id="i",
    )


def test_every_renewal_starts_a_lead_before_refresh_and_within_the_window() -> None:
    # Token values spread the renewal points; none may sit in the last seconds before
    # refreshAt, where the renewal could not land before devices need the new token.
    leads = [
        r.refresh_at_ms - r.renew_at_ms
        for r in (record(f"token-{n}", 3_000_000) for n in range(5000))
    ]
    assert min(leads) >= RENEW_LEAD_MS
    assert max(leads) < RENEW_LEAD_MS + EARLY_REFRESH_MS
    assert len(set(leads)) > 1000, "the points are spread, not one instant"


def test_a_short_lived_token_still_renews_after_it_was_issued() -> None:
    # 30 s handed out: a 3 s window that ends 3 s before refreshAt.
    for n in range(500):
        r = record(f"short-{n}", 30_000)
        assert 0 < r.renew_at_ms <= r.refresh_at_ms - 3_000
