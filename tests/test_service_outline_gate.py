"""A model file with gated exemplar-matched proposals, served for real (real HTTP, real Redis): a
class the network does not outline is found by its exemplar's looks when an engineer searches
below the calibrated threshold, and its own network detections count as much as the network
outlines it; the line never waits for that decision, and nothing is written.
"""

from __future__ import annotations

import shutil

import pytest

from models.checkpoint import set_scoring
from tests.test_service_api import _ns, inspect, iou, register, teach
from tests.test_service_resilience import _wait_for

pytestmark = [pytest.mark.slow, pytest.mark.integration]

PROPOSAL_SCORE = 0.15  # below the test servers' threshold of 0.2
GATE = 0.4


@pytest.fixture(scope="module")
def gated(service_factory, redis_server, service_model_path, tmp_path_factory):
    path = tmp_path_factory.mktemp("gated") / "model.pt"
    shutil.copy(service_model_path, path)
    set_scoring(path, template_proposal_score=PROPOSAL_SCORE, proposal_gate_iou=GATE)
    svc = service_factory(REDIS_URL=redis_server.url, INSPECT_MODEL_PATH=str(path)).wait_ready()
    with svc.client() as client:
        client.log_tail = svc.log_tail  # type: ignore[attr-defined]
        yield client


def test_a_class_the_network_cannot_outline_is_searched_for_by_its_looks(gated, tiny_image_bytes):
    ns = _ns()
    teach(gated, ns, tiny_image_bytes)
    clean, instances = tiny_image_bytes(41)  # a defect-free surface
    assert instances == []
    box = [20, 20, 100, 100]
    version = register(gated, ns, clean, "blank", boxes=[box])["version"]

    blank = gated.get(f"/v1/namespaces/{ns}/classes/blank/self-check").json()
    assert blank["found"] == 0 and blank["outline"] < GATE and blank["template_proposals"], blank
    assert "template matching" in blank["advice"]
    assert "count 0.00 of their score" in blank["advice"], "its own detections count for nothing"
    assert blank["detection_weight"] == 0.0
    for name in ("scratch", "spot"):
        check = gated.get(f"/v1/namespaces/{ns}/classes/{name}/self-check").json()
        assert check["template_proposals"] == (check["outline"] < GATE), check
        want = min(1.0, check["outline"] / (GATE / 2))
        assert check["detection_weight"] == pytest.approx(want, abs=1e-3), check

    at_default = inspect(gated, ns, clean, mask_format="none")
    assert all(d["class_name"] != "blank" for d in at_default["detections"]), at_default
    # a line inspection does not wait for the outlines but starts them, once for the version
    _wait_for(lambda: "class outlines computed" in gated.log_tail(200), 60, "class outlines")

    searched = inspect(gated, ns, clean, mask_format="rle", score_threshold=0.05)
    found = [d for d in searched["detections"] if d["class_name"] == "blank"]
    assert found, searched["detections"]
    assert iou(found[0]["box"], box) > 0.9
    assert all(0.05 <= d["score"] <= PROPOSAL_SCORE + 1e-6 for d in found), (
        "outlined at 0, the network's own misplaced detections of the class are dropped"
    )
    assert found[0]["mask"] is not None
    assert "'blank': 0.0" in gated.log_tail(200), "the log says what each class scored"
    assert gated.log_tail(200).count("class outlines computed") == 1
    again = inspect(gated, ns, clean, mask_format="none", score_threshold=0.05)
    assert [d["class_name"] for d in again["detections"]].count("blank") == len(found)
    assert gated.log_tail(200).count("class outlines computed") == 1, "kept for the version"

    # the outlines follow the prompts: a new version is decided again, and nothing was written
    assert gated.get(f"/v1/namespaces/{ns}/prompts").json()["version"] == version
    gated.delete(f"/v1/namespaces/{ns}/classes/blank").raise_for_status()
    after = inspect(gated, ns, clean, mask_format="none", score_threshold=0.05)
    assert all(d["class_name"] != "blank" for d in after["detections"])
