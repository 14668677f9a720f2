import pandas as pd
import torch

from mmfuse.config import parse_config
from mmfuse.data.batching import Batch, ModalityBatch
from mmfuse.errors import ConfigError
from mmfuse.features import Features
from mmfuse.tasks import create_task
from mmfuse.train import drop_modalities

import pytest


def batch_of(n: int, image_present: torch.Tensor) -> Batch:
    text = Features(pooled=torch.randn(n, 3))
    return Batch(rows=torch.arange(n), target=None, modalities={
        "image": ModalityBatch(present=image_present, prepared={"pixels": torch.zeros(1, 3, 2, 2)},
                               inverse=torch.zeros(n, dtype=torch.long)),
        "text": ModalityBatch(present=torch.ones(n, dtype=torch.bool), features=text),
    })


def test_modality_dropout_rates_and_never_an_empty_row():
    torch.manual_seed(0)
    image_present = torch.rand(4000) > 0.1
    out = drop_modalities(batch_of(4000, image_present), {"image": 0.3, "text": 0.3})
    image, text = out.modalities["image"].present, out.modalities["text"].present
    assert (image | text).all()                      # nobody loses everything
    assert not (image & ~image_present).any()        # absent stays absent
    assert torch.equal(out.modalities["text"].features.present, text)  # cached features agree
    # both-present rows: each modality dropped ~30% minus the restored both-dropped ~9%
    assert 0.17 < 1 - text.float().mean().item() < 0.27


def test_modality_dropout_is_checked_in_config():
    with pytest.raises(ConfigError, match="modality_dropout.audio"):
        parse_config({"train": {"modality_dropout": {"audio": 0.3}}})
    with pytest.raises(ConfigError, match=r"not in \[0, 1\)"):
        parse_config({"train": {"modality_dropout": {"image": 1.0}}})


def validation_score(name: str, output: torch.Tensor, target: torch.Tensor) -> float:
    task = create_task(name)
    metric = task.val_metric(2)
    metric.update(task.scores(output), target)
    return float(metric.compute())


def test_validation_scores():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    assert validation_score("classification", logits, torch.tensor([0, 1, 1])) == pytest.approx(2 / 3)
    # a label the model never saw in training (UNSEEN) counts wrong, not left out
    assert validation_score("classification", logits, torch.tensor([0, 1, -100])) == pytest.approx(2 / 3)
    assert validation_score("regression", torch.tensor([1.0, 3.0]), torch.tensor([1.0, 1.0])) == pytest.approx(2.0)


# ----- alignment as an auxiliary loss (train.alignment) ------------------------------------------

def test_auxiliary_alignment_lowers_its_loss_and_marks_repeated_rows_positive():
    from mmfuse.features import Features
    from mmfuse.heads.alignment import AuxiliaryAlignment

    torch.manual_seed(0)
    images = torch.randn(8, 12)
    texts = images @ torch.randn(12, 10)  # each image's text is a fixed function of it
    rows = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 0, 1])  # rows 8, 9 repeat images 0, 1
    feats = {"image": Features(pooled=images[rows]), "text": Features(pooled=texts[rows])}
    alignment = AuxiliaryAlignment(dims={"image": 12, "text": 10}, weights={"contrastive": 1.0}, dim=8)
    positives = alignment.positives(images[rows], texts[rows])
    assert positives[0, 8] and positives[8, 0] and positives[1, 9] and not positives[0, 1]
    optimizer = torch.optim.Adam(alignment.parameters(), lr=0.05)
    first = alignment(feats).item()
    for _ in range(60):
        optimizer.zero_grad()
        loss = alignment(feats)
        loss.backward()
        optimizer.step()
    assert alignment(feats).item() < 0.5 * first
    # Rows without one of the modalities take no part; fewer than two rows: no loss.
    feats["text"] = Features(pooled=texts[rows], present=torch.tensor([True] + [False] * 9))
    assert alignment(feats).item() == 0.0


def test_alignment_is_checked_in_config():
    with pytest.raises(ConfigError, match="unknown alignment objective 'nope'"):
        parse_config({"train": {"alignment": {"nope": 1.0}}})
    with pytest.raises(ConfigError, match="needs two modalities"):
        parse_config({"encoders": {"text": None}, "train": {"alignment": {"contrastive": 0.1}}})


def test_fit_with_auxiliary_alignment_saves_and_reloads(tmp_path, shapes_csv):
    from conftest import tiny_config
    from mmfuse import Predictor

    config = tiny_config(tmp_path, shapes_csv, **{"train.alignment": {"contrastive": 0.5, "dcca": 0.1},
                                                   "train.alignment_dim": 8})
    predictor = Predictor(config).fit()
    trained = predictor.model.alignment.project["image"].weight.detach().clone()
    from mmfuse.model import build_encoders, build_model

    torch.manual_seed(predictor.config.train.seed)  # as fit seeds: the weights training started from
    fresh = build_model(predictor.config, len(predictor.labels), build_encoders(predictor.config))
    assert not torch.allclose(fresh.alignment.project["image"].weight, trained)  # the loss trained it
    predictor.save(tmp_path / "model")
    loaded = Predictor.load(tmp_path / "model")
    assert torch.equal(loaded.model.alignment.project["image"].weight, trained)
    table = pd.read_csv(shapes_csv)
    table["image"] = str(tmp_path) + "/" + table["image"]
    rows = table.drop(columns=["answer"])
    assert torch.equal(predictor.predict_scores(rows)[1], loaded.predict_scores(rows)[1])


def test_keep_last_keeps_the_final_epochs_weights(tmp_path, shapes_csv):
    """train.keep: last — the model ends with the last epoch's weights, not the best validation epoch's."""
    import torch

    from conftest import tiny_config
    from mmfuse import Predictor
    from mmfuse.train import read_checkpoint

    kept = {}
    for keep in ("best", "last"):
        config = tiny_config(tmp_path / keep, shapes_csv, **{"train.keep": keep, "train.epochs": 4})
        predictor = Predictor(config).fit()
        path = predictor.fit_summary["best_checkpoint"]
        assert path.endswith("last.ckpt" if keep == "last" else "best.ckpt")
        last = read_checkpoint(tmp_path / keep / "run" / "checkpoints" / "last.ckpt")["state_dict"]
        head = {k: v for k, v in predictor.model.head.state_dict().items()}
        kept[keep] = all(torch.equal(last[f"model.head.{k}"], v) for k, v in head.items())
    assert kept["last"]
