"""Class guidance: resampling a conditional flow's samples by its own class posterior."""

import math

import pytest
import torch

import latentflows as lf
from latentflows.flows import ConditionalRealNVP, Flow, StandardNormal, Transform
from latentflows.guidance import (
    choose_without_replacement,
    class_log_posterior,
    fit_posterior_temperature,
    guided_sample,
)


class ClassShift(Transform):
    """x -> x - mu[c]: with a standard normal base, p(x | c) = N(mu[c], 1), known exactly."""

    def __init__(self, means):
        super().__init__()
        self.register_buffer("means", torch.as_tensor(means, dtype=torch.float32))
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # flows find their device from a parameter

    def forward(self, x, context=None):
        return x - context @ self.means, x.new_zeros(x.shape[0])

    def inverse(self, z, context=None):
        return z + context @ self.means, z.new_zeros(z.shape[0])


def toy_flow(mean=1.0):
    """Two classes on a line: cat at -mean, dog at +mean, so p(cat | x) = sigmoid(-2 mean x) exactly."""
    return Flow(ClassShift([[-mean], [mean]]), StandardNormal(1), context_size=2).eval()


def test_the_fitted_temperature_undoes_an_overconfident_flow():
    """Labels drawn from classes at -1 and +1 (log-odds 2x); a flow with classes at -3 and +3
    claims log-odds 6x, three times too sure: the fitted temperature is 3, its posterior the true one."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (4000,), generator=generator)
    x = (labels.float() * 2 - 1 + torch.randn(4000, generator=generator)).unsqueeze(1)
    temperature = fit_posterior_temperature(toy_flow(3.0), x, labels, 2)
    assert 2.5 < temperature < 3.6
    assert abs(fit_posterior_temperature(toy_flow(1.0), x, labels, 2) - 1.0) < 0.2
    tempered = class_log_posterior(toy_flow(3.0), x[:5], 2, temperature).exp()[:, 0]
    assert torch.allclose(tempered, torch.sigmoid(-2 * x[:5, 0]), atol=0.05)


def test_the_posterior_is_bayes_rule_on_known_densities():
    x = torch.linspace(-3, 3, 13).unsqueeze(1)
    posterior = class_log_posterior(toy_flow(), x, 2).exp()
    assert torch.allclose(posterior[:, 0], torch.sigmoid(-2 * x[:, 0]), atol=1e-6)
    assert torch.allclose(posterior.sum(1), torch.ones(13), atol=1e-6)


@pytest.mark.parametrize("gamma", [1.0, 4.0])
def test_resampled_samples_follow_the_tilted_density(gamma):
    """Kept cats follow p(x | cat) * p(cat | x)^gamma (normalised), computed on a grid."""
    grid = torch.linspace(-9, 7, 20001, dtype=torch.float64)
    tilted = torch.exp(-0.5 * (grid + 1) ** 2) * torch.sigmoid(-2 * grid) ** gamma
    tilted /= tilted.sum()
    mean, share = float((grid * tilted).sum()), float((torch.sigmoid(-2 * grid) * tilted).sum())
    plain_share = float((torch.sigmoid(-2 * grid) * torch.exp(-0.5 * (grid + 1) ** 2)).sum()
                        / torch.exp(-0.5 * (grid + 1) ** 2).sum())
    assert mean < -1.2 and share > plain_share + 0.05  # the tilt is large enough to be seen

    x, log_prob, class_prob = guided_sample(toy_flow(), 3000, 0, 2, guidance=gamma, candidates=100,
                                            generator=torch.Generator().manual_seed(1))
    assert abs(x.mean().item() - mean) < 0.08
    assert abs(class_prob.mean().item() - share) < 0.02
    # each kept sample carries its exact density and posterior
    assert torch.allclose(log_prob, -0.5 * (x[:, 0] + 1) ** 2 - 0.5 * math.log(2 * math.pi), atol=1e-5)
    assert torch.allclose(class_prob, torch.sigmoid(-2 * x[:, 0]), atol=1e-6)
    assert len(set(x[:, 0].tolist())) == 3000  # without replacement: no sample twice


def test_choosing_follows_the_weights():
    weights = torch.log(torch.tensor([1.0, 3.0, 0.0, 6.0]))
    counts = torch.zeros(4)
    generator = torch.Generator().manual_seed(0)
    for _ in range(4000):
        counts[choose_without_replacement(weights, 1, generator)] += 1
    assert counts[2] == 0
    assert torch.allclose(counts / 4000, torch.tensor([0.1, 0.3, 0.0, 0.6]), atol=0.03)
    with pytest.raises(ValueError, match="cannot choose 5 of 4"):
        choose_without_replacement(weights, 5)


def test_zero_guidance_is_plain_sampling():
    pipeline = lf.LatentFlowPipeline(lf.ConvAutoencoder(8, width=2, image_size=32, fc_dim=16),
                                     ConditionalRealNVP(8, context_size=2, couplings=2, hidden=[8]), ["cat", "dog"])
    torch.nn.init.normal_(pipeline.flow.transform.transforms[0].conditioner.nets[0][-1].weight, std=0.5)
    samples = pipeline.generate("dog", n=6, temperature=0.9, seed=5, guidance=0.0)
    pipeline.flow.eval()
    z, log_prob = pipeline.flow.sample_and_log_prob(6, pipeline.one_hot(torch.tensor([1])), 0.9,
                                                    torch.Generator().manual_seed(5))
    order = torch.argsort(log_prob, descending=True)
    assert torch.equal(samples.log_prob, log_prob[order])
    assert torch.equal(samples.images, pipeline.decode(z[order], pipeline.one_hot(torch.ones(6, dtype=torch.long))))
    guided = pipeline.generate("dog", n=6, temperature=0.9, seed=5, guidance=3.0)
    assert guided.class_prob.mean() > samples.class_prob.mean()  # this flow separates the classes a little


@pytest.mark.parametrize("guidance, candidates, message", [
    (-1.0, 8, "guidance must be a finite number >= 0"),
    (float("nan"), 8, "guidance must be a finite number >= 0"),
    (float("inf"), 8, "guidance must be a finite number >= 0"),
    (1.0, 0, "candidates .* must be a whole number >= 1"),
])
def test_bad_guidance_is_refused(guidance, candidates, message):
    pipeline = lf.LatentFlowPipeline(lf.ConvAutoencoder(8, width=2, image_size=32, fc_dim=16),
                                     ConditionalRealNVP(8, context_size=2, couplings=2, hidden=[8]), ["cat", "dog"])
    with pytest.raises(lf.LatentflowsError, match=message):
        pipeline.generate("cat", n=2, guidance=guidance, candidates=candidates)


def test_guidance_needs_two_classes():
    pipeline = lf.LatentFlowPipeline(lf.ConvAutoencoder(8, width=2, image_size=32, fc_dim=16),
                                     ConditionalRealNVP(8, context_size=1, couplings=2, hidden=[8]), ["cat"])
    assert pipeline.generate("cat", n=2).class_prob is None
    with pytest.raises(lf.LatentflowsError, match="at least 2 classes"):
        pipeline.generate("cat", n=2, guidance=1.0)


def pipeline_with_sampling(sampling, classes=("cat", "dog")):
    """A small pipeline whose run config records ``sampling`` (as a trained run's does)."""
    pipeline = lf.LatentFlowPipeline(lf.ConvAutoencoder(8, width=2, image_size=32, fc_dim=16),
                                     ConditionalRealNVP(8, context_size=len(classes), couplings=2, hidden=[8]),
                                     list(classes), config={"sampling": sampling})
    torch.nn.init.normal_(pipeline.flow.transform.transforms[0].conditioner.nets[0][-1].weight, std=0.5)
    return pipeline


def test_the_runs_sampling_setting_is_the_default_guidance():
    pipeline = pipeline_with_sampling({"guidance": 3.0, "candidates": 4})
    assert pipeline.sampling == {"guidance": 3.0, "candidates": 4}
    default = pipeline.generate("dog", n=5, seed=2)
    explicit = pipeline.generate("dog", n=5, seed=2, guidance=3.0, candidates=4)
    plain = pipeline.generate("dog", n=5, seed=2, guidance=0.0)
    assert torch.equal(default.images, explicit.images) and torch.equal(default.log_prob, explicit.log_prob)
    assert not torch.equal(default.log_prob, plain.log_prob)  # the default did guide
    # one of the two given: the other still comes from the run
    assert torch.equal(pipeline.generate("dog", n=5, seed=2, candidates=4).log_prob, explicit.log_prob)
    assert not torch.equal(pipeline.generate("dog", n=5, seed=2, candidates=2).log_prob, explicit.log_prob)


def test_a_run_without_a_sampling_setting_samples_plainly():
    pipeline = pipeline_with_sampling({})
    assert pipeline.sampling == {"guidance": 0.0, "candidates": 8}
    assert torch.equal(pipeline.generate("cat", n=4, seed=1).log_prob,
                       pipeline.generate("cat", n=4, seed=1, guidance=0.0).log_prob)


def test_a_single_class_run_ignores_its_default_guidance():
    pipeline = pipeline_with_sampling({"guidance": 64.0, "candidates": 32}, classes=("cat",))
    assert pipeline.sampling["guidance"] == 0.0
    assert pipeline.generate("cat", n=2).class_prob is None  # no error: nothing to guide between
    with pytest.raises(lf.LatentflowsError, match="at least 2 classes"):
        pipeline.generate("cat", n=2, guidance=1.0)


@pytest.mark.parametrize("sampling, message", [
    ({"guidance": -1}, "guidance must be a finite number >= 0"),
    ({"guidance": True}, "guidance must be a finite number >= 0"),
    ({"candidates": 0}, "candidates .* must be a whole number >= 1"),
    ({"gamma": 2}, "unknown sampling settings \\['gamma'\\]"),
    (64, "the run's sampling setting must be a mapping"),
])
def test_a_bad_sampling_setting_is_refused_with_its_fix(sampling, message):
    with pytest.raises(lf.LatentflowsError, match=message):
        lf.RunConfig({"stages": {"flow": {"class": "FlowStage", "config": {}}}, "sampling": sampling})


def test_presets_guide_except_the_notebooks():
    from latentflows.presets import PRESETS

    assert PRESETS["seed"].sampling == {"guidance": 0.0, "candidates": 8}  # the reference notebook samples plainly
    assert PRESETS["quick"].sampling == PRESETS["best"].sampling == {"guidance": 64.0, "candidates": 32}


def test_a_run_with_a_bad_sampling_setting_names_its_file(tmp_path):
    import json

    pipeline = pipeline_with_sampling({"guidance": 2.0})
    pipeline.save(tmp_path / "run")
    config_file = tmp_path / "run" / "config.json"
    saved = json.loads(config_file.read_text())
    saved["config"]["sampling"] = {"guidance": -3}
    config_file.write_text(json.dumps(saved))
    with pytest.raises(lf.ModelFileError, match=r"config\.json: the run's sampling setting .* guidance must be a finite"):
        lf.load(tmp_path / "run")
