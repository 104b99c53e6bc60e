"""The anomaly mode end to end: real `python -m service` (uvicorn) with its embedded, persistent
redis-server, the embedded default model on the torch backend, synthetic parts.

Only defect-free references are registered (no prompted class): a drawn defect must come back as
an `unknown` detection in the right place and reject the part, an unchanged good part must pass,
registration must be idempotent and survive a restart of the service and its store, and bad input
must get a 4xx problem and change nothing.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from models.rle import decode_rle
from tests.anomaly_samples import SIZE, defective_part, good_part
from tests.service_fixtures import ADMIN_KEY, INSPECT_KEY, ServiceProcess, encode_png

pytestmark = [pytest.mark.slow, pytest.mark.integration]

PROBLEM = "application/problem+json"
NS = "parts"
GOOD = [encode_png(good_part(seed)) for seed in range(8)]


def _env() -> dict[str, str]:
    return {
        "INSPECT_BACKEND": "torch",
        "INSPECT_WARMUP": "false",
        "INSPECT_BATCH_AUTOTUNE": "false",
        "INSPECT_THREADS": "1",
        "INSPECT_INSPECT_API_KEYS": INSPECT_KEY,
        "INSPECT_ADMIN_API_KEYS": ADMIN_KEY,
        "INSPECT_LOG_FORMAT": "text",
        "INSPECT_ANOMALY_MAX_REFERENCES_PER_REQUEST": "8",
    }


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory):
    return tmp_path_factory.mktemp("anomaly-service")  # embedded store data: workdir/data/redis


@pytest.fixture(scope="module")
def service(workdir):
    proc = ServiceProcess(_env(), workdir).start().wait_ready()
    yield proc
    proc.terminate()


@pytest.fixture(scope="module")
def api(service):
    with service.client() as client:
        yield client


def register(client, images, status=201, ns=NS, **data):
    files = [("image", (f"good{i}.png", img, "image/png")) for i, img in enumerate(images)]
    res = client.post(f"/v1/namespaces/{ns}/references", files=files, data=data)
    assert res.status_code == status, res.text
    return res.json()


def inspect(client, data, **params):
    res = client.post("/v1/inspect", params={"namespace": NS, **params}, content=data)
    assert res.status_code == 200, res.text
    return res.json()


def _problem(res, status, kind=None):
    assert res.status_code == status, res.text
    assert res.headers["content-type"].startswith(PROBLEM)
    if kind is not None:
        assert res.json()["type"].endswith("/" + kind), res.json()


def test_registration_is_idempotent_and_calibrates(api) -> None:
    first = register(api, GOOD, author="qa")
    assert first["count"] == 8 and all(r["created"] for r in first["references"])
    assert {(r["width"], r["height"]) for r in first["references"]} == {(SIZE, SIZE)}
    again = register(api, GOOD[:3] + GOOD[:1])
    assert [r["id"] for r in again["references"]] == [
        r["id"] for r in first["references"][:3] + first["references"][:1]
    ]
    assert not any(r["created"] for r in again["references"])
    assert again["version"] == first["version"] and again["count"] == 8
    listing = api.get(f"/v1/namespaces/{NS}/references").json()
    assert listing["count"] == 8 and listing["references"][0]["author"] == "qa"
    state = listing["anomaly"]
    assert state["status"] == "ok" and state["threshold_source"] == "calibrated"
    assert state["threshold"] > 0 and state["calibration_scores"] == 8
    assert 0 < state["memory_patches"] <= 20_000 and state["memory_bytes"] > 0


def test_a_drawn_defect_is_flagged_and_located_an_unchanged_part_passes(api) -> None:
    image, truth = defective_part(100)
    body = inspect(api, encode_png(image), heatmap="true", anomaly_map="true")
    assert body["verdict"] == "reject", body["anomaly"]
    assert body["anomaly"]["anomalous"] and body["anomaly"]["score"] > 0.5
    unknown = [d for d in body["detections"] if d["class_name"] == "unknown"]
    assert unknown and body["anomaly"]["unknown_count"] == len(unknown)
    top = unknown[0]
    mask = decode_rle(top["mask"])
    assert mask.shape == (SIZE, SIZE) and (mask & truth).sum() > 0.5 * truth.sum()
    x0, y0, x1, y1 = top["box"]
    ys, xs = np.nonzero(truth)
    assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1
    assert (x1 - x0) * (y1 - y0) < 0.5 * SIZE * SIZE  # located, not the whole part
    heat = np.array(Image.open(io.BytesIO(base64.b64decode(body["heatmap_png"]))))
    assert heat.shape == (SIZE, SIZE) and heat[truth].mean() > 100 and heat[~mask].max() == 0
    amap = np.array(Image.open(io.BytesIO(base64.b64decode(body["anomaly"]["map_png"]))))
    assert amap[truth].mean() > amap[~mask].mean() + 50
    assert "anomaly" in body["timings_ms"]
    state = api.get(f"/v1/namespaces/{NS}/anomaly").json()
    assert body["anomaly"]["version"] == state["version"]  # the memory it was scored with

    good = inspect(api, encode_png(good_part(101)))
    assert good["verdict"] == "pass" and good["detections"] == [], good["anomaly"]
    assert good["anomaly"]["status"] == "ok" and not good["anomaly"]["anomalous"]
    assert good["anomaly"]["score"] < 0.5


def test_namespace_overrides(api) -> None:
    image, _ = defective_part(100)
    res = api.put(f"/v1/namespaces/{NS}/anomaly", json={"unknown_rejects": False})
    assert res.status_code == 200 and res.json()["unknown_rejects"] is False
    body = inspect(api, encode_png(image))
    assert body["verdict"] == "pass" and body["detections"][0]["class_name"] == "unknown"
    res = api.put(f"/v1/namespaces/{NS}/anomaly", json={"threshold": 1e6})
    assert res.json()["threshold_source"] == "override" and res.json()["unknown_rejects"]
    assert inspect(api, encode_png(image))["detections"] == []
    reset = api.put(f"/v1/namespaces/{NS}/anomaly", json={}).json()
    assert reset["threshold_source"] == "calibrated" and reset["unknown_rejects"] is True


def test_bad_input_gets_4xx_and_changes_nothing(api) -> None:
    before = api.get(f"/v1/namespaces/{NS}/references").json()
    corrupt = GOOD[0][: len(GOOD[0]) // 2]
    files = [("image", ("a.png", GOOD[0], "image/png")), ("image", ("b.png", b"nope", "x/y"))]
    cases = [
        (api.post(f"/v1/namespaces/{NS}/references", files=files), 415, "not-an-image"),
        (
            api.post(
                f"/v1/namespaces/{NS}/references",
                files=[
                    ("image", ("a.png", encode_png(good_part(50)), "image/png")),
                    ("image", ("b.png", corrupt, "image/png")),
                ],
            ),
            400,
            "corrupt-image",
        ),
        (
            api.post(
                f"/v1/namespaces/{NS}/references", files=[("image", ("e.png", b"", "image/png"))]
            ),
            422,
            "empty-image",
        ),
        (
            api.post(
                f"/v1/namespaces/{NS}/references",
                files=[("image", (f"{i}.png", GOOD[0], "image/png")) for i in range(9)],
            ),
            422,
            "too-many-images",
        ),
        (api.post(f"/v1/namespaces/{NS}/references", data={"author": "x"}), 422, None),
        (
            api.post(
                f"/v1/namespaces/{NS}/references",
                files=[("image", ("a.png", GOOD[1], "image/png"))],
                data={"author": " padded "},
            ),
            422,
            "invalid-name",
        ),
        (
            api.post(
                f"/v1/namespaces/{NS}/references",
                files=[("image", ("a.png", GOOD[1], "image/png"))],
                headers={"X-API-Key": INSPECT_KEY},
            ),
            403,
            None,
        ),
        (
            api.post(
                "/v1/namespaces/bad%2Fname/references",
                files=[("image", ("a.png", GOOD[1], "image/png"))],
            ),
            None,
            None,
        ),
        (api.put(f"/v1/namespaces/{NS}/anomaly", json={"threshold": -1}), 422, None),
        (api.put(f"/v1/namespaces/{NS}/anomaly", json={"treshold": 1}), 422, None),
        (api.put(f"/v1/namespaces/{NS}/anomaly", json={"min_region_fraction": 1}), 422, None),
        (api.put("/v1/namespaces/no-such-ns/anomaly", json={}), 404, "not-found"),
        (api.get("/v1/namespaces/no-such-ns/references"), 404, "not-found"),
        (api.delete(f"/v1/namespaces/{NS}/references/xyz"), 422, "validation-error"),
        (api.delete(f"/v1/namespaces/{NS}/references/{'0' * 32}"), 404, "not-found"),
        (
            api.get(f"/v1/namespaces/{NS}/anomaly", headers={"X-API-Key": INSPECT_KEY}),
            403,
            None,
        ),
    ]
    for i, (res, status, kind) in enumerate(cases):
        if status is None:  # a path the router refuses one way or another: any 4xx
            assert 400 <= res.status_code < 500, res.text
            continue
        try:
            _problem(res, status, kind)
        except AssertionError as exc:
            raise AssertionError(f"case {i}: {exc}") from exc
    after = api.get(f"/v1/namespaces/{NS}/references").json()
    assert after["anomaly"]["version"] == before["anomaly"]["version"]
    assert [r["id"] for r in after["references"]] == [r["id"] for r in before["references"]]


def test_references_survive_a_restart_of_service_and_store(service, api, workdir) -> None:
    before = api.get(f"/v1/namespaces/{NS}/references").json()
    service.terminate()  # stops its embedded redis-server too (AOF persistence on)
    second = ServiceProcess(_env(), workdir).start().wait_ready()
    try:
        with second.client() as client:
            after = client.get(f"/v1/namespaces/{NS}/references").json()
            assert [r["id"] for r in after["references"]] == [r["id"] for r in before["references"]]
            assert after["anomaly"]["threshold"] == pytest.approx(before["anomaly"]["threshold"])
            again = register(client, GOOD[:2])
            assert not any(r["created"] for r in again["references"]) and again["count"] == 8
            image, _ = defective_part(100)
            assert inspect(client, encode_png(image))["verdict"] == "reject"
            removed = client.delete(
                f"/v1/namespaces/{NS}/references/{after['references'][0]['id']}"
            )
            assert removed.status_code == 200
            assert client.get(f"/v1/namespaces/{NS}/references").json()["count"] == 7
    finally:
        second.terminate()
