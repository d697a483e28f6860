import json
import re

import numpy as np
import pytest
from PIL import Image

import latentflows as lf
from latentflows.cli import COMMANDS, Command, main
from latentflows.cli.options import OPTIONS, with_options

TINY = ["--width", "8", "--embedding-dim", "64", "--ae-epochs", "1", "--couplings", "2", "--channels", "8",
        "--flow-epochs", "2", "--no-progress"]


def test_cli_end_to_end_on_real_data(tmp_path, pets_parquet, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(pets_parquet), "--limit", "200", "--out", str(run), *TINY]) == 0
    assert (run / "model.safetensors").is_file()

    grid, array = tmp_path / "grid.png", tmp_path / "dogs.npy"
    assert main(["sample", str(run), "--class", "dog", "-n", "5", "--out", str(grid), "--npy", str(array)]) == 0
    images = np.load(array)
    assert images.shape == (5, 64, 64, 3) and images.dtype == np.uint8
    assert Image.open(grid).size[0] > 5 * 64

    capsys.readouterr()
    assert main(["sample", str(run), "--class", "dog", "-n", "3", "--guidance", "4", "--candidates", "4",
                 "--out", str(tmp_path / "guided.png")]) == 0
    assert "p(dog | image)" in capsys.readouterr().out and (tmp_path / "guided.png").is_file()
    # without --guidance, sample guides as the run's preset says (quick: 64, 32 candidates); 0 turns it off
    assert json.loads((run / "run.json").read_text())["config"]["sampling"] == {"guidance": 64.0, "candidates": 32}
    for name, flags in (("explicit", ["--guidance", "64", "--candidates", "32"]), ("plain", ["--guidance", "0"])):
        assert main(["sample", str(run), "--class", "dog", "-n", "5", "--npy", str(tmp_path / f"{name}.npy"), *flags]) == 0
    assert np.array_equal(np.load(tmp_path / "explicit.npy"), images)
    assert not np.array_equal(np.load(tmp_path / "plain.npy"), images)
    with pytest.raises(SystemExit):
        main(["sample", str(run), "--class", "dog", "--guidance", "-1", "--out", str(tmp_path / "g.png")])
    assert "--guidance: must be a finite number >= 0" in capsys.readouterr().err and not (tmp_path / "g.png").exists()

    assert main(["info", str(run)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["classes"] == ["cat", "dog"] and info["flow"]["couplings"] == 2

    # bad input: one clear line, exit code 2, nothing overwritten
    assert main(["sample", str(run), "--class", "horse", "-n", "2", "--out", str(tmp_path / "h.png")]) == 2
    assert "unknown class 'horse'" in capsys.readouterr().err
    before = grid.read_bytes()
    assert main(["sample", str(run), "--class", "cat", "-n", "2", "--out", str(grid)]) == 2
    assert "--overwrite" in capsys.readouterr().err and grid.read_bytes() == before
    assert main(["sample", str(run), "--class", "cat", "-n", "2", "--out", str(tmp_path / "c.png"),
                 "--npy", str(tmp_path / "cats.np")]) == 2
    assert "must end in .npy" in capsys.readouterr().err and not (tmp_path / "c.png").exists()
    assert main(["train", "--limit", "200", "--out", str(run), *TINY]) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["sample", "RUN", "--class", "dog", "-n", "0", "--out", "x.png"],
    ["sample", "RUN", "--class", "dog", "-n", "-3", "--out", "x.png"],
    ["train", "--out", "r", "--ae-epochs", "many"],
    ["train", "--out", "r", "--val-fraction", "1.5"],
    ["train", "--out", "r", "--flow-lr", "nan"],
    ["train", "--out", "r", "--hidden", "256,x"],
])
def test_bad_options_exit_with_code_2(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exit_info:  # argparse's own checks
        code = exit_info.code
    assert code == 2
    assert "error" in capsys.readouterr().err


def test_missing_run_is_a_one_line_error(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no such run folder" in err


@pytest.mark.parametrize("option,value,message", [
    ("--ae-loss", "l7", "unknown loss 'l7'"),
    ("--ae-loss", "huber:abc", "Huber threshold"),
    ("--scale-fn", "cube", "--scale-fn was removed; use --bijection TanhAffine (or SoftplusAffine)"),
    ("--mask", "checkerboard", "--mask: choose one of alternate, half"),
    ("--bijection", "NoSuchMap", "no component named 'NoSuchMap'"),
    ("--bijection", "RandomPermutation", "not an element-wise bijection"),
    ("--set", "stages.flow.config.model.config.coupling=3", "unexpected keyword argument 'coupling'"),
    ("--set", "stages.flow.config.epochs=0", "epochs must be a positive integer"),
    ("--import", "no_such_module_here", "--import no_such_module_here"),
])
def test_bad_values_of_free_text_options_exit_with_code_2(tmp_path, capsys, option, value, message):
    assert main(["train", "--out", str(tmp_path / "r"), option, value]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # refused before anything was written


@pytest.mark.parametrize("option,value,message", [
    ("--scale-fn", "softplus", "--scale-fn was removed; use --bijection SoftplusAffine"),
    ("--scale-fn", "tanh", "--scale-fn was removed; use --bijection TanhAffine"),
    ("--permute", "off", "--permute was removed; use --mixing none"),
    ("--permute", "maybe", "--permute was removed; use --mixing permutation (or none)"),
    ("--batch-norm", "on", "--batch-norm was removed; use --normalization batchnorm"),
])
def test_a_removed_flag_names_its_replacement_in_one_line(tmp_path, capsys, option, value, message):
    assert main(["train", "--out", str(tmp_path / "r"), option, value]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"latentflows: error: {message}"
    assert not (tmp_path / "r").exists()
    assert main(["train", "--resume", str(tmp_path / "r"), option, value]) == 2  # before --resume's own checks
    assert capsys.readouterr().err.strip() == f"latentflows: error: {message}"
    with pytest.raises(ValueError, match=re.escape(message)):  # the same names from Python
        with_options(lf.PRESETS["quick"], **{option[2:].replace("-", "_"): value})


def test_the_replacements_set_what_the_removed_flags_did(capsys):
    assert main(["train", "--show-config", "--flow", "realnvp", "--bijection", "SoftplusAffine", "--mixing", "none",
                 "--normalization", "none"]) == 0
    flow = json.loads(capsys.readouterr().out)["stages"]["flow"]["config"]["model"]["config"]
    assert flow["bijection"] == {"class": "SoftplusAffine", "config": {}}
    assert flow["mixing"] == "none" and flow["normalization"] == "none"
    assert "permute" not in flow and "batch_norm" not in flow


def test_a_flag_of_the_mlp_flow_names_the_fix_for_the_spatial_flow(capsys):
    for flag, value in (("--hidden", "64"), ("--mask", "half"), ("--mixing", "lu"), ("--class-whitening", "off")):
        assert main(["train", "--show-config", "--flow", "spatial", flag, value]) == 2
        assert (f"{flag} is an option of --flow realnvp, and this run's flow is SpatialRealNVP: add --flow realnvp"
                in capsys.readouterr().err)
    assert main(["train", "--show-config", "--hidden", "64", "--flow", "realnvp", "--couplings", "4"]) == 0  # in any order
    flow = json.loads(capsys.readouterr().out)["stages"]["flow"]["config"]["model"]
    assert flow["class"] == "ConditionalRealNVP" and flow["config"]["couplings"] == 4
    assert flow["config"]["conditioner"]["config"]["hidden"] == [64]
    # from Python the same, whatever the keywords' order: --flow first, as on the command line
    config = with_options(lf.PRESETS["quick"], hidden=[64], couplings=4, flow="realnvp")
    assert config.get("stages.flow.config.model.config.couplings") == 4
    with pytest.raises(ValueError, match="--hidden is an option of --flow realnvp"):
        with_options(lf.PRESETS["quick"], hidden=[64], flow="spatial")


@pytest.mark.parametrize("flags,first,second,path", [
    (["--width", "8", "--set", "stages.autoencoder.config.model.config.width=16"], "--width", "--set",
     "stages.autoencoder.config.model.config.width"),
    (["--set", "stages.flow.config.epochs=3", "--set", "stages.flow.config.epochs=4"], "--set", "--set",
     "stages.flow.config.epochs"),
    (["--compile", "--set", "compile=false"], "--set", "--compile", "compile"),
    (["--set", "seed=1", "--seed", "2"], "--seed", "--set", "seed"),
])
def test_two_flags_that_set_one_path_are_refused(tmp_path, capsys, flags, first, second, path):
    assert main(["train", "--out", str(tmp_path / "r"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"latentflows: error: {first} and {second} both set {path}; give only one of them"
    assert not (tmp_path / "r").exists()


def test_one_flag_per_config_path():
    paths = [option.path for option in OPTIONS.values()]
    assert len(paths) == len(set(paths))


def test_a_command_is_one_entry_in_the_table(monkeypatch, capsys):
    hello = Command("hello", "say hello", lambda parser: parser.add_argument("--name", default="world"),
                    lambda args: print(f"hello {args.name}"))
    monkeypatch.setattr("latentflows.cli.app.COMMANDS", (*COMMANDS, hello))
    assert main(["hello", "--name", "cat"]) == 0
    assert capsys.readouterr().out == "hello cat\n"
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "say hello" in capsys.readouterr().out
