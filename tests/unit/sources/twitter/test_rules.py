"""Planning the rules API calls: from the rules the API holds to the rules streams want."""

from __future__ import annotations

from sfmd.sources.twitter.rules import Rule, plan, tag_for

OURS = {"a", "b", "c"}


def test_nothing_to_do_when_the_api_holds_what_is_wanted() -> None:
    steps = plan({"cats": ["a"]}, [Rule("1", "cats", "a")], known_names=OURS, prune_foreign=False)
    assert steps.empty and [r.id for r in steps.keep] == ["1"] and not steps.validate


def test_new_values_are_validated_then_added_and_unwanted_ones_of_ours_deleted() -> None:
    held = [Rule("1", "cats", "a"), Rule("2", "dogs", "b")]
    steps = plan({"cats": ["a"], "owls": ["c"]}, held, known_names=OURS, prune_foreign=False)
    assert steps.validate == ["owls"]
    assert steps.add == [("owls", "c")]
    assert [r.id for r in steps.delete] == ["2"]


def test_a_value_two_streams_want_is_one_rule_tagged_with_both() -> None:
    assert tag_for(["d", "a", "d"]) == "a,d"
    steps = plan({"cats": ["d", "a"]}, [Rule("1", "cats", "a")], known_names=OURS,
                 prune_foreign=False)
    # A tag cannot be edited: replaced, and not validated again (the API took that value).
    assert [r.id for r in steps.delete] == ["1"] and steps.add == [("cats", "a,d")]
    assert steps.validate == []


def test_foreign_rules_are_reported_and_deleted_only_when_pruning() -> None:
    held = [Rule("7", "from:someone", "their-tool"), Rule("8", "untagged rule")]
    kept = plan({}, held, known_names=OURS, prune_foreign=False)
    assert [r.id for r in kept.foreign] == ["7", "8"] and kept.empty
    pruned = plan({}, held, known_names=OURS, prune_foreign=True)
    assert [r.id for r in pruned.delete] == ["7", "8"] and not pruned.foreign


def test_a_foreign_rule_holding_a_wanted_value_is_replaced_by_ours() -> None:
    steps = plan({"cats": ["a"]}, [Rule("7", "cats", "their-tool")], known_names=OURS,
                 prune_foreign=False)
    assert [r.id for r in steps.delete] == ["7"] and steps.add == [("cats", "a")]
