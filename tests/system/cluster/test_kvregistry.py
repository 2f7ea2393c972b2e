"""The registry on a KV bucket against a real nats-server: two hosts changing it at once
lose nothing, conflicting changes to one stream are refused, and both read the same."""

from __future__ import annotations

import asyncio

import pytest

from sfmd.cluster import kvregistry
from sfmd.cluster.errors import Conflict
from sfmd.cluster.kvregistry import KEY, KVRegistry
from sfmd.registry import ValidationError
from sfmd.registry.store import render
from tests.helpers.specs import CREDS, filt, ok
from tests.system.cluster.conftest import Connect


async def two_hosts(host_client: Connect) -> tuple[KVRegistry, KVRegistry]:
    a = await KVRegistry.open((await host_client("host-a")).jetstream(), credentials=CREDS)
    b = await KVRegistry.open((await host_client("host-b")).jetstream(), credentials=CREDS)
    return a, b


async def test_adds_from_two_hosts_at_once_are_all_kept(host_client: Connect) -> None:
    a, b = await two_hosts(host_client)
    specs = [ok(filt(name=f"s{i}", track=[f"t{i}"], credential="default", active=False))
             for i in range(20)]
    await asyncio.gather(*(
        (a if i % 2 else b).add(spec) for i, spec in enumerate(specs)
    ))
    await a.refresh()
    await b.refresh()
    assert [s.name for s in a.list()] == sorted(s.name for s in specs)
    assert a.list() == b.list() and a.revision == b.revision


async def test_two_hosts_changing_one_stream_at_once_one_wins_the_other_gets_409(
    host_client: Connect,
) -> None:
    a, b = await two_hosts(host_client)
    base = ok(filt(name="news", track=["news"]))
    await a.add(base)
    await b.refresh()
    old_a, old_b = a.get("news"), b.get("news")
    to_a = ok(filt(name="news", track=["from-a"]))
    to_b = ok(filt(name="news", track=["from-b"]))
    outcomes = await asyncio.gather(
        a.replace(to_a, based_on=old_a), b.replace(to_b, based_on=old_b),
        return_exceptions=True,
    )
    refused = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(refused) == 1 and isinstance(refused[0], Conflict), outcomes
    assert refused[0].status == 409 and "nothing was changed" in refused[0].message
    await a.refresh()
    await b.refresh()
    assert a.get("news") == b.get("news") and a.get("news") in (to_a, to_b)
    assert a.list() == b.list()


async def test_a_change_to_another_stream_meanwhile_is_kept_under_this_one(
    host_client: Connect,
) -> None:
    a, b = await two_hosts(host_client)
    await a.add(ok(filt(name="one", track=["one"], active=False)))
    await a.add(ok(filt(name="two", track=["two"], active=False)))
    await b.refresh()
    await a.replace(ok(filt(name="one", track=["uno"], active=False)), based_on=a.get("one"))
    # b's copy is stale; its change to "two" is applied on top of a's, not over it.
    await b.replace(ok(filt(name="two", track=["dos"], active=False)), based_on=b.get("two"))
    await a.refresh()
    assert a.get("one").track == ("uno",) and a.get("two").track == ("dos",)
    assert a.list() == b.list()


async def test_the_one_active_stream_per_credential_rule_holds_across_hosts(
    host_client: Connect,
) -> None:
    a, b = await two_hosts(host_client)
    # Two hosts make a stream active on one credential at the same moment: one is refused.
    outcomes = await asyncio.gather(
        a.add(ok(filt(name="x", track=["x"], credential="research"))),
        b.add(ok(filt(name="y", track=["y"], credential="research"))),
        return_exceptions=True,
    )
    refused = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(refused) == 1 and isinstance(refused[0], ValidationError), outcomes
    assert refused[0].code == "credential_in_use"
    await a.refresh()
    assert len(a) == 1


async def test_a_name_taken_on_another_host_is_refused_and_a_caller_check_runs_again(
    host_client: Connect,
) -> None:
    a, b = await two_hosts(host_client)
    await a.add(ok(filt(name="news", track=["a"], active=False)))
    with pytest.raises(ValidationError) as caught:
        await b.add(ok(filt(name="news", track=["b"], active=False)))
    assert caught.value.code == "name_taken"
    seen: list[int] = []
    await b.add(ok(filt(name="more", track=["m"], active=False)),
                check=lambda registry: seen.append(len(registry)))
    assert seen == [1]  # b's copy was refreshed by the refusal: the check saw "news"


async def test_removing_and_missing_streams(host_client: Connect) -> None:
    a, b = await two_hosts(host_client)
    await a.add(ok(filt(name="news", track=["a"], active=False)))
    await b.refresh()
    await b.remove("news")
    with pytest.raises(KeyError):
        await a.remove("news")  # refreshed by the race, then gone
    with pytest.raises(KeyError):
        await a.replace(ok(filt(name="news", track=["b"], active=False)))
    assert len(a) == 0 and "news" not in a


async def test_a_big_registry_is_stored_compressed_and_reads_back_equal(
    host_client: Connect,
) -> None:
    a, b = await two_hosts(host_client)
    for i in range(300):
        await a.add(ok(filt(name=f"stream-{i:04d}", track=[f"word{i}", "shared words"],
                            active=False)))
    entry = await a.kv.get(KEY)
    assert entry.value is not None
    raw = render({s.name: s for s in a.list()})
    assert len(raw) >= kvregistry.COMPRESS_FROM and len(entry.value) < len(raw) / 3
    await b.refresh()
    assert b.list() == a.list()


async def test_a_document_that_cannot_be_trusted_is_refused_naming_the_bucket(
    host_client: Connect,
) -> None:
    from sfmd.registry import RegistryError

    a, _ = await two_hosts(host_client)
    await a.kv.put(KEY, b'{"version": 1, "streams": [{"name": "Bad Name"}]}')
    with pytest.raises(RegistryError, match=r"NATS bucket sfm_registry key streams.*refused"):
        await a.refresh()


async def test_a_document_edited_by_hand_reads_whole_and_a_repeated_name_is_refused(
    host_client: Connect,
) -> None:
    import json

    from sfmd.registry import RegistryError

    a, b = await two_hosts(host_client)
    await a.add(ok(filt(name="news", track=["a"], active=False)))
    record = json.loads(a.get("news").registry_line)
    # Pretty-printed, as an operator restoring it with `nats kv put` might write it.
    await b.kv.put(KEY, json.dumps({"version": 1, "streams": [record]}, indent=2).encode())
    await a.refresh()
    assert len(a) == 1
    assert a.get("news").track == ("a",)
    # The shape render writes, but with the stream twice: refused, naming the repeat.
    line = a.get("news").registry_line
    await b.kv.put(KEY, f'{{"version": 1, "streams": [\n{line},\n{line}\n]}}\n'.encode())
    with pytest.raises(RegistryError, match="repeats the name"):
        await a.refresh()


async def test_a_change_from_another_host_waits_for_a_pause_in_a_burst_of_writes(
    host_client: Connect,
) -> None:
    a, b = await two_hosts(host_client)
    for i in range(50):
        await a.add(ok(filt(name=f"s{i:02d}", track=[f"t{i}"], active=False)))
    await b.refresh()

    async def burst() -> None:
        for n in range(60):
            await a.replace(ok(filt(name=f"s{n % 5:02d}", track=[f"burst{n}"], active=False)))

    async def other() -> None:
        for n in range(20):
            await b.replace(ok(filt(name=f"s{10 + n % 5:02d}", track=[f"b{n}"], active=False)))

    await asyncio.gather(burst(), other())
    await a.refresh()
    await b.refresh()
    assert a.list() == b.list()
    assert a.get("s04").track == ("burst59",) and a.get("s14").track == ("b19",)
