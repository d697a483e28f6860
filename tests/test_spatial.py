"""The spatial flow: checkerboard and channel couplings with convolutional conditioners.

The same inversion and log-determinant checks as every layer, plus what is particular to it:
the masks, the locality of its conditioners, its config, and a run trained end to end."""

import flow_helpers
import pytest
import torch

import latentflows as lf
from latentflows.cli.options import with_options
from latentflows.flows import Coupling, SpatialRealNVP, spatial_mask
from latentflows.flows.spatial import grid_shape
from latentflows.registry import deserialize, serialize

D, C, B = 6, 3, 7


def one_hot(n, classes=C, dtype=torch.float32):
    return flow_helpers.one_hot(n, classes, dtype)


def randomize(module, std=0.3, seed=0):
    return flow_helpers.randomize(module, std, seed)


def spatial_coupling(shape, kind, flip=False, context_size=0, hidden=4, blocks=1):
    conditioner = {"class": "ConvConditioner",
                   "config": {"shape": list(shape), "mask": kind, "flip": flip, "hidden": hidden, "blocks": blocks}}
    features = shape[0] * shape[1] * shape[2]
    return Coupling(features, spatial_mask(shape, kind, flip), {"class": "TanhAffine", "config": {}}, conditioner,
                    context_size)


def layers(context_size):
    yield "checkerboard-coupling", randomize(spatial_coupling((1, 2, 3), "checkerboard", context_size=context_size))
    yield "channel-coupling-flipped", randomize(spatial_coupling((2, 1, 3), "channel", True, context_size))
    yield "spatial-realnvp", randomize(SpatialRealNVP(D, context_size, couplings=4, latent_shape=[2, 1, 3],
                                                      hidden=4, standardize=True, mean=torch.randn(D),
                                                      std=torch.rand(D) + 0.5), std=0.2).transform
    yield "spatial-realnvp-classnorm", randomize(SpatialRealNVP(D, context_size, couplings=2, latent_shape=[2, 1, 3],
                                                                hidden=4, normalization="classnorm"),
                                                 std=0.2).transform
    yield "spatial-realnvp-batchnorm", randomize(SpatialRealNVP(D, context_size, couplings=2, latent_shape=[1, 2, 3],
                                                                hidden=4, normalization="batchnorm"),
                                                 std=0.2).transform


CASES = [(name, context_size, mode) for context_size in (0, C) for name, _ in layers(context_size)
         for mode in ("train", "eval")]


def build(name, context_size, mode, dtype):
    module = dict(layers(context_size))[name].to(dtype)
    context = one_hot(B, dtype=dtype) if context_size else None
    if mode == "eval":  # initialise ActNorm / ContextAffine on a first training batch, then evaluate
        module.train()
        with torch.no_grad():
            module(torch.randn(32, D, dtype=dtype) * 2, one_hot(32, dtype=dtype) if context_size else None)
    module.train(mode == "train")
    return module, context


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name,context_size,mode", CASES)
def test_round_trip(name, context_size, mode, dtype):
    module, context = build(name, context_size, mode, dtype)
    x = torch.randn(B, D, dtype=dtype, generator=torch.Generator().manual_seed(1)) * 2
    flow_helpers.check_round_trip(module, x, context, dtype, context_matters=bool(context_size))


@pytest.mark.parametrize("name,context_size,mode", CASES)
def test_logabsdet_matches_autograd_jacobian(name, context_size, mode):
    module, context = build(name, context_size, mode, torch.float64)
    flow_helpers.check_jacobian(module, torch.randn(B, D, dtype=torch.float64,
                                                    generator=torch.Generator().manual_seed(2)), context)


def test_masks_cover_the_grid_in_two_couplings():
    board, flipped = (torch.tensor(spatial_mask((2, 4, 4), "checkerboard", flip)) for flip in (False, True))
    assert board.sum() == 16 and torch.equal(board, ~flipped)
    grid = board.view(2, 4, 4)
    assert torch.equal(grid[0], grid[1]) and not grid[0, 0, 0] and grid[0, 0, 1] and grid[0, 1, 0]
    channel = torch.tensor(spatial_mask((4, 2, 2), "channel")).view(4, 2, 2)
    assert not channel[:2].any() and channel[2:].all()
    with pytest.raises(ValueError, match="at least 2 channels"):
        spatial_mask((1, 8, 8), "channel")
    with pytest.raises(ValueError, match="unknown spatial mask 'stripes'"):
        spatial_mask((1, 8, 8), "stripes")


def test_a_conditioner_sees_only_its_neighbourhood():
    """One 3x3 convolution in and one out (no blocks): a transformed feature depends on the
    identity features within two positions of it, and on no others."""
    layer = randomize(spatial_coupling((1, 8, 8), "checkerboard", hidden=4, blocks=0))
    x = torch.randn(1, 64)
    z, _ = layer(x)
    moved = x.clone()
    moved[0, 0] += 1.0  # position (0, 0): an identity feature of the checkerboard
    changed = (layer(moved)[0] != z).view(8, 8)
    assert changed[0, 0] and changed[0, 1] and changed[1, 2]   # itself (the identity moves), near neighbours
    assert not changed[3:, :].any() and not changed[:, 3:].any()  # beyond the receptive field


def test_grid_shape_is_checked():
    assert grid_shape(256, None) == (4, 8, 8)
    with pytest.raises(ValueError, match="not a multiple of 64"):
        grid_shape(100, None)
    with pytest.raises(ValueError, match=r"does not hold 256 features"):
        grid_shape(256, [4, 8, 4])


def test_config_round_trip_rebuilds_an_equal_flow():
    flow = randomize(SpatialRealNVP(64, 2, couplings=3, hidden=8, standardize=True, mean=torch.zeros(64),
                                    std=torch.ones(64)))
    again = deserialize(serialize(flow), lf.flows.Flow)
    again.load_state_dict(flow.state_dict())
    x, context = torch.randn(5, 64), one_hot(5, 2)
    assert torch.equal(flow.eval().log_prob(x, context), again.eval().log_prob(x, context))


def test_classnorm_puts_a_per_class_affine_after_every_coupling():
    def kinds(flow):
        return [type(layer).__name__ for layer in flow.transform.transforms]

    conditional = SpatialRealNVP(D, C, couplings=3, latent_shape=[2, 1, 3], hidden=4, normalization="classnorm")
    assert kinds(conditional) == ["ContextAffine"] + ["Coupling", "ContextAffine"] * 3
    unconditional = SpatialRealNVP(D, 0, couplings=2, latent_shape=[2, 1, 3], hidden=4, normalization="classnorm")
    assert kinds(unconditional) == ["Coupling", "ActNorm"] * 2  # no class to condition on: plain ActNorm
    with pytest.raises(ValueError, match="normalization must be one of"):
        SpatialRealNVP(D, C, couplings=2, latent_shape=[2, 1, 3], normalization="layernorm")


def test_a_spatial_flow_trains_saves_and_samples_end_to_end(small_pets, tiny_config, tmp_path):
    config = with_options(tiny_config, flow="spatial", couplings=2).with_values(
        {"stages.flow.config.model.config.hidden": 8})
    pipeline = lf.train(small_pets, config, tmp_path / "run", progress=False, figures=False)
    assert isinstance(pipeline.flow, SpatialRealNVP) and pipeline.flow.latent_shape == [1, 8, 8]
    loaded = lf.load(tmp_path / "run", device="cpu")
    assert 0.1 <= loaded.summary["posterior_temperature"] <= 1000  # fitted for class guidance
    samples = loaded.generate("cat", n=4, seed=1, guidance=2.0)
    assert samples.images.shape == (4, 3, 64, 64) and torch.isfinite(samples.log_prob).all()
    embeddings = pipeline.embed(small_pets.images[:8])
    assert torch.allclose(loaded.embedding_log_prob(embeddings, small_pets.labels[:8]),
                          pipeline.embedding_log_prob(embeddings, small_pets.labels[:8]))


def test_the_flow_option_names_whole_flows():
    quick = lf.PRESETS["quick"]
    assert with_options(quick, flow="spatial").as_dict() == quick.as_dict()  # quick's own flow, by name
    realnvp = with_options(quick, flow="realnvp").as_dict()["stages"]["flow"]["config"]["model"]
    assert realnvp["class"] == "ConditionalRealNVP" and realnvp["config"]["class_whitening"]
    with pytest.raises(ValueError, match="choose one of realnvp, spatial"):
        with_options(quick, flow="glow")


def test_the_spatial_flow_takes_the_autoencoders_grid_unless_its_config_names_one():
    from latentflows.training import FlowStage

    stage = FlowStage(epochs=1, batch_size=8, lr=1e-3, model=with_options(lf.PRESETS["quick"], flow="spatial").get(
        "stages.flow.config.model"))
    assert stage.build_flow(256, 2, 0, latent_shape=(16, 4, 4)).latent_shape == [16, 4, 4]  # a 4x4 code grid
    assert stage.build_flow(256, 2, 0).latent_shape == [4, 8, 8]  # none known: an 8x8 grid is assumed
    assert stage.dry_run({"embedding_dim": 64, "classes": 2, "latent_shape": (4, 4, 4)})["flow_parameters"] > 0
    named = FlowStage(epochs=1, batch_size=8, lr=1e-3, model={"class": "SpatialRealNVP", "config": {
        "latent_shape": [1, 16, 16], "hidden": 8, "couplings": 2}})
    assert named.build_flow(256, 2, 0, latent_shape=(4, 8, 8)).latent_shape == [1, 16, 16]  # the config's own
    mlp = FlowStage(epochs=1, batch_size=8, lr=1e-3, model={"class": "ConditionalRealNVP", "config": {
        "couplings": 2, "hidden": [8]}})
    assert mlp.build_flow(16, 2, 0, latent_shape=(1, 4, 4)).features == 16  # a flow without a grid ignores it
