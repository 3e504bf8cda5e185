"""Which share of an ordered work list one process of N takes (`--shard i/N` on eval, spectra and retention).

Rules: S1 `i/N` needs integers with 0 <= i < N. S2 round robin (item j goes to shard j % N) where items are
independent (eval's generation jobs, retention's checkpoints). S3 contiguous blocks where an item reuses its
predecessor's result (spectra's subspace similarity to the previous checkpoint): a block's first item recomputes what
it needs, once per block rather than once per item. Every item lands in exactly one shard."""

from __future__ import annotations

from typing import Sequence, TypeVar

from tina_probe.errors import TinaError

T = TypeVar("T")


def parse_shard(text: str | None, option: str = "--shard") -> tuple[int, int] | None:
    """'i/N' -> (i, N) (rule S1); None or '' -> None."""
    if not text:
        return None
    try:
        i, total = (int(x) for x in text.split("/"))
    except ValueError:
        raise TinaError(f"{option} {text}: expected i/N with 0 <= i < N") from None
    if not 0 <= i < total:
        raise TinaError(f"{option} {text}: expected i/N with 0 <= i < N")
    return i, total


def round_robin(items: Sequence[T], shard: tuple[int, int] | None) -> list[T]:
    """Items j with j % N == i (rule S2); all items without a shard."""
    if shard is None:
        return list(items)
    i, total = shard
    return [x for j, x in enumerate(items) if j % total == i]


def block(items: Sequence[T], shard: tuple[int, int] | None) -> list[T]:
    """The i-th of N contiguous, near-equal blocks (rule S3); all items without a shard."""
    if shard is None:
        return list(items)
    i, total = shard
    lo, hi = (len(items) * i) // total, (len(items) * (i + 1)) // total
    return list(items[lo:hi])
