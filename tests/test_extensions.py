"""A component from the user's own module, end to end: a bijection with a constructor option,
written to a module file outside the library, trains, samples, evaluates, exports and serves
the demo's generate function, every step from the command line with ``--import``. A run
records the module; without it, every command names the module and its own flag, and the
module is never imported for the user."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import latentflows as lf
from latentflows.cli import COMMANDS, build_parser, main
from latentflows.errors import ArgumentError, MissingModuleError
from latentflows.flows import Coupling

MODULE = "lf_user_bijections"
NAME = "user.FloorAffine"
SOURCE = textwrap.dedent('''
    """A bijection of the user's own, with a constructor option."""

    import os

    import torch

    import latentflows as lf

    if os.environ.get("LF_USER_MARKER"):  # proves whether a process imported this module
        open(os.environ["LF_USER_MARKER"], "a").close()


    @lf.register(name="user.FloorAffine")
    class FloorAffine(lf.Affine):
        """y = x * (floor + sigmoid(a)) + b: a scale bounded below by ``floor``."""

        def __init__(self, floor: float = 0.5):
            super().__init__()
            self.floor = floor

        def log_scale(self, params):
            return torch.log(self.floor + torch.sigmoid(params[:, 0]))

        def get_config(self):
            return {"floor": self.floor}
''')
TINY = ["--width", "8", "--embedding-dim", "64", "--ae-epochs", "1", "--ae-batch-size", "32", "--couplings", "2",
        "--channels", "8", "--flow-epochs", "2", "--flow-batch-size", "64", "--no-progress"]


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user-code")
    (folder / f"{MODULE}.py").write_text(SOURCE)
    return folder


@pytest.fixture(scope="module")
def user_run(module_dir, pets_parquet, tmp_path_factory):
    """A run trained from the CLI with the user's bijection and an option of it."""
    run = tmp_path_factory.mktemp("user-run") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(module_dir))
        assert main(["train", "--data", str(pets_parquet), "--limit", "160", "--out", str(run), *TINY,
                     "--import", MODULE, "--bijection", f'{NAME}:{{"floor": 0.25}}']) == 0
    return run


def test_a_user_bijection_with_an_option_works_through_every_command(user_run, tmp_path, capsys):
    saved = json.loads((user_run / "config.json").read_text())
    assert saved["flow"]["config"]["bijection"] == {"class": NAME, "config": {"floor": 0.25}}
    assert saved["imports"] == {MODULE: [NAME]}  # the module is recorded, the library's own are not

    imports = ["--import", MODULE]
    npy = tmp_path / "dogs.npy"
    assert main(["sample", str(user_run), *imports, "--class", "dog", "-n", "3", "--npy", str(npy)]) == 0
    assert np.load(npy).shape == (3, 64, 64, 3) and not list(tmp_path.glob("*.png"))  # --npy alone is enough

    report = tmp_path / "eval.json"
    assert main(["evaluate", str(user_run), *imports, "--no-fid", "--imagenet", "none", "--classifier-epochs", "1",
                 "--samples", "8", "--out", str(report), "--no-progress"]) == 0
    assert json.loads(report.read_text())["run"] == str(user_run)

    onnx_file = tmp_path / "generator.onnx"
    assert main(["export", str(user_run), *imports, "--out", str(onnx_file)]) == 0
    assert onnx_file.stat().st_size > 0

    assert main(["interpolate", str(user_run), *imports, "--from", "cat", "--to", "dog", "--steps", "3",
                 "--out", str(tmp_path / "walk.png")]) == 0
    capsys.readouterr()
    assert main(["info", str(user_run), *imports]) == 0
    assert json.loads(capsys.readouterr().out)["flow"]["bijection"] == {"class": NAME, "config": {"floor": 0.25}}

    from latentflows.demo import generate_gallery

    pipeline = lf.load(user_run, "cpu")
    couplings = [m for m in pipeline.flow.modules() if isinstance(m, Coupling)]
    assert couplings and all(type(c.bijection).__module__ == MODULE and c.bijection.floor == 0.25 for c in couplings)
    gallery = generate_gallery(pipeline, "dog", count=2, display_size=64)
    assert len(gallery) == 2 and gallery[0][1].startswith("#1: ")

    from latentflows.modelcard import model_card

    card = model_card(user_run, repo_id="someone/floors")
    assert f"latentflows sample someone/floors --import {MODULE} --class dog" in card  # the Hub's example works
    assert f"import {MODULE}\nimport latentflows as lf" in card and f"Needs the module `{MODULE}`" in card


def test_every_command_that_loads_a_run_takes_import():
    required = {"sample": ["--class", "dog"], "evaluate": [], "interpolate": ["--from", "a", "--to", "b", "--out", "x.png"],
                "info": [], "export": ["--out", "g.onnx"], "demo": [], "push": ["me/pets"]}
    assert {command.name for command in COMMANDS if command.loads_a_run} == set(required)
    parser = build_parser()
    for name, options in required.items():
        assert parser.parse_args([name, "RUN", *options, "--import", "a", "--import", "b"]).imports == ["a", "b"], name


def test_without_its_module_a_run_names_it_and_the_flag_and_never_imports_it(user_run, module_dir, tmp_path):
    """A fresh process with the module on PYTHONPATH: not imported unless asked with --import."""
    marker = tmp_path / "imported"
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(module_dir), os.environ.get("PYTHONPATH", "")]),
                   "LF_USER_MARKER": str(marker), "OMP_NUM_THREADS": "1"}

    def cli(*argv):
        return subprocess.run([sys.executable, "-m", "latentflows", *argv], cwd=tmp_path, env=environment,
                              capture_output=True, text=True, timeout=300)

    refused = cli("sample", str(user_run), "--class", "dog", "-n", "2", "--npy", str(tmp_path / "x.npy"))
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.splitlines() == [f"latentflows: error: run uses {NAME} from module '{MODULE}'; "
                                           f"pass --import {MODULE} to latentflows sample"]
    assert not marker.exists() and not (tmp_path / "x.npy").exists()

    loaded = cli("info", str(user_run), "--import", MODULE)
    assert loaded.returncode == 0, loaded.stderr
    assert json.loads(loaded.stdout)["flow"]["bijection"]["config"] == {"floor": 0.25} and marker.exists()


def test_a_flow_only_run_on_a_user_run_imports_and_records_its_module(user_run, module_dir, tmp_path, monkeypatch):
    """``train --autoencoder-from`` reads the source's modules from its run.json (no --import needed),
    and records them, so that the new run resumes and loads with them too."""
    from latentflows.cli import train as train_command

    monkeypatch.syspath_prepend(str(module_dir))
    imported = []
    original = train_command.import_modules
    monkeypatch.setattr(train_command, "import_modules", lambda names: (imported.append(list(names)), original(names)))
    new = tmp_path / "flow-only"
    assert main(["train", "--autoencoder-from", str(user_run), "--out", str(new), "--flow-epochs", "1",
                 "--no-progress"]) == 0
    assert imported and imported[0] == [MODULE]  # before the source's config was read
    assert json.loads((new / "run.json").read_text())["data"]["imports"] == [MODULE]
    saved = json.loads((new / "config.json").read_text())
    assert saved["flow"]["config"]["bijection"] == {"class": NAME, "config": {"floor": 0.25}}
    assert saved["imports"] == {MODULE: [NAME]}


def test_a_missing_module_is_named_in_python_and_by_each_command(user_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(user_run, run)
    config = json.loads((run / "config.json").read_text().replace(NAME, "elsewhere.Map"))
    config["imports"] = {"elsewhere_module": ["elsewhere.Map"]}
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(MissingModuleError, match=r"^run uses elsewhere.Map from module 'elsewhere_module'; "
                                                 r"import elsewhere_module before loading it$"):
        lf.load(run)
    for command in (["info"], ["evaluate", "--no-progress"], ["export", "--out", str(tmp_path / "g.onnx")]):
        assert main([command[0], str(run), *command[1:]]) == 2
        assert capsys.readouterr().err.splitlines() == [
            f"latentflows: error: run uses elsewhere.Map from module 'elsewhere_module'; "
            f"pass --import elsewhere_module to latentflows {command[0]}"]
    assert "elsewhere_module" not in sys.modules

    del config["imports"]  # a run saved before runs recorded their modules: the general advice, no command
    (run / "config.json").write_text(json.dumps(config))
    assert main(["info", str(run)]) == 2
    err = capsys.readouterr().err
    assert "'elsewhere.Map'" in err and "--import MODULE" in err and "latentflows train" not in err


def test_registration_refuses_options_that_an_inherited_get_config_would_lose():
    with pytest.raises(TypeError, match=r"takes options \(floor\) that the get_config it inherits from "
                                        r"ElementwiseBijection does not save; define get_config\(\)"):
        @lf.register(name="test.ForgetfulAffine")
        class ForgetfulAffine(lf.Affine):
            def __init__(self, floor: float = 0.5):
                super().__init__()
                self.floor = floor

            def log_scale(self, params):
                return torch.log(self.floor + torch.sigmoid(params[:, 0]))

    assert "test.ForgetfulAffine" not in lf.registry.registered_names()


@pytest.mark.parametrize("value, message", [
    ('RationalQuadraticSpline:{"bins": 4', "--bijection: the options after RationalQuadraticSpline: must be a JSON "
                                           "object"),
    ('RationalQuadraticSpline:[4]', "must be a JSON object"),
    ('RationalQuadraticSpline:{"bns": 4}', "RationalQuadraticSpline has no option bns; its options: bins, bound"),
    ('TanhAffine:{"eps": 0.1}', "TanhAffine has no option eps; its options: none"),
    ('NoSuchMap:{"bins": 4}', "no component named 'NoSuchMap'"),
])
def test_bijection_options_are_checked(tmp_path, capsys, value, message):
    assert main(["train", "--out", str(tmp_path / "r"), "--bijection", value]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_bijection_options_reach_the_config(capsys):
    assert main(["train", "--bijection", 'RationalQuadraticSpline:{"bins": 4, "bound": 2.5}', "--show-config"]) == 0
    flow = json.loads(capsys.readouterr().out)["stages"]["flow"]["config"]["model"]["config"]
    assert flow["bijection"] == {"class": "RationalQuadraticSpline", "config": {"bins": 4, "bound": 2.5}}


def test_sample_needs_an_output(user_run, tmp_path, capsys):
    assert main(["sample", str(user_run), "--import", MODULE, "--class", "dog"]) == 2
    assert "pass at least one" in capsys.readouterr().err


def tiny_pipeline():
    return lf.LatentFlowPipeline(lf.ConvAutoencoder(8, width=2, image_size=32, fc_dim=16),
                                 lf.ConditionalRealNVP(8, context_size=2, couplings=2, hidden=[8]), ["cat", "dog"])


def test_one_check_of_the_sample_count_and_the_temperature():
    from latentflows.interpolation import interpolate

    pipeline = tiny_pipeline()
    flow, context = pipeline.flow, torch.tensor([1.0, 0.0])
    for draw in (lambda: pipeline.generate("cat", n=0), lambda: flow.sample(0, context),
                 lambda: flow.sample_and_log_prob(2.5, context)):
        with pytest.raises(ArgumentError, match="number of samples must be a whole number of at least 1"):
            draw()
    for draw in (lambda: pipeline.generate("cat", 2, temperature=0), lambda: flow(context, temperature=-1),
                 lambda: flow.sample(2, context, temperature=float("nan")),
                 lambda: interpolate(pipeline, "cat", "dog", 3, temperature=float("inf"))):
        with pytest.raises(ArgumentError, match="temperature must be a finite number > 0"):
            draw()


def test_the_flow_shorthands_are_the_distribution():
    flow = tiny_pipeline().flow.eval()
    x, context = torch.randn(5, 8), torch.tensor([0.0, 1.0])
    assert torch.equal(flow.log_prob(x, context), flow(context).log_prob(x))
    drawn, log_prob = flow.sample_and_log_prob(4, context, 0.7, torch.Generator().manual_seed(3))
    again, again_log_prob = flow(context.expand(4, -1), 0.7).sample_and_log_prob((), torch.Generator().manual_seed(3))
    assert torch.equal(drawn, again) and torch.equal(log_prob, again_log_prob)


def test_one_loader_reads_folders_and_hub_ids(tmp_path, monkeypatch):
    import huggingface_hub

    pipeline = tiny_pipeline()
    pipeline.save(tmp_path / "served")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kwargs: str(tmp_path / "served"))
    for loaded in (lf.load("someone/pets", "cpu"), lf.load(tmp_path / "served", device="cpu"),
                   lf.LatentFlowPipeline.load(tmp_path / "served", "cpu")):
        assert torch.equal(loaded.generate("dog", 2).images, pipeline.generate("dog", 2).images)
    with pytest.raises(TypeError, match="dvice"):
        lf.load(tmp_path / "served", dvice="cpu")
