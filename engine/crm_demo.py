"""A reference CRM built only on the public client (`nerve_client.client`): how another team would
consume interest signals and log what its salespeople did.

It stores each signal as a lead in SQLite (a real database file), prints it, and logs a
simulated contact outcome back to Nerve as `crm_contact_logged` (the offer the signal is about,
an outcome drawn from the signal id: interested 50 %, declined 30 %, converted 20 %). Handling is
idempotent by signal id (`INSERT OR IGNORE`, and the outcome's event id is derived from the
signal id), so a redelivered signal changes nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nerve_client.client import CrmContact, InterestSignal, NerveClient

SCHEMA = """
CREATE TABLE IF NOT EXISTS leads (
    signal_id   TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    topic       TEXT NOT NULL,
    offer       TEXT,
    score       REAL NOT NULL,
    evidence    INTEGER NOT NULL,
    decided_at  TEXT NOT NULL,
    received_at TEXT NOT NULL,
    outcome     TEXT,
    contact_id  TEXT
)
"""
OUTCOMES = (("interested", 50), ("declined", 30), ("converted", 20))
DEFAULT_OFFER = {
    "loan": "loan-personal",
    "mortgage": "mort-fixed",
    "investment": "fund-world-equity",
}


def open_db(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.execute(SCHEMA)
    db.commit()
    return db


def outcome_for(signal_id: str) -> str:
    roll = hashlib.sha256(signal_id.encode()).digest()[0] * 100 // 256
    for outcome, share in OUTCOMES:
        if roll < share:
            return outcome
        roll -= share
    return OUTCOMES[-1][0]


async def handle(client: NerveClient, db: sqlite3.Connection, signal: InterestSignal) -> str | None:
    """Store the lead, log the contact; returns the outcome logged (None if already handled)."""
    offer = signal.offer or DEFAULT_OFFER.get(signal.topic)
    cur = db.execute(
        "INSERT OR IGNORE INTO leads (signal_id, user_id, topic, offer, score, evidence,"
        " decided_at, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            signal.id,
            signal.user_id,
            signal.topic,
            offer,
            signal.score,
            len(signal.evidence),
            signal.decided_at.isoformat(),
            datetime.now(UTC).isoformat(),
        ),
    )
    db.commit()
    row = db.execute("SELECT outcome FROM leads WHERE signal_id = ?", (signal.id,)).fetchone()
    if cur.rowcount == 0 and row and row[0]:
        return None
    if offer is None:
        return None
    outcome = outcome_for(signal.id)
    contact_id = str(uuid.UUID(bytes=hashlib.sha256(b"contact" + signal.id.encode()).digest()[:16]))
    await client.publish(
        CrmContact(
            id=contact_id,
            user_id=signal.user_id,
            offer=offer,
            channel="phone",
            outcome=outcome,  # type: ignore[arg-type]
            agent_id="demo-agent",
            signal_id=signal.id,
        )
    )
    db.execute(
        "UPDATE leads SET outcome = ?, contact_id = ? WHERE signal_id = ?",
        (outcome, contact_id, signal.id),
    )
    db.commit()
    return outcome


async def run(
    url: str, db_path: Path, durable: str, say: Callable[[str], Any], limit: int | None = None
) -> int:
    """Consume signals until cancelled (or `limit` handled); returns how many were handled."""
    db = open_db(db_path)
    client = await NerveClient.connect(url, "nerve-crm-demo")
    handled = 0
    try:
        async with contextlib.aclosing(client.interest_signals(durable=durable)) as signals:
            async for signal in signals:
                outcome = await handle(client, db, signal)
                if outcome is not None:
                    say(
                        f"lead {signal.user_id:<12} {signal.topic:<10} score {signal.score:<5g} "
                        f"{len(signal.evidence)} events -> called about {signal.offer}: {outcome}"
                    )
                handled += 1
                if limit is not None and handled >= limit:
                    break
    finally:
        await client.close()
        db.close()
    return handled


def leads(db_path: Path) -> list[tuple[Any, ...]]:
    db = open_db(db_path)
    try:
        return db.execute(
            "SELECT received_at, user_id, topic, offer, score, evidence, outcome FROM leads"
            " ORDER BY received_at"
        ).fetchall()
    finally:
        db.close()
