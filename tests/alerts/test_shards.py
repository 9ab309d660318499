"""Sites split over detection processes: every site judged by exactly one of them."""

from __future__ import annotations

from collections import Counter

import pytest

from weijian.alerts.shards import EVERY_SITE, Shard

SITES = [f"site-{i:04d}" for i in range(1000)]


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7])
def test_every_site_belongs_to_exactly_one_shard(count: int) -> None:
    shards = [Shard(i, count) for i in range(count)]
    owners = Counter(sum(1 for s in shards if s.owns(site)) for site in SITES)
    assert owners == {1: len(SITES)}


@pytest.mark.parametrize("count", [2, 3, 4])
def test_shards_share_the_sites_about_evenly(count: int) -> None:
    sizes = [len(Shard(i, count).select(SITES)) for i in range(count)]
    assert sum(sizes) == len(SITES)
    assert max(sizes) - min(sizes) < len(SITES) // count // 4


def test_the_split_is_stable_across_processes_and_runs() -> None:
    # A hash of the id's bytes (not Python's salted hash()): every process agrees, always.
    assert [Shard(i, 3).owns("s-a1b2c3") for i in range(3)] == [False, False, True]
    assert Shard(0, 3).select(["s-a1b2c3", "s-a1b2c5"]) == ["s-a1b2c5"]


def test_one_shard_owns_everything() -> None:
    assert EVERY_SITE.select(SITES) == SITES


@pytest.mark.parametrize(
    ("text", "expected"), [("0/1", Shard(0, 1)), ("2/4", Shard(2, 4)), (" 1/2 ", Shard(1, 2))]
)
def test_parse_reads_i_of_n(text: str, expected: Shard) -> None:
    assert Shard.parse(text) == expected
    assert str(expected) == text.strip()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2", "expected a shard as I/N"),
        ("a/2", "expected a shard as I/N"),
        ("-1/2", "expected a shard as I/N"),
        ("2/2", "outside 0..1"),
        ("0/0", "at least 1"),
    ],
)
def test_parse_refuses_what_is_not_a_shard(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Shard.parse(text)
