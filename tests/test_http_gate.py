"""The HTTP API's admission gate (resnet.studio.http_api.Gate) alone, without a server: who waits for a prediction's turn,
who is refused at once, and what Retry-After says."""

import collections
import threading

import anyio
import pytest
from fastapi import HTTPException

from resnet.studio import http_api


def admitted_in_turn(gate, count: int, release: threading.Event) -> list:
    """Send ``count`` calls through ``gate`` one after another, each blocked until ``release``, noting before each
    the wait the gate expected; then what each call got: True, or the HTTPException that refused it."""

    async def scenario():
        expected, answers = [], []

        async def call():
            try:
                answers.append(await gate.run(release.wait, 30))
            except HTTPException as refusal:
                answers.append(refusal)

        async with anyio.create_task_group() as group:
            for _ in range(count):
                expected.append(gate.expected_wait())
                before = len(answers) + gate.admitted
                group.start_soon(call)
                while len(answers) + gate.admitted == before:
                    await anyio.sleep(0.001)
            release.set()
        return expected, answers

    return anyio.run(scenario)


def test_requests_are_admitted_while_their_expected_wait_is_within_the_limit():
    gate = http_api.Gate(workers=2, max_wait_s=1.0, max_queued=100, service_s=0.4)
    expected, answers = admitted_in_turn(gate, 8, threading.Event())
    assert expected == pytest.approx([0, 0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2])  # (admitted - 2 + 1) x 0.4 s / 2 workers
    refusals = [answer for answer in answers if isinstance(answer, HTTPException)]
    assert answers.count(True) == 7
    assert len(refusals) == 1
    assert refusals[0].status_code == 503
    assert refusals[0].headers == {"Retry-After": "2"}
    assert refusals[0].detail == ("the server is busy: a prediction would wait about 1.2 s for its turn, "
                                  "over this server's 1 s; retry in 2 s")
    assert gate.admitted == 0
    assert gate.service_s < 0.4


def test_the_queue_stays_bounded_whatever_the_estimate():
    gate = http_api.Gate(workers=1, max_wait_s=100, max_queued=2, service_s=0.01)
    _, answers = admitted_in_turn(gate, 4, threading.Event())
    assert answers.count(True) == 3  # one running, two waiting
    refusal = next(answer for answer in answers if isinstance(answer, HTTPException))
    assert refusal.detail == "the server is busy: 2 requests are already waiting; retry in 1 s"
    assert refusal.headers == {"Retry-After": "1"}


# The limits are minutes of real time, so that no admitted request here waits past them, however slow the machine.
@pytest.mark.parametrize(("max_wait_s", "max_queued", "bound", "retry"), [
    (600, 100, 11, "660"),  # held by the expected wait: admitted x 60 s is at most 600 s for one running and ten waiting
    (6000, 5, 6, "360"),  # held by the queue's bound: one running, five waiting
])
def test_a_sustained_overload_is_refused_and_the_queue_stays_bounded(monkeypatch, max_wait_s, max_queued, bound, retry):
    """Ten rounds of 50 arrivals at a gate whose one worker finishes a single prediction between rounds: far more
    than it can serve. Whatever arrives, no more than ``bound`` are ever admitted, each round admits only what the
    finished prediction freed, and every other request is refused with the expected wait as its Retry-After."""
    gate = http_api.Gate(workers=1, max_wait_s=max_wait_s, max_queued=max_queued, service_s=60)
    monkeypatch.setattr(gate, "record", lambda seconds: None)  # the estimate stays 60 s, however long a test thread takes
    finished = threading.Semaphore(0)  # each release lets the running prediction end

    async def scenario():
        outcomes, peak = collections.Counter(), 0

        async def call():
            try:
                await gate.run(finished.acquire, True, 30)
                outcomes["served"] += 1
            except HTTPException as refusal:
                outcomes[f"{refusal.status_code} Retry-After {refusal.headers['Retry-After']}"] += 1

        async def settle(condition):
            while not condition():
                await anyio.sleep(0.001)

        async with anyio.create_task_group() as group:
            for _ in range(10):
                for _ in range(50):
                    before = sum(outcomes.values()) + gate.admitted
                    group.start_soon(call)
                    await settle(lambda before=before: sum(outcomes.values()) + gate.admitted > before)  # admitted or refused
                    peak = max(peak, gate.admitted)
                admitted = gate.admitted
                finished.release()
                await settle(lambda admitted=admitted: gate.admitted < admitted)
            finished.release(bound)
        return outcomes, peak

    outcomes, peak = anyio.run(scenario)
    assert peak == bound
    assert gate.admitted == 0
    assert outcomes == {"served": bound + 9, f"503 Retry-After {retry}": 500 - bound - 9}


def test_an_admitted_request_whose_turn_does_not_come_in_time_is_refused_then():
    """The estimate runs low (a first guess of 1 ms, never updated) while one prediction holds the only worker: four
    requests are admitted behind it, and each is refused once it has waited the limit, not served late."""
    gate = http_api.Gate(workers=1, max_wait_s=0.2, max_queued=100, service_s=0.001)
    gate.record = lambda seconds: None
    release = threading.Event()

    async def scenario():
        outcomes = []

        async def call():
            try:
                await gate.run(release.wait, 60)
                outcomes.append("served")
            except HTTPException as refusal:
                outcomes.append((refusal.status_code, refusal.detail, refusal.headers))

        async with anyio.create_task_group() as group:
            for _ in range(5):
                group.start_soon(call)
            while len(outcomes) < 4:  # the four behind the running one, each once its wait ran out
                await anyio.sleep(0.01)
            release.set()
        return outcomes

    outcomes = anyio.run(scenario)
    assert outcomes.count("served") == 1
    assert gate.admitted == 0
    refusals = [o for o in outcomes if o != "served"]
    assert len(refusals) == 4
    assert all(status == 503 and "Retry-After" in headers for status, _, headers in refusals)
    assert all("its turn did not come within this server's 0.2 s" in detail for _, detail, _ in refusals)


def test_the_service_time_is_the_median_of_the_recent_durations():
    gate = http_api.Gate(workers=1, max_wait_s=1, max_queued=1, service_s=1.0)
    assert gate.service_s == 1.0  # the first guess, until a prediction is measured
    for _ in range(20):
        gate.record(0.01)
    assert gate.service_s == 0.01
    gate.record(5.0)
    assert gate.service_s == 0.01  # one slow prediction moves nothing
    for _ in range(8):
        gate.record(0.2)
    assert gate.service_s == 0.2  # a lasting change does, within half of RECENT
