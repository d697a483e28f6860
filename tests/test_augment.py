"""Augmented copies for the flow's fresh codes: what a copy is, and that the flow stage trains on them."""

import pytest
import torch

from latentflows import ConvAutoencoder
from latentflows.data.augment import mirror_and_shift
from latentflows.runs import split_dataset
from latentflows.runtime import Runtime
from latentflows.training import FlowStage, StageContext


def test_a_copy_is_the_photo_mirrored_or_not_and_moved_by_at_most_max_shift():
    images = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8)
    copies = mirror_and_shift(images, 2, torch.Generator().manual_seed(0))
    assert copies.shape == images.shape and copies.dtype == torch.uint8
    found = set()
    for image, copy in zip(images, copies):
        matches = [(flip, dy, dx) for flip in (False, True) for dy in range(-2, 3) for dx in range(-2, 3)
                   if torch.equal(copy[:, max(dy, 0): 16 + min(dy, 0), max(dx, 0): 16 + min(dx, 0)],
                                  (image.flip(-1) if flip else image)[:, max(-dy, 0): 16 + min(-dy, 0),
                                                                      max(-dx, 0): 16 + min(-dx, 0)])]
        assert matches, "every copy is the photo, mirrored or not, moved by at most 2 pixels"
        found.update(matches)
    assert {flip for flip, _, _ in found} == {False, True}
    assert len({(dy, dx) for _, dy, dx in found}) > 10, "shifts vary from copy to copy"


def test_the_border_that_comes_into_view_repeats_the_edge():
    image = torch.arange(25, dtype=torch.uint8).reshape(1, 1, 5, 5)
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        copy = mirror_and_shift(image, 1, generator)[0, 0]
        rows, cols = copy.div(5, rounding_mode="floor"), copy % 5
        # each row of a copy comes from one source row, each column from one source column (no black bars)
        assert (rows == rows[:, :1]).all() and (cols == cols[:1]).all()
        assert set(rows[:, 0].tolist()) <= set(range(5)) and (copy.float().min() >= 0)


def test_the_same_seed_gives_the_same_copies():
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    first = mirror_and_shift(images, 3, torch.Generator().manual_seed(5))
    assert torch.equal(first, mirror_and_shift(images, 3, torch.Generator().manual_seed(5)))
    assert not torch.equal(first, mirror_and_shift(images, 3, torch.Generator().manual_seed(6)))


@pytest.mark.parametrize("max_shift", [-1, 8])
def test_a_shift_that_does_not_fit_is_refused(max_shift):
    with pytest.raises(ValueError, match="max_shift must be in"):
        mirror_and_shift(torch.zeros(1, 3, 16, 16, dtype=torch.uint8), max_shift)


def test_the_flow_stage_trains_on_the_photos_codes_and_their_copies_and_validates_on_the_photos(small_pets):
    train_set, val_set = split_dataset(small_pets, 0.2, seed=0)
    context = StageContext(train_set, val_set, Runtime("cpu"), seed=0, image_size=64)
    context.models["autoencoder"] = ConvAutoencoder(16, width=4, image_size=64, fc_dim=32)
    model = {"class": "ConditionalRealNVP", "config": {"couplings": 2, "hidden": [16], "standardize": True}}
    plain = FlowStage(epochs=1, batch_size=8, lr=1e-3, model=model).plan(context)
    augmented = FlowStage(epochs=1, batch_size=8, lr=1e-3, model=model, augment=2).plan(context)
    plain_codes, plain_context = plain.train_batches.tensors
    codes, contexts = augmented.train_batches.tensors
    assert len(codes) == 3 * len(train_set) and len(plain_codes) == len(train_set)
    assert torch.equal(codes[: len(train_set)], plain_codes), "the photos' own codes come first, unchanged"
    assert torch.equal(contexts, plain_context.repeat(3, 1)), "each copy keeps its photo's class"
    assert not torch.allclose(codes[len(train_set):2 * len(train_set)], plain_codes), "copies give new codes"
    assert torch.equal(augmented.val_batches.tensors[0], plain.val_batches.tensors[0])
    with pytest.raises(ValueError, match="augment must be a non-negative integer"):
        FlowStage(epochs=1, batch_size=8, lr=1e-3, augment=-1)
