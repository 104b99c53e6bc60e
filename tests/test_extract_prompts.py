"""The offline prompt extraction job against a real redis-server (tests/redis_fixture.py).

A small synthetic dataset is written to disk in the folder layout (real JPEG/PNG files) and a
small random model is saved once per module; every test then runs the job for real.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from models.build import build_model
from models.checkpoint import save_model
from models.data.loading import load_dataset
from models.data.synthetic import SyntheticDataset, write_folder_dataset
from models.predictor import PromptRegion, TorchPredictor
from models.prompt_extraction import (
    EXIT_REFUSED,
    ExtractionSettings,
    PromptExtractor,
    extract_prompts,
    main,
    select_prompt_images,
)
from prompt_store import Region, exemplar_id, image_hash, prototype_of
from tests.tiny import TINY_RANDOM

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("pit", "scratch", "spot")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = TINY_RANDOM
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_model(build_model(cfg).eval(), cfg, path)
    return path


@pytest.fixture(scope="module")
def predictor(model_path: Path) -> Iterator[TorchPredictor]:
    """One torch thread: the suite shares a small machine, and oversubscribed threads crawl."""
    threads = torch.get_num_threads()
    yield TorchPredictor.load(model_path, threads=1)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    synthetic = SyntheticDataset(
        n_images=12, seed=3, size=(128, 128), classes=CLASSES, max_classes_per_image=1
    )
    out = tmp_path_factory.mktemp("data") / "synthetic_folder"
    write_folder_dataset(synthetic, out, n=12)
    return out


def expected_ids(data_dir: Path) -> dict[str, set[str]]:
    """Independent of the job: class -> ids from the files on disk and pycocotools."""
    dataset = load_dataset(data_dir)
    out: dict[str, set[str]] = {}
    for record in dataset.records:
        if len(record.classes) != 1:
            continue
        (name,) = record.classes
        data = (data_dir / f"{record.image_id}.jpg").read_bytes()
        _, instances = dataset.load(record)
        for inst in instances:
            rle = mask_utils.encode(np.asfortranarray(inst.mask.astype(np.uint8)))
            region = Region(
                tuple(float(v) for v in inst.box),
                {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")},
            )
            out.setdefault(name, set()).add(exemplar_id(image_hash(data), region, name))
    return out


def run(data_dir, predictor, store, ns, **kw):
    settings = ExtractionSettings(namespace=ns, source=str(data_dir), **kw)
    return extract_prompts(load_dataset(data_dir), predictor, store, settings, progress=False)


def test_writes_expected_exemplars_and_prototypes(data_dir, predictor, redis_store):
    expected = expected_ids(data_dir)
    assert len(expected) >= 2  # the fixture really has several classes

    report = run(data_dir, predictor, redis_store, "line1", batch_size=4)

    summary = report.to_json()
    assert summary["model_fingerprint"] == predictor.fingerprint
    assert set(summary["classes"]) == set(expected)
    for name, ids in expected.items():
        assert summary["classes"][name]["exemplars_written"] == len(ids)
        assert summary["classes"][name]["exemplars_skipped"] == 0
    assert redis_store.exemplar_ids("line1") == set().union(*expected.values())
    snap = redis_store.fetch_prototypes("line1", predictor.fingerprint)
    assert snap.class_names == sorted(expected)
    assert snap.counts == [len(expected[n]) for n in snap.class_names]
    assert summary["version"] == snap.version
    # the stored embeddings are the model's encodings of the stored image and region
    name = snap.class_names[0]
    info = redis_store.get_class("line1", name, with_embeddings=True)
    ex = info.exemplars[0]
    image = load_dataset(data_dir)
    raw = redis_store.get_source_image("line1", ex.image_hash)
    assert image_hash(raw) == ex.image_hash
    stem = next(p for p in data_dir.rglob("*.jpg") if p.read_bytes() == raw)
    record = next(r for r in image.records if r.image_id == f"{stem.parent.name}/{stem.stem}")
    pixels, _ = image.load(record)
    mask = mask_utils.decode(ex.region.mask_rle).astype(bool)
    again = predictor.encode_prompts(pixels, [PromptRegion(np.array(ex.region.box), mask)])[0]
    np.testing.assert_allclose(ex.embedding, again, atol=1e-5)
    np.testing.assert_allclose(
        snap.matrix[0], prototype_of([e.embedding for e in info.exemplars]), atol=1e-6
    )
    assert ex.author == "extract_prompts" and record.image_id in (ex.note or "")

    # a second run writes nothing and leaves the version alone
    again_report = run(data_dir, predictor, redis_store, "line1", batch_size=4).to_json()
    assert again_report["exemplars_written"] == 0
    assert again_report["exemplars_skipped"] == sum(map(len, expected.values()))
    assert redis_store.namespace_info("line1").version == snap.version


class InterruptingStore:
    """Passes everything to the real store, then raises KeyboardInterrupt after N batches."""

    def __init__(self, store, batches: int) -> None:
        self.store, self.left = store, batches

    def __getattr__(self, name):
        return getattr(self.store, name)

    def add_exemplars(self, ns, items, *, fingerprint):
        if self.left == 0:
            raise KeyboardInterrupt
        self.left -= 1
        return self.store.add_exemplars(ns, items, fingerprint=fingerprint)


def test_interrupted_run_resumes_to_the_same_state(data_dir, predictor, redis_store):
    run(data_dir, predictor, redis_store, "clean", batch_size=3)
    clean = redis_store.fetch_prototypes("clean", predictor.fingerprint)

    settings = ExtractionSettings(namespace="resumed", batch_size=3)
    job = PromptExtractor(
        load_dataset(data_dir), predictor, InterruptingStore(redis_store, 1), settings
    )
    with pytest.raises(KeyboardInterrupt):
        job.run(progress=False)
    partial = redis_store.exemplar_ids("resumed")
    assert len(partial) == 3  # one batch landed, atomically
    assert job.report.to_json()["exemplars_written"] == 3

    report = run(data_dir, predictor, redis_store, "resumed", batch_size=3).to_json()
    assert report["exemplars_skipped"] == 3
    assert redis_store.exemplar_ids("resumed") == redis_store.exemplar_ids("clean")
    resumed = redis_store.fetch_prototypes("resumed", predictor.fingerprint)
    assert resumed.class_names == clean.class_names and resumed.counts == clean.counts
    np.testing.assert_allclose(resumed.matrix, clean.matrix, atol=1e-6)


def test_other_models_namespace_is_refused_and_untouched(
    data_dir, model_path, predictor, redis_url, redis_store, capsys
):
    redis_store.create_namespace("taken", "someone-elses-model", predictor.embed_dim)
    before = redis_store.namespace_info("taken")

    args = ["--data", str(data_dir), "--namespace", "taken"]
    code = main([*args, "--redis-url", redis_url, "--model", str(model_path), "--no-progress"])

    assert code == EXIT_REFUSED
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "someone-elses-model" in err and "new --namespace" in err and "reextract" in err
    assert redis_store.namespace_info("taken") == before
    assert redis_store.exemplar_ids("taken") == set()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("case", ["no_data", "unknown_class", "no_redis"])
def test_clear_refusals(case, data_dir, model_path, redis_url, capsys, tmp_path):
    args = {"data": str(data_dir), "redis": redis_url, "extra": []}
    if case == "no_data":
        args["data"] = str(tmp_path / "missing")
    elif case == "unknown_class":
        args["extra"] = ["--classes", "pit", "warp"]
    else:
        args["redis"] = f"redis://127.0.0.1:{free_port()}/0"
    code = main(
        [
            "--data",
            args["data"],
            "--namespace",
            "ns",
            "--redis-url",
            args["redis"],
            "--model",
            str(model_path),
            "--no-progress",
            *args["extra"],
        ]
    )
    assert code == EXIT_REFUSED
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    hint = {"no_data": "does not exist", "unknown_class": "'warp'", "no_redis": "unreachable"}
    assert hint[case] in err[0]


def test_dry_run_lists_without_writing(data_dir, predictor, redis_store):
    summary = run(data_dir, predictor, redis_store, "dry", dry_run=True, per_class=1).to_json()

    assert summary["dry_run"] is True
    assert all(c["images"] == 1 for c in summary["classes"].values())
    assert len(summary["would_write"]) == summary["exemplars_written"] > 0
    assert redis_store.namespaces() == []


def test_selection_is_seeded_and_single_class_only(data_dir):
    records = load_dataset(data_dir).records
    a = select_prompt_images(records, CLASSES, per_class=2, seed=0)
    assert a == select_prompt_images(records, CLASSES, per_class=2, seed=0)
    # a class's draw does not depend on the other classes asked for
    assert select_prompt_images(records, ["spot"], per_class=2, seed=0)["spot"] == a["spot"]
    for name, chosen in a.items():
        assert 1 <= len(chosen) <= 2 and all(r.classes == (name,) for r in chosen)
    everything = select_prompt_images(records, CLASSES)
    assert sum(map(len, everything.values())) == sum(len(r.classes) == 1 for r in records)


def test_cli_end_to_end(data_dir, model_path, redis_url, redis_store):
    env = {**os.environ, "INSPECT_REDIS_URL": redis_url}
    cmd = [sys.executable, str(REPO / "scripts" / "extract_prompts.py")]
    cmd += ["--data", str(data_dir), "--namespace", "cli", "--model", str(model_path)]
    cmd += ["--per-class", "2", "--batch-size", "2", "--threads", "1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=REPO)

    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["namespace"] == "cli"
    assert all(1 <= c["images"] <= 2 for c in summary["classes"].values())
    snap = redis_store.fetch_prototypes("cli", summary["model_fingerprint"])
    assert snap.version == summary["version"]
    assert dict(zip(snap.class_names, snap.counts, strict=True)) == {
        name: c["exemplars_written"] for name, c in summary["classes"].items()
    }
    assert set(summary) >= {"namespace", "model_fingerprint", "classes", "version", "seconds"}
