"""InsA exemplar protocol: disjoint, reproducible, single-class prompts, tail classes get one."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.data.records import Record
from models.evaluation.protocol import holdout_class, is_calibration_image, split_prompts


def _records(spec: dict[tuple[str, ...], int]) -> list[Record]:
    """`count` records for each class tuple, with ids that say what they hold."""
    records = []
    for classes, count in spec.items():
        tag = "+".join(classes) or "free"
        records += [Record(f"{tag}/{i}", classes, 32, 32) for i in range(count)]
    return records


RECORDS = _records(
    {
        ("a",): 20,
        ("a", "b"): 5,
        ("b",): 8,  # 13 images with b: not a tail class
        ("c",): 3,  # tail class
        ("d",): 6,  # not evaluated
        ("a", "d"): 2,
        (): 7,
    }
)


def test_prompts_and_queries_never_overlap() -> None:
    split = split_prompts(RECORDS, ["a", "b", "c"])
    prompt_ids = [i for ids in split.prompts.values() for i in ids]
    assert len(prompt_ids) == len(set(prompt_ids))
    assert not set(prompt_ids) & set(split.queries)


def test_prompts_come_only_from_single_class_images() -> None:
    split = split_prompts(RECORDS, ["a", "b", "c"])
    classes = {r.image_id: r.classes for r in RECORDS}
    for name, ids in split.prompts.items():
        assert all(classes[i] == (name,) for i in ids)


def test_tail_classes_get_one_prompt() -> None:
    split = split_prompts(RECORDS, ["a", "b", "c"], k=5)
    assert {name: len(ids) for name, ids in split.prompts.items()} == {"a": 5, "b": 5, "c": 1}


def test_queries_are_evaluated_or_defect_free_images() -> None:
    split = split_prompts(RECORDS, ["a", "b", "c"])
    classes = {r.image_id: r.classes for r in RECORDS}
    assert all(not classes[i] or set(classes[i]) & {"a", "b", "c"} for i in split.queries)
    assert not any(i.startswith("d/") for i in split.queries)  # only a non-evaluated class
    assert sum(i.startswith("free/") for i in split.queries) == 7
    assert sum(i.startswith("a+d/") for i in split.queries) == 2
    assert len(split.queries) == len(RECORDS) - 6 - 11


def test_same_seed_same_split_other_seed_other_split() -> None:
    first = split_prompts(RECORDS, ["a", "b", "c"], seed=42)
    shuffled = list(reversed(RECORDS))
    again = split_prompts(shuffled, {"c", "b", "a"}, seed=42)
    assert first.prompts == again.prompts
    assert sorted(first.queries) == sorted(again.queries)
    assert split_prompts(RECORDS, ["a", "b", "c"], seed=82).prompts != first.prompts


def test_class_without_single_class_image_is_an_error() -> None:
    records = _records({("a", "b"): 4, ("a",): 3})
    with pytest.raises(ValueError, match="'b'"):
        split_prompts(records, ["a", "b"])


@settings(max_examples=50, deadline=None)
@given(
    counts=st.lists(st.integers(0, 15), min_size=5, max_size=5),
    k=st.integers(1, 6),
    seed=st.integers(0, 10_000),
)
def test_split_invariants(counts: list[int], k: int, seed: int) -> None:
    spec = dict(zip([("a",), ("b",), ("a", "b"), ("c",), ()], counts, strict=True))
    records = _records(spec)
    evaluated = ["a", "b"]
    if spec[("a",)] == 0 or spec[("b",)] == 0:
        with pytest.raises(ValueError):
            split_prompts(records, evaluated, k=k, seed=seed)
        return
    split = split_prompts(records, evaluated, k=k, seed=seed)
    prompt_ids = {i for ids in split.prompts.values() for i in ids}
    assert not prompt_ids & set(split.queries)
    for name in evaluated:
        total = sum(name in r.classes for r in records)
        expected = 1 if total < 10 else min(k, spec[(name,)])
        assert len(split.prompts[name]) == expected
    assert len(split.queries) == len(records) - spec[("c",)] - len(prompt_ids)


def test_holdout_class_is_deterministic_and_order_free() -> None:
    names = ["Blowhole", "Break", "Fray", "Uneven"]
    picked = holdout_class(names, 42)
    assert picked in names
    assert holdout_class(list(reversed(names)), 42) == picked
    assert len({holdout_class(names, seed) for seed in range(40)}) == len(names)


def test_calibration_share_is_stable_and_about_its_size() -> None:
    ids = [f"Free/exp{i}_num_{i * 7919}" for i in range(3000)]
    picked = [i for i in ids if is_calibration_image(i)]
    assert 0.27 < len(picked) / len(ids) < 0.33
    assert picked == [i for i in reversed(ids) if is_calibration_image(i)][::-1]
    assert all(is_calibration_image(i, share=1.0) for i in ids)
    assert not any(is_calibration_image(i, share=0.0) for i in ids)
