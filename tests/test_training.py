"""Training works end to end: a few hundred steps on a tiny synthetic set drive the loss down and
the model then finds a drawn defect, with the right name, from a few exemplars."""

import numpy as np
import pytest
import torch

from models.box_ops import box_iou
from models.predictor import PromptRegion, TorchPredictor, prototypes_from
from tests.tiny import CLASSES, TinySet


@pytest.mark.slow
def test_training_drives_the_loss_down_clearly(tiny_run):
    assert np.mean(tiny_run.losses[-50:]) < 0.5 * np.mean(tiny_run.losses[:25])


@pytest.mark.slow
def test_trained_model_finds_the_prompted_defect(tiny_run):
    predictor = TorchPredictor.load(tiny_run.model_path)
    train, test = TinySet(40, seed=0), TinySet(10, seed=99)
    protos = []
    for name in sorted(CLASSES):
        embs = []
        for rec in [r for r in train.records if r.classes == (name,)][:3]:
            image, inst = train.load(rec)
            embs.append(predictor.encode_prompts(image, [PromptRegion(inst[0].box, inst[0].mask)]))
        protos.append(prototypes_from(np.concatenate(embs)))
    hits = 0
    for rec in test.records:
        image, inst = test.load(rec)
        det = predictor.detect([image], np.stack(protos), score_threshold=0.0, max_detections=1)[0]
        iou = box_iou(torch.from_numpy(det.boxes), torch.from_numpy(inst[0].box[None])).item()
        hits += bool(iou > 0.5 and sorted(CLASSES)[det.class_index[0]] == inst[0].class_name)
    assert hits >= 6, f"found {hits}/10 prompted defects"


def test_training_resumes_from_its_checkpoint(tmp_path):
    """An interrupted run picks up at its last checkpoint with the same model and schedule."""
    from models.training.episodes import EpisodeConfig
    from models.training.trainer import TrainConfig, Trainer
    from tests.tiny import TINY

    torch.manual_seed(0)
    cfg = TrainConfig(steps=4, checkpoint_every=2, episode=EpisodeConfig(batch_size=2))
    first = Trainer(TINY, cfg, [(TinySet(8, seed=1), 1.0)], tmp_path)
    first.train_step()
    first.train_step()
    first.save_checkpoint()
    second = Trainer(TINY, cfg, [(TinySet(8, seed=1), 1.0)], tmp_path)
    assert second.try_resume() and second.step == 2
    for name, tensor in first.model.state_dict().items():
        assert torch.equal(tensor, second.model.state_dict()[name]), name
    final = second.run(progress=False)
    assert second.step == 4 and final.exists()


def test_the_same_seed_trains_the_same_model(tmp_path):
    """Training is reproducible: two runs of one config and seed end in identical weights, and
    another seed does not (the episodes, augmentations and initialisation all follow the seed)."""
    from models.training.episodes import EpisodeConfig
    from models.training.trainer import TrainConfig, Trainer
    from tests.tiny import TINY

    def weights(seed: int, out: str) -> dict[str, torch.Tensor]:
        cfg = TrainConfig(steps=3, seed=seed, episode=EpisodeConfig(batch_size=2))
        trainer = Trainer(TINY, cfg, [(TinySet(8, seed=1), 1.0)], tmp_path / out)
        for _ in range(cfg.steps):
            trainer.train_step()
        return trainer.model.state_dict()

    first, again, other = weights(0, "a"), weights(0, "b"), weights(1, "c")
    for name, tensor in first.items():
        assert torch.equal(tensor, again[name]), f"{name} differs between two seed-0 runs"
    assert any(not torch.equal(t, other[n]) for n, t in first.items() if t.is_floating_point())


def test_a_frozen_backbone_keeps_its_imagenet_weights_and_statistics(tmp_path):
    """With every block frozen (the small preset), training moves the new parts only: the ImageNet
    features the prompts are matched in stay exactly as shipped, BatchNorm statistics included."""
    from models.config import get_preset
    from models.training.episodes import EpisodeConfig
    from models.training.trainer import TrainConfig, Trainer

    torch.manual_seed(0)
    cfg = TrainConfig(steps=2, episode=EpisodeConfig(batch_size=2))
    model_cfg = get_preset("small", freeze_backbone_blocks=16, image_size=128)
    trainer = Trainer(model_cfg, cfg, [(TinySet(8, seed=2), 1.0)], tmp_path)
    blocks = {k: v.clone() for k, v in trainer.model.backbone.state_dict().items()}
    decoder = {k: v.clone() for k, v in trainer.model.decoder.state_dict().items()}
    trainer.train_step()
    trainer.train_step()
    for name, tensor in trainer.model.backbone.state_dict().items():
        assert torch.equal(tensor, blocks[name]), f"frozen backbone tensor {name} changed"
    moved = [
        k for k, v in trainer.model.decoder.state_dict().items() if not torch.equal(v, decoder[k])
    ]
    assert moved, "the decoder did not train"
