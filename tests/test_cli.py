import json

import numpy as np
import pytest
from PIL import Image

from latentflows.cli import main

TINY = ["--width", "8", "--embedding-dim", "64", "--ae-epochs", "1", "--couplings", "2", "--hidden", "32",
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
    ("--scale-fn", "cube", "scale-fn must be tanh or softplus"),
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
