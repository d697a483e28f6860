"""Training only the flow on a finished run's autoencoder: ``train(reuse=...)`` and ``train --autoencoder-from``."""

import json

import pytest
import torch
from conftest import interrupting
from safetensors.torch import load_file, save_file
from test_cli import TINY

import latentflows as lf
from latentflows.cli import main
from latentflows.cli.options import with_options


def assert_same_tensors(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_reused_autoencoder_gives_the_flow_the_whole_runs_codes(small_pets, tiny_config, monkeypatch):
    from latentflows.training import stages

    seen = []

    def recording(autoencoder, images, *args, **kwargs):  # what the flow stage encodes, and with what
        codes = original(autoencoder, images, *args, **kwargs)
        seen.append((autoencoder, codes))
        return codes

    original = stages.encode_images
    monkeypatch.setattr(stages, "encode_images", recording)
    full = lf.train(small_pets, tiny_config, progress=False, figures=False)
    whole_run, seen[:] = list(seen), []
    again = lf.train(small_pets, tiny_config, progress=False, figures=False, reuse={"autoencoder": full.autoencoder})
    assert again.summary["reused"] == ["autoencoder"] and "reused" not in full.summary
    # a copy: the pipeline owns its autoencoder, the one given is left as it was
    assert again.autoencoder is not full.autoencoder
    assert_same_tensors(again.autoencoder.state_dict(), full.autoencoder.state_dict())
    # the same training and validation codes (the same split), encoded by the reused autoencoder
    assert len(seen) == len(whole_run) == 2
    for (model, codes), (_, expected) in zip(seen, whole_run):
        assert model is again.autoencoder and torch.equal(codes, expected)
    for name in ("mean", "std"):  # the flow's standardization, fitted to those codes
        assert torch.equal(getattr(again.flow.transform.transforms[0], name), getattr(full.flow.transform.transforms[0], name))
    assert not torch.equal(again.flow.transform.transforms[0].mean, torch.zeros_like(again.flow.transform.transforms[0].mean))


def test_reuse_must_name_a_stage_of_the_config(small_pets, tiny_config, tmp_path):
    with pytest.raises(lf.LatentflowsError, match="reuse names no stage of this config: encoder; "
                                                  "its stages are autoencoder, flow"):
        lf.train(small_pets, tiny_config, tmp_path / "run", reuse={"encoder": torch.nn.Linear(1, 1)}, progress=False)
    assert not (tmp_path / "run").exists()


def test_train_autoencoder_from_a_finished_run_and_resume_it(tmp_path, pets_parquet, monkeypatch, capsys):
    source = tmp_path / "source"
    assert main(["train", "--data", str(pets_parquet), "--limit", "200", "--out", str(source), *TINY]) == 0
    deeper = tmp_path / "deeper"
    flags = ["--couplings", "3", "--flow-epochs", "2", "--no-progress"]
    assert main(["train", "--autoencoder-from", str(source), "--out", str(deeper), *flags]) == 0
    assert "training only the flow, on the autoencoder of" in capsys.readouterr().err

    before, after = load_file(str(source / "model.safetensors")), load_file(str(deeper / "model.safetensors"))
    autoencoder = {key for key in before if key.startswith("autoencoder.")}
    assert autoencoder and all(torch.equal(before[key], after[key]) for key in autoencoder)
    for key in ("flow.transform.transforms.0.mean", "flow.transform.transforms.0.std"):
        assert torch.equal(before[key], after[key])  # both flows standardize by the same training codes: same split
    settings = {name: json.loads((run / "run.json").read_text()) for name, run in (("source", source), ("new", deeper))}
    assert settings["new"]["data"] == {**settings["source"]["data"], "autoencoder_from": str(source.resolve()),
                                       "autoencoder_sha256": lf.runs.RunFolder(source).weights_digest()}
    assert settings["new"]["data"]["limit"] == 200
    expected = with_options(lf.RunConfig.from_dict(settings["source"]["config"]), couplings=3, flow_epochs=2)
    assert settings["new"]["config"] == expected.as_dict()
    assert {json.loads(line)["stage"] for line in (deeper / "metrics.jsonl").read_text().splitlines()} == {"flow"}
    pipeline = lf.load(deeper)
    assert pipeline.summary["reused"] == ["autoencoder"] and pipeline.generate("cat", n=4, guidance=0).images.shape[0] == 4

    # interrupted after the flow's first epoch, then resumed: the uninterrupted run's weights
    interrupted = tmp_path / "interrupted"
    with interrupting(monkeypatch, "flow", 1), pytest.raises(SystemExit) as stopped:  # as a Ctrl-C stops the command
        main(["train", "--autoencoder-from", str(source), "--out", str(interrupted), *flags])
    assert stopped.value.code == 130
    source.rename(tmp_path / "moved")
    capsys.readouterr()
    assert main(["train", "--resume", str(interrupted)]) == 2
    assert "which is no longer there; put that run back to resume" in capsys.readouterr().err
    (tmp_path / "moved").rename(source)
    original = (source / "model.safetensors").read_bytes()
    save_file({key: value + 1 if key.startswith("autoencoder.") and value.is_floating_point() else value
               for key, value in before.items()}, str(source / "model.safetensors"))
    assert main(["train", "--resume", str(interrupted)]) == 2  # retrained since: the flow's codes would differ
    assert "whose weights have changed since" in capsys.readouterr().err
    (source / "model.safetensors").write_bytes(original)
    assert main(["train", "--resume", str(interrupted), "--no-progress"]) == 0
    assert_same_tensors(load_file(str(interrupted / "model.safetensors")), after)


def test_autoencoder_from_refuses_what_would_change_the_autoencoder_or_the_split(tmp_path, capsys):
    source, out = tmp_path / "source", tmp_path / "out"
    assert main(["train", "--limit", "120", "--out", str(source), *TINY]) == 0
    capsys.readouterr()
    for flags, named in [(["--width", "16"], "--width"), (["--set", "seed=3"], "--set seed"), (["--seed", "0"], "--seed"),
                         (["--set", "stages={}"], "--set stages"), (["--flip", "off"], "--flip"),
                         (["--limit", "50"], "--limit"), (["--preset", "best"], "--preset"),
                         (["--set", "stages.autoencoder.config.epochs=4", "--val-fraction", "0.2"],
                          "--val-fraction, --set stages.autoencoder.config.epochs")]:
        assert main(["train", "--autoencoder-from", str(source), "--out", str(out), *flags]) == 2
        assert f"keeps {source}'s autoencoder, data and split; drop {named} (or train" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    (tmp_path / "no-settings").mkdir()
    for name in ("config.json", "model.safetensors"):
        (tmp_path / "no-settings" / name).write_bytes((source / name).read_bytes())
    for run, message in [(tmp_path / "empty", "not a finished run (it needs config.json and model.safetensors)\n"),
                         (tmp_path / "missing", "no such run folder"),
                         (tmp_path / "no-settings", "it has no run.json, which says which data and split")]:
        assert main(["train", "--autoencoder-from", str(run), "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
    assert not out.exists()
    out.mkdir()
    (out / "config.json").write_text("mine")  # a run file that --overwrite would remove
    assert main(["train", "--autoencoder-from", str(source), "--out", str(out), "--overwrite",
                 "--data", str(tmp_path / "moved.parquet")]) == 2  # the data fails to load: --out untouched
    assert "moved.parquet" in capsys.readouterr().err and (out / "config.json").read_text() == "mine"
    weights = (source / "model.safetensors").read_bytes()
    assert main(["train", "--autoencoder-from", str(source), "--out", str(source), "--overwrite"]) == 2
    assert "--out must be a new folder" in capsys.readouterr().err
    assert (source / "model.safetensors").read_bytes() == weights
    assert main(["train", "--resume", str(source), "--autoencoder-from", str(source)]) == 2
    assert "drop --autoencoder-from" in capsys.readouterr().err
