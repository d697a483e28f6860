"""The extension points: a new bijection or loss term from this file alone, trained through the
config and the CLI; runs of format 1 still load; updates reach only their own parameters;
and the structural rules (one split, one bits-per-dim conversion; the import rules are test_imports.py)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

import latentflows as lf
from latentflows.cli import main
from latentflows.cli.options import with_options
from latentflows.flows import Coupling, ElementwiseBijection, jacobian_logabsdet
from latentflows.runs import RunFolder
from latentflows.training import Objective, Term, Trainer, Update, adam, build_stages

SRC = Path(lf.__file__).resolve().parent
FORMAT_1_RUN = Path(__file__).resolve().parent / "data" / "run-format-1"
TINY = ["--width", "8", "--embedding-dim", "64", "--ae-epochs", "1", "--ae-batch-size", "32", "--couplings", "2",
        "--channels", "8", "--flow-epochs", "2", "--flow-batch-size", "64", "--no-progress"]


# ------------------------------------------------------------------ extensions defined here, not in the library

@lf.register(name="test.SigmoidAffine")
class SigmoidAffine(ElementwiseBijection):
    """y = x * (0.5 + sigmoid(a)) + b: a bounded affine map the library does not have."""

    params_per_feature = 2

    def forward(self, x, params):
        scale = 0.5 + torch.sigmoid(params[:, 0])
        return x * scale + params[:, 1], scale.log().sum(1)

    def inverse(self, y, params):
        scale = 0.5 + torch.sigmoid(params[:, 0])
        return (y - params[:, 1]) / scale, -scale.log().sum(1)


@lf.register(name="test.MeanColour")
class MeanColour(Term):
    """Squared difference of each image's mean colour and its reconstruction's."""

    def forward(self, outputs):
        return (outputs["images"].mean((2, 3)) - outputs["reconstruction"].mean((2, 3))).pow(2).mean()


def test_a_new_bijection_passes_the_inversion_and_jacobian_checks():
    layer = Coupling(6, bijection={"class": "test.SigmoidAffine"},
                     conditioner={"class": "CouplingNet", "config": {"hidden": [8]}}, context_size=2).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.5)
    x, context = torch.randn(5, 6, dtype=torch.float64), torch.eye(2, dtype=torch.float64)[[0, 1, 0, 1, 1]]
    z, logabsdet = layer(x, context)
    assert torch.allclose(layer.inverse(z, context)[0], x)
    assert torch.allclose(jacobian_logabsdet(layer, x, context)[1], logabsdet)


def test_a_bijection_from_a_test_file_trains_through_the_config(small_pets, tiny_config, tmp_path):
    config = with_options(tiny_config, bijection="test.SigmoidAffine", flow_epochs=2)
    pipeline = lf.train(small_pets, config, tmp_path / "run", progress=False, figures=False)
    couplings = [m for m in pipeline.flow.modules() if isinstance(m, Coupling)]
    assert couplings and all(isinstance(c.bijection, SigmoidAffine) for c in couplings)
    loaded = lf.load(tmp_path / "run")  # rebuilt by name
    assert torch.equal(loaded.generate("cat", 3, seed=2).images, pipeline.generate("cat", 3, seed=2).images)


def test_a_bijection_from_a_test_file_trains_through_the_cli(tmp_path, pets_parquet):
    run = tmp_path / "run"
    assert main(["train", "--data", str(pets_parquet), "--limit", "160", "--out", str(run), *TINY,
                 "--bijection", "test.SigmoidAffine"]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["flow"]["config"]["bijection"]["class"] == "test.SigmoidAffine"


def test_a_loss_term_from_a_test_file_trains_through_the_config_and_the_cli(small_pets, tiny_config, tmp_path,
                                                                               pets_parquet, capsys):
    term = {"class": "test.MeanColour", "config": {"weight": 0.5}}
    config = tiny_config.with_values({"stages.autoencoder.config.terms.colour": term})
    lf.train(small_pets, config, tmp_path / "api", progress=False, figures=False)
    rows = RunFolder(tmp_path / "api").metrics()
    autoencoder = [r for r in rows if r["stage"] == "autoencoder"]
    assert all("train_colour" in r and "train_reconstruction" in r for r in autoencoder)
    weights = {name: spec["config"].get("weight", 1.0)
               for name, spec in config.get("stages.autoencoder.config.terms").items()}
    assert set(weights) == {"reconstruction", "class_head", "colour"}  # the quick preset's two, and ours
    assert autoencoder[0]["train_loss"] == pytest.approx(
        sum(w * autoencoder[0][f"train_{name}"] for name, w in weights.items()), rel=1e-5)

    run = tmp_path / "cli"
    assert main(["train", "--data", str(pets_parquet), "--limit", "160", "--out", str(run), *TINY,
                 "--set", f"stages.autoencoder.config.terms.colour={json.dumps(term)}"]) == 0
    assert "train_colour" in RunFolder(run).metrics()[0]
    saved = json.loads((run / "run.json").read_text())
    assert saved["config"]["stages"]["autoencoder"]["config"]["terms"]["colour"] == term


def test_show_config_prints_the_options_at_their_paths(capsys):
    assert main(["train", "--show-config", "--width", "48", "--flow-noise", "0",
                 "--set", "stages.flow.config.epochs=7"]) == 0
    config = lf.RunConfig.from_dict(json.loads(capsys.readouterr().out))
    assert config.get("stages.autoencoder.config.model.config.width") == 48
    assert config.get("stages.flow.config.noise") == 0.0 and config.get("stages.flow.config.epochs") == 7


# ------------------------------------------------------------------ several updates

class Discriminating(Term):
    """A term that owns a network and trains it on its own loss (a stand-in for an adversary)."""

    def __init__(self, weight=1.0, target="discriminator"):
        super().__init__(weight, target)
        self.critic = nn.Linear(3, 1)

    def forward(self, outputs):
        real, fake = outputs["images"], outputs["reconstruction"].detach()
        return torch.relu(1 - self.critic(real)).mean() + torch.relu(1 + self.critic(fake)).mean()


class Fooling(Term):
    """The generator's side: make the critic score reconstructions high (gradients flow through the critic)."""

    def __init__(self, critic, weight=0.3):
        super().__init__(weight, "loss")
        self.__dict__["critic"] = critic  # shared, not owned

    def forward(self, outputs):
        return -self.critic(outputs["reconstruction"]).mean()


def test_each_update_reaches_only_its_own_parameters():
    torch.manual_seed(0)
    model = nn.Linear(3, 3)
    discriminating = Discriminating()
    objective = Objective({"reconstruction": lf.training.Reconstruction(), "fooling": Fooling(discriminating.critic),
                           "critic": discriminating})

    def loss_fn(_, batch):
        return objective({"images": batch[0], "reconstruction": model(batch[0])})

    updates = [Update("loss", adam(model.parameters(), 1e-2), "loss"),
               Update("discriminator", adam(objective.parameters_of("discriminator"), 1e-2), "discriminator")]
    trainer = Trainer(model, updates, loss_fn, progress=False)
    batch = (torch.randn(16, 3),)
    losses, _ = trainer._forward_backward(batch)
    # what each update's own loss alone gives
    objective_values = loss_fn(None, batch)
    expected_model = torch.autograd.grad(objective_values["loss"], list(model.parameters()))
    expected_critic = torch.autograd.grad(objective_values["discriminator"], list(discriminating.parameters()))
    for parameter, expected in zip(model.parameters(), expected_model):
        assert torch.allclose(parameter.grad, expected)
    for parameter, expected in zip(discriminating.parameters(), expected_critic):
        assert torch.allclose(parameter.grad, expected)  # the fooling term did not push the critic
    # each term is shown, except one that alone makes up its loss (critic == discriminator)
    assert set(losses) == {"loss", "discriminator", "reconstruction", "fooling"}


# ------------------------------------------------------------------ runs of format 1

@pytest.fixture()
def format_1_run(tmp_path):
    run = tmp_path / "old-run"
    shutil.copytree(FORMAT_1_RUN, run)
    return run


def test_a_run_of_format_1_loads_and_generates_what_it_did(format_1_run):
    expected = json.loads((format_1_run / "expected.json").read_text())
    pipeline = lf.load(format_1_run)
    samples = pipeline.generate(**expected["generate"])
    assert int(samples.images.long().sum()) == expected["images_sum"]
    assert samples.images[0, 0, 0].tolist() == expected["images_first_row"]
    # format 1 reported densities of standardized embeddings; now they are of the embeddings themselves
    old = torch.tensor(expected["log_prob_standardized"])
    assert torch.allclose(samples.log_prob, old - expected["embedding_std_log_sum"], atol=1e-3)
    stage = dict(build_stages(lf.RunConfig(pipeline.config)))["autoencoder"]
    assert stage.objective().terms["reconstruction"].loss.threshold == 2.0
    assert pipeline.flow.bijection_spec["class"] == "SoftplusAffine" and not pipeline.flow.conditioner_spec[
        "config"]["shared"]
    config, data = RunFolder(format_1_run).read_settings()
    assert config.get("stages.flow.config.model.config.couplings") == 2 and config.image_size == 32


def test_a_run_of_format_1_is_not_resumed_but_says_why(format_1_run, capsys):
    (format_1_run / "checkpoints").mkdir()
    assert main(["train", "--resume", str(format_1_run)]) == 2
    assert "started by latentflows 0.1" in capsys.readouterr().err


# ------------------------------------------------------------------ structure

def test_one_bits_per_dim_conversion_and_one_split():
    sources = {path: path.read_text() for path in SRC.rglob("*.py")}
    conversions = [path.name for path, text in sources.items() if "log(2)" in text]
    assert conversions == ["losses.py"]
    splitting = [path.name for path, text in sources.items() if "torch.randperm(len(members)" in text]
    assert splitting == ["runs.py"]


def test_user_registrations_cannot_take_library_or_built_in_names():
    with pytest.raises(ValueError, match="'relu' is the built-in activation"):
        lf.register(name="relu")(lambda x: x)
    with pytest.raises(ValueError, match="'Coupling' is already registered"):
        @lf.register
        class Coupling(nn.Module):  # noqa: F811 - a user's class of the same name
            pass
    assert lf.registry.get_registered("Coupling").__module__ == "latentflows.flows.coupling"


def test_resuming_a_complete_run_is_refused_and_changes_nothing(format_1_run, capsys):
    before = (format_1_run / "model.safetensors").read_bytes()
    assert main(["train", "--resume", str(format_1_run)]) == 2
    assert "is complete" in capsys.readouterr().err
    assert (format_1_run / "model.safetensors").read_bytes() == before


def test_resume_refuses_new_settings_instead_of_ignoring_them(format_1_run, capsys):
    assert main(["train", "--resume", str(format_1_run), "--flow-epochs", "9"]) == 2
    assert "--flow-epochs" in capsys.readouterr().err


def test_overwrite_also_removes_the_old_evaluation_and_its_judge(tmp_path, pets_parquet):
    run = tmp_path / "run"
    (run / "classifier").mkdir(parents=True)
    for name in ("eval.json", "eval-nearest.png", "classifier/model.safetensors", "notes.txt"):
        (run / name).write_text("old")
    RunFolder(run).prepare(overwrite=True)
    assert sorted(path.name for path in run.iterdir()) == ["notes.txt"]


def test_flow_context_must_be_one_row_or_one_per_sample():
    flow = lf.ConditionalRealNVP(4, context_size=2, couplings=2, hidden=[8])
    with pytest.raises(ValueError, match="one row per sample"):
        flow.log_prob(torch.randn(5, 4), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="matrix"):
        flow.log_prob(torch.randn(4), torch.zeros(1, 2))
    assert flow.log_prob(torch.randn(5, 4), torch.tensor([1.0, 0.0])).shape == (5,)


def test_spec_valued_options_keep_their_specs():
    spec = {"class": "Additive", "config": {}}
    config = with_options(lf.PRESETS["quick"], bijection=spec,
                          ae_loss={"class": "HuberLoss", "config": {"threshold": 2.0}})
    assert config.get("stages.flow.config.model.config.bijection") == spec
    assert config.get("stages.autoencoder.config.terms.reconstruction.config.loss")["config"]["threshold"] == 2.0
