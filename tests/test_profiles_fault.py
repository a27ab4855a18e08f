"""The fault test: the profiles service killed with SIGKILL three times while it consumes."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from collections import Counter

from nats.aio.client import Client as NATS

from tests.test_profiles_service import expected_counts, history, live_profiles, publish


def start_service(nats_url: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "--nats-url",
            nats_url,
            "run",
            "profiles",
            "--ack-wait",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # wait until it consumes
        if line.startswith("profiles:"):
            break
    return proc


async def test_kill_9_three_times_loses_nothing_and_counts_nothing_twice(
    fresh: NATS, nats_url: str
) -> None:
    rnd = random.Random(int(os.environ.get("NERVE_FAULT_SEED", "20261127")))
    events = history(50_000, users=2_000)
    await publish(fresh, events)
    js = fresh.jetstream()
    progress = []
    for _ in range(3):
        proc = start_service(nats_url)
        await asyncio.sleep(rnd.uniform(0.3, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
        info = await js.consumer_info("ACTIVITY", "profiles")
        progress.append(info.ack_floor.stream_seq if info.ack_floor else 0)
    assert progress[-1] < 50_000, "the kills must land while it is still consuming"
    proc = start_service(nats_url)
    try:
        for _ in range(600):
            info = await js.consumer_info("ACTIVITY", "profiles")
            if info.num_pending == 0 and info.num_ack_pending == 0:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"never caught up: {info}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        assert proc.stdout is not None
        proc.stdout.close()
    live = await live_profiles(fresh)
    got = {t: Counter(p["counts"]) for t, p in live.items()}
    assert got == expected_counts(events), f"progress at the kills: {progress}"
