import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from latentflows import data as data_module
from latentflows.cli.options import with_options
from latentflows.data import cache as decode_cache
from latentflows.data import load_images, sources, to_rgb_array
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
    assert len(list(tmp_path.glob("*.images"))) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(sources, "decode_image", refuse)  # where the sources look it up
    second = load_images(pets_parquet, cache_dir=tmp_path)
    assert torch.equal(first.images, second.images) and second.class_names == first.class_names


@pytest.mark.filterwarnings("ignore:skipped 1 unreadable")
@pytest.mark.parametrize("damage", ["json", "images", "labels"])
def test_damaged_cache_entry_is_rebuilt(tmp_path, small_folder, damage):
    first = load_images(small_folder, cache_dir=tmp_path)
    entry = next(tmp_path.glob(f"*.{damage}"))
    if damage == "labels":
        entry.write_bytes(np.full(len(first), 7, dtype="<i8").tobytes())  # classes that do not exist
    else:
        entry.write_bytes(entry.read_bytes()[:100])
    with pytest.warns(UserWarning, match="unreadable cache entry"):
        again = load_images(small_folder, cache_dir=tmp_path)
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
    assert load_images(small_folder, cache_dir=tmp_path).class_counts() == first.class_counts()  # rebuilt: no warning


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
    with pytest.warns(UserWarning, match="skipped"):
        load_images(small_folder)
    assert main(["cache", "info"]) == 0 and "1 entry" in capsys.readouterr().out
    (tmp_path / "cache" / "0123456789abcdef01234567.safetensors").write_bytes(b"old")  # a 0.3 entry
    assert main(["cache", "info"]) == 0 and "2 entries" in capsys.readouterr().out
    # the new entry's images, labels and JSON, and the old entry's file
    assert main(["cache", "clear"]) == 0 and "removed 4 file(s)" in capsys.readouterr().out
    assert main(["cache", "info"]) == 0 and "0 entries" in capsys.readouterr().out


def test_single_class_folder_trains_and_samples(tmp_path, tiny_config, pets):
    import latentflows as lf

    root = tmp_path / "only"
    for i, image in enumerate(pets.images[:48]):
        save(Image.fromarray(image.permute(1, 2, 0).numpy()), root / "pets" / f"{i}.png")
    dataset = load_images(root, use_cache=False)
    assert dataset.class_names == ["pets"]
    pipeline = lf.train(dataset, with_options(tiny_config, ae_epochs=1, flow_epochs=1), None, progress=False, figures=False)
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


# ---------------------------------------------------------------------------- the decode cache on disk

import json  # noqa: E402
import os  # noqa: E402
import pickle  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from latentflows.data import MappedImages, cache_entries, prefetch  # noqa: E402

BROKEN_ROW = 5
REAL_DECODE = data_module.decode_image


@pytest.fixture(scope="module")
def small_parquet(tmp_path_factory):
    """300 of the embedded photos in the hub schema, row 5 unreadable."""
    table = pq.read_table(data_module.embedded_files()[0]).slice(0, 300)
    images = table.column("image").to_pylist()
    images[BROKEN_ROW] = {"bytes": b"not an image", "path": None}
    column = table.schema.get_field_index("image")
    table = table.set_column(column, table.schema.field(column), pa.array(images, table.schema.field(column).type))
    path = tmp_path_factory.mktemp("small") / "small.parquet"
    pq.write_table(table, path)
    return path


@pytest.fixture(scope="module")
def small_reference(small_parquet):
    with pytest.warns(UserWarning, match=rf"skipped 1 unreadable image\(s\): row {BROKEN_ROW}$"):
        return load_images(small_parquet, use_cache=False)


def counting_decoder(monkeypatch, stop_at=None):
    """Replace decode_image by one that counts its calls and raises KeyboardInterrupt at call ``stop_at``."""
    real, calls = REAL_DECODE, []

    def decode(data, size):
        if len(calls) == stop_at:
            raise KeyboardInterrupt
        calls.append(1)
        return real(data, size)

    monkeypatch.setattr(sources, "decode_image", decode)
    return calls


def entry_state(cache):
    (state,) = cache.glob("*.json")
    return json.loads(state.read_text())


def test_decoding_resumes_after_an_interrupt(tmp_path, monkeypatch, small_parquet, small_reference):
    monkeypatch.setattr(decode_cache, "CHUNK_IMAGES", 64)
    cache = tmp_path / "cache"
    counting_decoder(monkeypatch, stop_at=150)
    with pytest.raises(KeyboardInterrupt):
        load_images(small_parquet, cache_dir=cache)
    # two chunks committed, and the 22 images of the third decoded before Ctrl-C
    state = entry_state(cache)
    assert (state["complete"], state["next_item"], state["rows"], state["skipped"]) == (False, 150, 149, [f"row {BROKEN_ROW}"])
    assert len(cache_entries(cache)) == 1

    calls = counting_decoder(monkeypatch)
    with pytest.warns(UserWarning, match=rf"skipped 1 unreadable image\(s\): row {BROKEN_ROW}$"):
        resumed = load_images(small_parquet, cache_dir=cache)
    assert len(calls) == 300 - 150  # the first 150 rows are not decoded again
    assert torch.equal(resumed.images, small_reference.images) and torch.equal(resumed.labels, small_reference.labels)
    assert resumed.class_names == small_reference.class_names and resumed.skipped == [f"row {BROKEN_ROW}"]
    assert entry_state(cache)["complete"] and not list(cache.glob(".*"))  # no lock or temporary file left

    calls = counting_decoder(monkeypatch)
    assert torch.equal(load_images(small_parquet, cache_dir=cache).images, small_reference.images) and not calls


def test_cache_survives_a_kill_mid_decode(tmp_path, monkeypatch, small_parquet, small_reference):
    """SIGKILL while decoding the 4th chunk: the 3 committed chunks are kept, the rest is decoded on the next load."""
    cache, stopped = tmp_path / "cache", tmp_path / "stopped"
    script = f"""
import time
from pathlib import Path
from latentflows.data import cache, sources
cache.CHUNK_IMAGES = 64
real, calls = sources.decode_image, []
def decode(item, size):
    if len(calls) == 200:
        Path({str(stopped)!r}).write_text("decoding image 200")
        time.sleep(300)
    calls.append(1)
    return real(item, size)
sources.decode_image = decode
sources.load_images({str(small_parquet)!r}, cache_dir={str(cache)!r})
"""
    child = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while not stopped.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stopped.exists(), "the child did not reach image 200"
    finally:
        child.kill()
        child.wait()
    state = entry_state(cache)
    assert (state["complete"], state["next_item"], state["rows"]) == (False, 192, 191)
    assert (cache / f"{cache_entries(cache)[0].stem}.images").stat().st_size >= 191 * 3 * 64 * 64

    monkeypatch.setattr(decode_cache, "CHUNK_IMAGES", 64)
    calls = counting_decoder(monkeypatch)
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        resumed = load_images(small_parquet, cache_dir=cache)
    assert len(calls) == 300 - 192
    assert torch.equal(resumed.images, small_reference.images) and torch.equal(resumed.labels, small_reference.labels)


@pytest.mark.filterwarnings("ignore:skipped 1 unreadable")
def test_two_loaders_of_one_source_decode_it_once(tmp_path, monkeypatch, small_parquet, small_reference):
    calls = counting_decoder(monkeypatch)
    cache, results = tmp_path / "cache", []

    def load():
        results.append(load_images(small_parquet, cache_dir=cache))

    threads = [threading.Thread(target=load) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 300 and len(results) == 2
    assert all(torch.equal(r.images, small_reference.images) for r in results)


def test_mapped_images_read_like_the_in_memory_tensor(tmp_path, monkeypatch, small_parquet, small_reference):
    from latentflows.runtime import Runtime
    from latentflows.training import Batches

    cache = tmp_path / "cache"
    with pytest.warns(UserWarning, match="skipped"):
        memory = load_images(small_parquet, cache_dir=cache)
    monkeypatch.setenv("LATENTFLOWS_IN_MEMORY_BYTES", "0")
    mapped = load_images(small_parquet, cache_dir=cache)
    assert mapped.mapped and not memory.mapped and isinstance(mapped.images, MappedImages)
    images, reference = mapped.images, memory.images
    assert torch.equal(reference, small_reference.images) and torch.equal(mapped.labels, memory.labels)
    assert (len(images), images.shape, images.dtype, images.dim(), images.device) == (
        len(reference), reference.shape, reference.dtype, reference.dim(), reference.device)
    assert images.numel() * images.element_size() == reference.numel() * reference.element_size()
    n = len(reference)
    keys = [0, -1, 7, np.int64(3), torch.tensor(4), slice(3, 50), slice(None, None, 7), slice(250, 400), slice(5, 5),
            slice(-3, None), [5, 3, 3, n - 1], [], torch.tensor([9, 0, 9, 1]), np.array([4, -2]),
            torch.tensor([[1, 2], [3, 4]]), torch.arange(n) % 3 == 0, (slice(2, 6), 1), (3, 0, slice(None, 2))]
    for key in keys:
        assert torch.equal(images[key], reference[key]), key
    for bad in (n, -n - 1, [0, n], torch.tensor([0.5])):
        with pytest.raises(IndexError):
            images[bad]
    assert torch.equal(images.to("cpu"), reference) and torch.equal(images.contiguous(), reference)
    assert torch.equal(images.to(torch.float32), reference.float()) and torch.equal(torch.stack(list(images)), reference)
    assert Runtime("cpu").place([images])[0] is images  # stays on disk

    train_m, val_m = split_dataset(mapped, 0.2, 1)
    train_r, val_r = split_dataset(memory, 0.2, 1)
    assert train_m.mapped and val_m.mapped
    for m, r in ((train_m, train_r), (val_m, val_r)):
        assert torch.equal(m.images.to("cpu"), r.images) and torch.equal(m.labels, r.labels)
    pick = torch.tensor([10, 1, 1, 50])
    assert torch.equal(train_m.subset(pick).subset([3, 0]).images[:], train_r.subset(pick).subset([3, 0]).images)
    assert torch.equal(pickle.loads(pickle.dumps(val_m)).images[::2], val_r.images[::2])
    for batches in (Batches([train_m.images, train_m.labels], 32, shuffle=True, seed=3),
                    prefetch(Batches([train_m.images, train_m.labels], 32, shuffle=True, seed=3))):
        expected = Batches([train_r.images, train_r.labels], 32, shuffle=True, seed=3)
        pairs = list(zip(batches, expected, strict=True))
        assert len(pairs) == 8 and all(torch.equal(a, b) for got, want in pairs for a, b in zip(got, want))


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads the resident memory from /proc")
def test_reading_mapped_images_keeps_memory_flat(tmp_path):
    def resident_mib():
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    count, path = 8192, tmp_path / "rows.images"  # 96 MiB of 64x64 images
    with open(path, "wb") as stream:
        block = np.random.default_rng(0).integers(0, 256, (1024, 3 * 64 * 64), dtype=np.uint8).tobytes()
        for _ in range(count // 1024):
            stream.write(block)
    images = MappedImages(path, count, 64)
    before, peak, total = resident_mib(), 0.0, 0
    for index in torch.randperm(count).split(64):
        total += int(images[index][:, 0, 0, 0].sum())
        peak = max(peak, resident_mib())
    for start in range(0, count, 256):
        total += int(images[start : start + 256][:, 0, 0, 0].sum())
        peak = max(peak, resident_mib())
    assert total > 0 and peak - before < 24  # a memory map would hold all 96 MiB read


def test_prefetch_keeps_the_order_and_runs_ahead():
    produced = []

    def items():
        for i in range(50):
            produced.append(i)
            yield i

    stream = prefetch(items(), depth=3)
    assert next(stream) == 0
    deadline = time.monotonic() + 10
    while len(produced) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    assert 4 <= len(produced) <= 5  # 3 waiting in the queue (and one more in hand), no more
    assert list(stream) == list(range(1, 50))
    assert list(prefetch(range(7), depth=0)) == list(range(7)) and list(prefetch([])) == []


def test_prefetch_raises_the_error_after_the_items_before_it():
    def items():
        yield 1
        yield 2
        raise ValueError("bad batch")

    got = []
    with pytest.raises(ValueError, match="bad batch"):
        for item in prefetch(items()):
            got.append(item)
    assert got == [1, 2]


def test_prefetch_stops_its_thread_when_the_loop_stops_early():
    closed = threading.Event()

    def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    stream = prefetch(endless(), depth=2)
    for item in stream:
        if item == 3:
            break
    stream.close()
    assert closed.is_set()
    with pytest.raises(RuntimeError):
        for item in prefetch(endless()):
            raise RuntimeError("the consumer fails")
    assert not [t for t in threading.enumerate() if t.name == "latentflows-prefetch"]


def test_an_unfinished_prefetch_does_not_abort_the_exit():
    """A prefetch thread still in torch code when the interpreter exits made it abort (SIGABRT)."""
    script = """
import torch
from latentflows.data import prefetch
batches = prefetch(torch.randn(64, 3, 64, 64).sum() for _ in iter(int, 1))
next(batches)
"""
    result = subprocess.run([sys.executable, "-c", script], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_training_on_mapped_images_gives_the_same_weights(tmp_path, monkeypatch, small_parquet, tiny_config):
    """The stages take a data set read from disk as they take one in memory: the same batches, the same weights."""
    import latentflows as lf
    from latentflows.runs import apply_limit

    config = with_options(tiny_config, ae_epochs=1, flow_epochs=1)
    weights = []
    for limit in (str(2**40), "0"):
        monkeypatch.setenv("LATENTFLOWS_IN_MEMORY_BYTES", limit)
        with pytest.warns(UserWarning, match="skipped"):
            dataset = load_images(small_parquet, use_cache=False)
        dataset = apply_limit(dataset, 160, seed=0)
        assert dataset.mapped == (limit == "0")
        pipeline = lf.train(dataset, config, device="cpu", deterministic=True, progress=False, figures=False)
        weights.append(pipeline.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
