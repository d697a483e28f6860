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
from latentflows.runs import split_dataset


def test_embedded_default_is_the_real_pets(pets):
    assert pets.images.dtype == torch.uint8 and pets.images.shape == (6665, 3, 64, 64)
    assert pets.class_counts() == {"cat": 2159, "dog": 4506}
    assert 60 < pets.images.float().mean() < 190  # real photos, not blank


def test_pets_parquet_through_the_datasets_path(pets_parquet, pets):
    species = load_images(pets_parquet)
    assert species.class_names == ["cat", "dog"] and len(species) == 6665
    assert torch.equal(species.labels, pets.labels)
    # the embedded copy is the same photos re-encoded at JPEG quality 95
    difference = (species.images.float() - pets.images.float()).pow(2).mean()
    assert 10 * torch.log10(255**2 / difference) > 35
    breeds = load_images(pets_parquet, label_field="label")
    assert breeds.num_classes == 37 and "Abyssinian" in breeds.class_names and "beagle" in breeds.class_names


def test_cache_makes_the_second_load_skip_decoding(tmp_path, monkeypatch, pets_parquet):
    first = load_images(pets_parquet, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(data_module, "decode_image", refuse)
    second = load_images(pets_parquet, cache_dir=tmp_path)
    assert torch.equal(first.images, second.images) and second.class_names == first.class_names


def test_damaged_cache_entry_is_rebuilt(tmp_path, small_folder):
    load_images(small_folder, cache_dir=tmp_path)
    entry = next(tmp_path.glob("*.safetensors"))
    entry.write_bytes(entry.read_bytes()[:100])
    with pytest.warns(UserWarning, match="unreadable cache entry"):
        again = load_images(small_folder, cache_dir=tmp_path)
    assert len(again) > 0


def test_split_is_seeded_and_stratified(pets):
    train_a, val_a = split_dataset(pets, 0.1, 3)
    train_b, val_b = split_dataset(pets, 0.1, 3)
    assert torch.equal(val_a.images, val_b.images)
    assert len(train_a) + len(val_a) == len(pets)
    assert val_a.class_counts() == {"cat": 216, "dog": 451}
    _, val_c = split_dataset(pets, 0.1, 4)
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


def test_hub_ids_go_through_datasets(monkeypatch, pets_parquet):
    """A hub id is handed to datasets.load_dataset; offline we route it to the local parquet."""
    import datasets

    seen = []
    real = datasets.load_dataset

    def fake(name, *args, **kwargs):
        seen.append(name)
        return real("parquet", data_files=[str(pets_parquet)], split="train")

    monkeypatch.setattr(datasets, "load_dataset", fake)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset = load_images("enterprise-explorers/oxford-pets", use_cache=False)
    assert seen == ["enterprise-explorers/oxford-pets"]
    assert dataset.class_counts() == {"cat": 2159, "dog": 4506}


def test_cache_keeps_only_the_most_recent_entries(tmp_path, monkeypatch):
    from latentflows.data import cache_entries

    monkeypatch.setenv("LATENTFLOWS_CACHE_ENTRIES", "2")
    rng = np.random.default_rng(1)
    folders = []
    for i in range(3):
        folder = tmp_path / f"set{i}"
        save(Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)), folder / "a" / "x.png")
        folders.append(folder)
    cache = tmp_path / "cache"
    for folder in folders:
        load_images(folder, cache_dir=cache)
    assert len(cache_entries(cache)) == 2
    load_images(folders[2], cache_dir=cache)  # the newest is still cached: no new entry
    assert len(cache_entries(cache)) == 2


def test_cache_clear_command(tmp_path, monkeypatch, capsys, small_folder):
    from latentflows.cli import main

    monkeypatch.setenv("LATENTFLOWS_CACHE", str(tmp_path / "cache"))
    load_images(small_folder)
    assert main(["cache", "info"]) == 0 and "1 entry" in capsys.readouterr().out
    assert main(["cache", "clear"]) == 0 and "removed 1 file(s)" in capsys.readouterr().out
    assert main(["cache", "info"]) == 0 and "0 entries" in capsys.readouterr().out


def test_single_class_folder_trains_and_samples(tmp_path, tiny_config, pets):
    import latentflows as lf

    root = tmp_path / "only"
    for i, image in enumerate(pets.images[:48]):
        save(Image.fromarray(image.permute(1, 2, 0).numpy()), root / "pets" / f"{i}.png")
    dataset = load_images(root, use_cache=False)
    assert dataset.class_names == ["pets"]
    pipeline = lf.train(dataset, tiny_config.with_options(ae_epochs=1, flow_epochs=1), None, progress=False, figures=False)
    assert pipeline.generate("pets", 3).images.shape == (3, 3, 64, 64)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

MODES = ["RGB", "RGBA", "L", "LA", "P", "CMYK", "I;16", "1", "F"]


@settings(max_examples=40, deadline=None)
@given(width=st.integers(1, 300), height=st.integers(1, 300), mode=st.sampled_from(MODES),
       size=st.sampled_from([8, 32, 64]), seed=st.integers(0, 2**16))
def test_any_image_becomes_a_square_rgb_uint8_array(width, height, mode, size, seed):
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).convert(
        "RGBA" if mode in ("RGBA", "LA", "P") else "RGB")
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65535, (height, width)).astype(np.uint16))
    elif mode == "F":
        image = Image.fromarray(rng.random((height, width)).astype(np.float32) * 255)
    elif mode != image.mode:
        image = image.convert(mode)
    array = to_rgb_array(image, size)
    assert array.shape == (size, size, 3) and array.dtype == np.uint8
