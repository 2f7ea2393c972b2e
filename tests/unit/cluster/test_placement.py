"""Rendezvous placement: the same answer everywhere, an even spread, few moves."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

from sfmd.cluster.placement import owner, place, score

SLOTS = [f"cred{i}" for i in range(600)] + [f"bluesky.stream-{i}" for i in range(600)]
HOSTS = ["host-a", "host-b", "host-c"]


def test_the_same_inputs_give_the_same_owner_in_any_order_and_any_process() -> None:
    placed = place(SLOTS, HOSTS)
    assert placed == place(reversed(SLOTS), list(reversed(HOSTS)))
    # Another interpreter (another hash seed) agrees: the hash is not Python's hash().
    code = (
        "from sfmd.cluster.placement import owner; "
        "print(owner('cred7', ['host-a', 'host-b', 'host-c']), "
        "owner('bluesky.stream-9', ['host-c', 'host-b', 'host-a']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={"PYTHONHASHSEED": "12345"},
    )
    assert done.stdout.split() == [placed["cred7"], placed["bluesky.stream-9"]]


def test_no_live_host_places_nothing() -> None:
    assert owner("cred1", []) is None
    assert place(SLOTS, []) == {}


def test_slots_spread_evenly_over_the_hosts() -> None:
    counts = Counter(place(SLOTS, HOSTS).values())
    assert set(counts) == set(HOSTS)
    share = len(SLOTS) / len(HOSTS)
    # 1,200 slots over 3 hosts: 400 each expected, standard deviation about 16.
    assert all(abs(n - share) < 0.15 * share for n in counts.values()), counts


def test_a_joining_host_takes_about_its_share_and_nothing_else_moves() -> None:
    before = place(SLOTS, HOSTS)
    after = place(SLOTS, [*HOSTS, "host-d"])
    moved = [slot for slot in SLOTS if before[slot] != after[slot]]
    assert all(after[slot] == "host-d" for slot in moved)  # moves only to the new host
    assert abs(len(moved) - len(SLOTS) / 4) < 0.15 * len(SLOTS) / 4, len(moved)
    # ...taken from every host, about evenly.
    losers = Counter(before[slot] for slot in moved)
    assert set(losers) == set(HOSTS)


def test_a_leaving_host_hands_over_only_its_own_slots() -> None:
    before = place(SLOTS, HOSTS)
    after = place(SLOTS, ["host-a", "host-c"])
    for slot in SLOTS:
        if before[slot] != "host-b":
            assert after[slot] == before[slot]
    heirs = Counter(after[slot] for slot in SLOTS if before[slot] == "host-b")
    assert set(heirs) == {"host-a", "host-c"}


def test_the_owner_is_the_host_with_the_highest_score() -> None:
    for slot in SLOTS[:50]:
        assert owner(slot, HOSTS) == max(HOSTS, key=lambda h: score(h, slot))
