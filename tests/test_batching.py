import numpy as np
import torch

from mmfuse.data.batching import GroupBatchSampler, ModalityColumn, TableDataset, unique_index
from mmfuse.features import Features


def test_unique_index_marks_absent_rows():
    index, values = unique_index(["a.png", None, "b.png", "a.png"])
    assert index.tolist() == [0, -1, 1, 0] and values == ["a.png", "b.png"]


def test_batches_keep_every_row_of_an_image_together_and_cover_all_rows():
    groups = np.array([0, 0, 1, 2, 2, 2, 3, 4, 4])
    sampler = GroupBatchSampler(groups, 2, shuffle=True, seed=1)
    batches = list(sampler)
    assert sorted(r for b in batches for r in b) == list(range(9))
    for batch in batches:
        for g in set(groups[batch]):
            assert set(np.flatnonzero(groups == g)) <= set(batch)


def test_order_depends_only_on_seed_and_epoch():
    groups = np.arange(20)
    a, b = GroupBatchSampler(groups, 3, shuffle=True, seed=0), GroupBatchSampler(groups, 3, shuffle=True, seed=0)
    a.set_epoch(3), b.set_epoch(3)
    assert list(a) == list(b)
    b.set_epoch(4)
    assert list(a) != list(b)


def test_ranks_split_the_batches_without_overlap():
    groups = np.arange(10)
    parts = [list(GroupBatchSampler(groups, 2, shuffle=True, rank=r, world=2)) for r in range(2)]
    rows = [r for part in parts for b in part for r in b]
    assert sorted(rows) == list(range(10))
    assert len(GroupBatchSampler(groups, 2, shuffle=True, rank=1, world=2)) == len(parts[1])


def test_trainable_column_carries_each_unique_input_once():
    index = torch.tensor([0, 0, 1, -1, 1])
    column = ModalityColumn(index=index, values=["x", "y"], prepared={"pixels": torch.tensor([[10], [20]])})
    data = TableDataset({"image": column}, torch.zeros(5), np.arange(5))
    batch = data[[0, 1, 2, 3]]
    part = batch.modalities["image"]
    assert part.prepared["pixels"].tolist() == [[10], [20]]
    assert part.present.tolist() == [True, True, True, False]
    assert part.prepared["pixels"][part.inverse][:3].flatten().tolist() == [10, 10, 20]


def test_cached_column_gathers_features_and_masks_absent_rows():
    feats = Features(pooled=torch.tensor([[1.0], [2.0]]))
    column = ModalityColumn(index=torch.tensor([1, -1]), values=["x", "y"], features=feats)
    part = TableDataset({"text": column}, None, np.arange(2))[[0, 1]].modalities["text"]
    assert part.features.pooled[0].item() == 2.0 and part.features.present.tolist() == [True, False]


def test_a_batch_where_nobody_has_the_modality():
    column = ModalityColumn(index=torch.tensor([-1, -1]), values=[])
    part = TableDataset({"image": column}, None, np.arange(2))[[0, 1]].modalities["image"]
    assert part.features is None and part.prepared is None and not part.present.any()


def test_every_rank_takes_the_same_training_steps_and_validation_rows_once():
    groups = np.arange(7)  # batches of 3, 3 and 1 groups: rank 1 has no group of the last one
    train = [GroupBatchSampler(groups, 3, shuffle=True, rank=r, world=2) for r in range(2)]
    assert [len(s) for s in train] == [len(list(s)) for s in train] == [3, 3]  # equal steps: no DDP hang
    assert {r for s in train for b in s for r in b} == set(range(7))
    val = [GroupBatchSampler(groups, 3, shuffle=False, rank=r, world=2) for r in range(2)]
    rows = [r for s in val for b in s for r in b]
    assert sorted(rows) == list(range(7)) and [len(s) for s in val] == [len(list(s)) for s in val] == [3, 2]
    # one process sees the same batches as the processes together: the steps do not depend on them
    single = list(GroupBatchSampler(groups, 3, shuffle=True))
    assert [sorted(a + b) for a, b in zip(*train)][:2] == [sorted(b) for b in single][:2]
