import pytest
import torch

import latentflows as lf
from latentflows.errors import LatentflowsError, ModelFileError, RunExistsError


@pytest.fixture(scope="module")
def trained(small_pets, tmp_path_factory, tiny_config):
    run = tmp_path_factory.mktemp("runs") / "tiny"
    pipeline = lf.train(small_pets, tiny_config, run, progress=False)
    return pipeline, run


def test_run_folder_has_config_weights_metrics_and_figures(trained):
    _, run = trained
    for name in ["config.json", "model.safetensors", "metrics.jsonl", "figures/autoencoder_loss.png",
                 "figures/flow_loss.png", "figures/reconstructions.png", "figures/samples.png"]:
        assert (run / name).is_file(), name
    import json

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == ["autoencoder"] * 2 + ["flow"] * 3
    assert all("val_loss" in r for r in rows)
    assert rows[-1]["train_loss"] < rows[2]["train_loss"]  # the flow learned something


def test_the_quick_flow_has_a_class_path_at_both_ends(trained, small_pets, tiny_config):
    """A per-class affine map first and a full-covariance Gaussian per class last: each class's
    training codes are likelier under their own class than under the other."""
    pipeline, _ = trained
    layers = pipeline.flow.body.transforms
    assert isinstance(layers[0], lf.flows.ContextAffine) and isinstance(layers[-1], lf.flows.ContextLinear)
    train_set, _ = lf.runs.run_split(small_pets, tiny_config)
    codes = pipeline.embed(train_set.images)
    for c in range(2):
        own = codes[train_set.labels == c]
        likelier = pipeline.embedding_log_prob(own, torch.full((len(own),), c)) > \
            pipeline.embedding_log_prob(own, torch.full((len(own),), 1 - c))
        assert likelier.float().mean() > 0.5


def test_training_is_deterministic(small_pets, trained, tiny_config):
    again = lf.train(small_pets, tiny_config, None, progress=False, figures=False)
    for (name, a), (_, b) in zip(trained[0].state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name


def test_save_and_load_give_identical_samples(trained):
    pipeline, run = trained
    loaded = lf.load(run)
    a, b = pipeline.generate("dog", 6, seed=5), loaded.generate("dog", 6, seed=5)
    assert torch.equal(a.images, b.images) and torch.equal(a.log_prob, b.log_prob)
    assert loaded.class_names == ["cat", "dog"]


def test_samples_are_sorted_by_log_density_and_it_is_the_models(trained):
    pipeline, _ = trained
    samples = pipeline.generate("cat", 12, temperature=0.8, seed=1)
    assert samples.images.shape == (12, 3, 64, 64) and samples.images.dtype == torch.uint8
    assert torch.all(samples.log_prob[:-1] >= samples.log_prob[1:])
    flow = pipeline.flow.eval()
    cat, dog = (flow.sample(4, pipeline.one_hot(torch.tensor([k])), generator=torch.Generator().manual_seed(1))
                for k in (0, 1))
    # the ranking is the model's own density of the decoded embeddings
    embeddings, log_prob = flow.sample_and_log_prob(5, pipeline.one_hot(torch.tensor([0])),
                                                    generator=torch.Generator().manual_seed(2))
    assert torch.allclose(log_prob, flow.log_prob(embeddings, pipeline.one_hot(torch.tensor([0]))), atol=1e-3)
    # the class changes the sampled embeddings (compared in standardized units)
    assert (flow.head(cat)[0] - flow.head(dog)[0]).abs().max() > 1e-3


def test_flow_head_standardizes_the_training_embeddings(trained, small_pets, tiny_config):
    pipeline, _ = trained
    train_set, _ = lf.runs.run_split(small_pets, tiny_config)
    standardized, _ = pipeline.flow.head(pipeline.embed(train_set.images))
    assert standardized.mean(0).abs().max() < 1e-3 and (standardized.std(0) - 1).abs().max() < 1e-3


def test_log_densities_of_embeddings_build_no_autograd_graph(trained, small_pets):
    pipeline, _ = trained
    embeddings = pipeline.embed(small_pets.images[:4])
    log_prob = pipeline.embedding_log_prob(embeddings, small_pets.labels[:4])
    assert not log_prob.requires_grad and log_prob.grad_fn is None
    assert torch.allclose(log_prob, pipeline.log_prob(small_pets.images[:4], small_pets.labels[:4]))


def test_embed_decode_and_generate_restore_the_mode_they_found(trained, small_pets):
    pipeline, _ = trained
    pipeline.train()
    pipeline.generate("cat", 2)
    pipeline.reconstruct(small_pets.images[:2])
    pipeline.log_prob(small_pets.images[:2], small_pets.labels[:2])
    assert all(module.training for module in pipeline.modules())
    pipeline.eval()


def test_unknown_class_lists_the_known_ones(trained):
    with pytest.raises(LatentflowsError, match="unknown class 'horse'.*cat, dog"):
        trained[0].generate("horse", 2)


def test_truncated_or_foreign_files_give_clear_errors(trained, tmp_path):
    import shutil

    _, run = trained
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelFileError, match="model.safetensors.*truncated"):
        lf.load(copy)
    weights.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelFileError, match="model.safetensors"):
        lf.load(copy)
    (copy / "config.json").write_text('{"hello": 1}')
    with pytest.raises(ModelFileError, match="not a latentflows run config"):
        lf.load(copy)
    (copy / "config.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        lf.load(copy)
    with pytest.raises(ModelFileError, match="no such run folder"):
        lf.load(tmp_path / "missing")


def test_existing_run_folder_is_refused(small_pets, trained, tiny_config):
    _, run = trained
    with pytest.raises(RunExistsError, match="--overwrite"):
        lf.train(small_pets, tiny_config, run, progress=False)


def test_autoencoder_sizes_and_config_round_trip():
    for dim in (128, 256, 512):
        model = lf.ConvAutoencoder(embedding_dim=dim, width=8).eval()
        reconstruction, embedding = model(torch.rand(2, 3, 64, 64) * 2 - 1)
        assert embedding.shape == (2, dim) and reconstruction.shape == (2, 3, 64, 64)
        assert reconstruction.abs().max() <= 1
        assert lf.deserialize(lf.serialize(model)).get_config() == model.get_config()


def test_early_stopping_keeps_the_best_validation_weights():
    from latentflows.training import Batches, EarlyStopping, Trainer

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    x, y = torch.randn(64, 4), torch.randn(64, 1)  # pure noise: validation gets worse as it fits
    val_x, val_y = torch.randn(64, 4), torch.randn(64, 1)

    def loss_fn(m, batch):
        return {"loss": torch.nn.functional.mse_loss(m(batch[0]), batch[1])}

    stopper = EarlyStopping("loss", patience=3)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.3), loss_fn, callbacks=[stopper], progress=False)
    history = trainer.fit(Batches([x, y], 16, shuffle=True), 200, Batches([val_x, val_y], 64))
    assert len(history) < 200 and len(history) == stopper.best_epoch + 3
    assert trainer.evaluate(Batches([val_x, val_y], 64))["loss"] == pytest.approx(stopper.best)


def test_run_files_get_the_usual_permissions(trained):
    import os

    _, run = trained
    umask = os.umask(0)
    os.umask(umask)
    for name in ("config.json", "model.safetensors", "run.json", "metrics.jsonl"):
        assert (run / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_weights_that_do_not_fit_the_config_name_the_keys(trained, tmp_path):
    import json
    import shutil

    _, run = trained
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    config = json.loads((copy / "config.json").read_text())
    config["flow"]["config"]["couplings"] += 1
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match=r"model.safetensors: weights do not match.*missing: flow.transform"):
        lf.load(copy)
