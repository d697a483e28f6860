import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from latentflows import data as data_module
from latentflows.data import load_images, to_rgb_array
from latentflows.errors import DataError


def test_embedded_default_is_the_real_pets(pets):
    assert pets.images.dtype == torch.uint8 and pets.images.shape == (6665, 3, 64, 64)
    assert pets.class_counts() == {"cat": 2159, "dog": 4506}
    assert 60 < pets.images.float().mean() < 190  # real photos, not blank


def test_shared_parquet_through_the_datasets_path(shared_parquet, pets):
    species = load_images(shared_parquet)
    assert species.class_names == ["cat", "dog"] and len(species) == 6665
    assert torch.equal(species.labels, pets.labels)
    # the embedded copy is the same photos re-encoded at JPEG quality 95
    difference = (species.images.float() - pets.images.float()).pow(2).mean()
    assert 10 * torch.log10(255**2 / difference) > 35
    breeds = load_images(shared_parquet, label_field="label")
    assert breeds.num_classes == 37 and "Abyssinian" in breeds.class_names and "beagle" in breeds.class_names


def test_cache_makes_the_second_load_skip_decoding(tmp_path, monkeypatch, shared_parquet):
    first = load_images(shared_parquet, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(data_module, "decode_image", refuse)
    second = load_images(shared_parquet, cache_dir=tmp_path)
    assert torch.equal(first.images, second.images) and second.class_names == first.class_names


def test_damaged_cache_entry_is_rebuilt(tmp_path, small_folder):
    load_images(small_folder, cache_dir=tmp_path)
    entry = next(tmp_path.glob("*.safetensors"))
    entry.write_bytes(entry.read_bytes()[:100])
    with pytest.warns(UserWarning, match="unreadable cache entry"):
        again = load_images(small_folder, cache_dir=tmp_path)
    assert len(again) > 0


def test_split_is_seeded_and_stratified(pets):
    train_a, val_a = pets.split(0.1, seed=3)
    train_b, val_b = pets.split(0.1, seed=3)
    assert torch.equal(val_a.images, val_b.images)
    assert len(train_a) + len(val_a) == len(pets)
    assert val_a.class_counts() == {"cat": 216, "dog": 451}
    _, val_c = pets.split(0.1, seed=4)
    assert not torch.equal(val_a.images, val_c.images)


def save(image, path, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)


@pytest.fixture
def small_folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    rgb = lambda w, h: Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))  # noqa: E731
    save(rgb(80, 60), root / "cat" / "plain.png")
    save(rgb(100, 100).convert("L"), root / "cat" / "grey.jpg")
    save(rgb(70, 90).convert("RGBA"), root / "cat" / "alpha.png")
    palette = rgb(64, 64).convert("P", palette=Image.Palette.ADAPTIVE)
    palette.info["transparency"] = 0
    save(palette, root / "cat" / "palette.png", transparency=0)
    save(rgb(5, 3), root / "dog" / "tiny.png")
    save(rgb(3000, 2000), root / "dog" / "large.jpg", quality=80)
    save(Image.fromarray((rng.integers(0, 65535, (50, 40))).astype(np.uint16)), root / "dog" / "sixteen.png")
    save(rgb(64, 48).convert("CMYK"), root / "dog" / "cmyk.jpg")
    (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "dog" / "notes.txt").write_text("not an image")
    return root


def test_image_folder_with_odd_images(small_folder, tmp_path):
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image\(s\): dog/broken.jpg$"):
        dataset = load_images(small_folder, cache_dir=tmp_path)
    assert dataset.class_names == ["cat", "dog"]
    assert dataset.class_counts() == {"cat": 4, "dog": 4}
    assert dataset.images.shape == (8, 3, 64, 64) and dataset.images.dtype == torch.uint8


def test_sixteen_bit_images_keep_their_range():
    ramp = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    array = to_rgb_array(Image.fromarray(ramp), 64)
    assert array.min() <= 2 and array.max() >= 250  # not clipped to white


def test_alpha_is_composited_on_white():
    transparent = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    assert to_rgb_array(transparent, 16).min() == 255


def test_centre_crop_keeps_the_middle():
    wide = np.zeros((20, 60, 3), np.uint8)
    wide[:, 20:40] = 255  # a white centre square between black sides
    assert to_rgb_array(Image.fromarray(wide), 16)[:, 2:-2].min() >= 250  # LANCZOS blends the outer pixel


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no class subfolders"):
        load_images(tmp_path, use_cache=False)
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "x.txt").write_text("x")
    with pytest.raises(DataError, match="no readable images"):
        load_images(tmp_path, use_cache=False)


def test_parquet_without_the_fields_is_a_clear_error(tmp_path):
    path = tmp_path / "table.parquet"
    pq.write_table(pa.table({"picture": [b"x"], "kind": ["a"]}), path)
    with pytest.raises(DataError, match=r"missing field\(s\) \['image', 'label'\].*--label-field"):
        load_images(path, use_cache=False)


def test_unknown_source_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="neither an existing file"):
        load_images(tmp_path / "nowhere" / "data")
    text = tmp_path / "data.csv"
    text.write_text("a,b")
    with pytest.raises(DataError, match="must be .parquet"):
        load_images(text)


def test_hub_ids_go_through_datasets(monkeypatch, shared_parquet):
    """A hub id is handed to datasets.load_dataset; offline we route it to the local parquet."""
    import datasets

    seen = []
    real = datasets.load_dataset

    def fake(name, *args, **kwargs):
        seen.append(name)
        return real("parquet", data_files=[str(shared_parquet)], split="train")

    monkeypatch.setattr(datasets, "load_dataset", fake)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset = load_images("enterprise-explorers/oxford-pets", use_cache=False)
    assert seen == ["enterprise-explorers/oxford-pets"]
    assert dataset.class_counts() == {"cat": 2159, "dog": 4506}
