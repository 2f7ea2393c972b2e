"""Which live host should hold which slot: rendezvous (highest-random-weight) hashing.

Every host scores every (host, slot) pair with the same hash and a slot belongs to the host
with the highest score. Why this and not least-loaded or a hash ring:

- It is a pure function of the slot and the set of live hosts: every host computes the same
  answer from the same heartbeats, with no coordinator and nothing stored.
- A host that joins N others wins exactly the slots where its score beats all N: about 1/(N+1)
  of them, taken evenly from every host; everything else stays put. A host that leaves hands
  over only its own slots, spread evenly over the rest. Fewer moves mean fewer takeovers, and
  every takeover of a stream without replay risks a gap.
- No virtual nodes or ring to tune; N hosts by S slots hashes are cheap for the sizes here
  (3 hosts and 1,000 slots is 3,000 blake2b digests, about a millisecond).

The spread is even in expectation, not exactly: slots are connections of unequal weight (a v2
filter connection may carry hundreds of streams), so a later increment may add weights or cap a
host's load. The hash is blake2b (keyed by nothing), not Python's `hash`, whose value differs
between processes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def score(host: str, slot: str) -> int:
    """The weight of `host` for `slot`: 64 bits of blake2b over both names."""
    digest = hashlib.blake2b(
        host.encode("utf-8") + b"\x00" + slot.encode("utf-8"), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big")


def owner(slot: str, hosts: Iterable[str]) -> str | None:
    """The host that should hold `slot`, or None when no host is live. Ties (never seen with
    64 bits) go to the smallest host name, so the answer is the same everywhere."""
    best: str | None = None
    best_score = -1
    for host in sorted(set(hosts)):
        weight = score(host, slot)
        if weight > best_score:
            best, best_score = host, weight
    return best


def place(slots: Iterable[str], hosts: Iterable[str]) -> dict[str, str]:
    """Every slot's owner among `hosts` (live and not draining); empty when no host is."""
    live = sorted(set(hosts))
    placed: dict[str, str] = {}
    for slot in slots if live else ():
        chosen = owner(slot, live)
        assert chosen is not None
        placed[slot] = chosen
    return placed
