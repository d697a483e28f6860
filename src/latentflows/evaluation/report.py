"""``evaluate``: every figure of a trained pipeline on its own train/validation split.

The report is a plain dict (saved as ``eval.json``): autoencoder reconstruction quality,
flow likelihood per class with its train/validation gap, FID/KID, conditional fidelity
judged by a classifier trained on real images, diversity and memorisation. Reading it back
and showing it as text (``read_report``, ``format_report``, ``compare``) is ``latentflows.reports``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .._version import __version__
from ..data import ImageDataset, MappedImages
from ..distributed import as_runtime
from ..errors import LatentflowsError, ModelFileError
from ..flows import check_sampling
from ..guidance import check_guidance
from ..pipeline import LatentFlowPipeline
from ..reports import EVAL_FORMAT, compare, format_report, read_report  # noqa: F401  (also importable from here)
from ..runtime import Runtime
from . import measures
from .classifier import ImageClassifier, train_classifier

CLASSIFIER_DIR = "classifier"


def _log(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr)


@torch.no_grad()
def image_features(extractor: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor | MappedImages, batch_size: int = 50,
                   device: str | torch.device | None = None) -> torch.Tensor:
    """The features of ``images``, computed by batches, as float64 on the CPU (where the
    FID/KID statistics are computed).

    Args:
        extractor: images -> features ``(n, D)``, e.g. ``FIDInceptionV3`` or ``ImageClassifier.embed``.
        images: the images (uint8, as the extractor takes them).
        batch_size: images per call of ``extractor``.
        device: where each batch is moved before the call (the extractor's device); None
            leaves the batches where ``images`` are.

    Example:
        >>> import torch
        >>> image_features(lambda x: x.float().mean((2, 3)), torch.zeros(3, 3, 4, 4, dtype=torch.uint8), 2).dtype
        torch.float64
    """
    parts = []
    for i in range(0, len(images), batch_size):
        batch = images[i : i + batch_size]
        parts.append(extractor(batch if device is None else batch.to(device)))
    return torch.cat(parts).cpu().double()  # float32 -> float64 is exact: the same numbers on any device


def evaluate(pipeline: LatentFlowPipeline, train_set: ImageDataset, val_set: ImageDataset, *,
             samples_per_class: int | None = None, seed: int = 0, temperature: float = 1.0,
             guidance: float | None = None, candidates: int | None = None,
             feature_extractor: Callable[[torch.Tensor], torch.Tensor] | None = None,
             no_features_reason: str = "no feature extractor given",
             classifier: ImageClassifier | None = None, classifier_epochs: int = 12,
             yardsticks: Sequence[Any] = (), no_yardstick_reason: str = "no ImageNet network given",
             progress: bool = True, runtime: Runtime | None = None) -> tuple[dict, dict]:
    """All figures, and the artefacts behind them (samples, neighbours, the classifier).

    ``samples_per_class`` defaults to the number of validation images of each class, so
    FID/KID compare sets of equal size. Without ``feature_extractor`` FID and KID are
    reported as unavailable, with ``no_features_reason``. Each ImageNet ``yardsticks``
    entry (``ImageNetYardstick``) adds Fréchet distance and KID in its features and, for
    cats and dogs, the share of images ImageNet's own classes call the requested species.

    The networks run on the runtime's device (the data sets may stay on the CPU: batches
    are moved there); every figure comes back to the CPU as a plain number. Feature
    statistics (FID/KID), the latent probe and the Gaussian baseline are computed on the
    CPU in float64. (No example: it trains a classifier.)

    Args:
        pipeline: the trained pipeline to evaluate.
        train_set: the run's training split (the judge trains on it; memorisation searches it).
        val_set: the run's validation split.
        samples_per_class: images generated per class; default the validation count of each class.
        seed: seeds the samples (class ``c`` uses ``seed + c``) and KID's subsets.
        temperature: the flow's sampling temperature.
        guidance, candidates: class guidance of the samples (``LatentFlowPipeline.generate``);
            None: the run's own (``LatentFlowPipeline.sampling``). The report records those used.
        feature_extractor: the FID network (e.g. ``FIDInceptionV3``), or None.
        no_features_reason: why FID/KID are unavailable when there is no extractor.
        classifier: a trained judge (``ImageClassifier``); None trains one on ``train_set``.
        classifier_epochs: epochs of that training.
        yardsticks: ImageNet networks to measure with (``ImageNetYardstick``).
        no_yardstick_reason: why the ImageNet figures are unavailable when there are none.
        progress: print each step to stderr and show training progress.
        runtime: the device (and precision of the judge's training) to compute on; default
            a ``Runtime`` on the pipeline's device. The pipeline, the classifier, a feature
            extractor that is an ``nn.Module`` and the yardsticks are moved to its device.
    """
    if list(train_set.class_names) != list(pipeline.class_names):
        raise LatentflowsError(f"the data's classes {train_set.class_names} are not the model's "
                               f"{pipeline.class_names}; evaluate on the data the run was trained on")
    if len(val_set) < 2:
        raise LatentflowsError("the validation split has fewer than 2 images; evaluate on more data")
    runtime = runtime if runtime is not None else Runtime(pipeline.device)
    device = runtime.device
    pipeline.to(device)
    if isinstance(feature_extractor, nn.Module):
        feature_extractor.to(device)
    for yardstick in yardsticks:
        if hasattr(yardstick, "to"):
            yardstick.to(device)
    if classifier is not None:
        classifier.to(device)
    started = time.perf_counter()
    names = pipeline.class_names
    guidance, candidates = pipeline.guidance_or_default(guidance, candidates)
    val_counts = [int((val_set.labels == c).sum()) for c in range(len(names))]
    report: dict = {"format": EVAL_FORMAT, "format_version": 1, "latentflows_version": __version__,
                    "settings": {"seed": seed, "temperature": temperature, "guidance": guidance,
                                 "candidates": candidates, "samples_per_class": samples_per_class,
                                 "train_images": len(train_set), "val_images": len(val_set),
                                 "device": str(device), "decode_precision": pipeline.decode_precision,
                                 "judge_precision": runtime.precision}}

    _log(progress, "evaluate: autoencoder reconstructions")
    reconstructions = pipeline.reconstruct(val_set.images, val_set.labels)
    report["autoencoder"] = {
        "val": measures.reconstruction_quality(val_set.images, reconstructions, device=device),
        "train": measures.reconstruction_quality(train_set.images, pipeline.reconstruct(train_set.images, train_set.labels),
                                                 device=device),
    }

    # where class is lost: in the encoder (a low probe) or the decoder (a low judge, below)
    embeddings = {"train": pipeline.embed(train_set.images), "val": pipeline.embed(val_set.images)}
    report["autoencoder"]["latent_probe"] = measures.linear_probe(
        embeddings["train"].cpu(), train_set.labels, embeddings["val"].cpu(), val_set.labels, len(names))

    _log(progress, "evaluate: flow likelihood")
    dim = pipeline.flow.features
    flow: dict[str, Any] = {}
    for split_name, split in (("train", train_set), ("val", val_set)):
        log_prob = pipeline.embedding_log_prob(embeddings[split_name], split.labels)
        flow[split_name] = measures.nll_summary(log_prob, dim)
        for c, name in enumerate(names):
            chosen = split.labels == c
            if chosen.any():
                flow.setdefault("per_class", {}).setdefault(name, {})[split_name] = \
                    measures.nll_summary(log_prob[chosen], dim)
    flow["gap_nats_per_dim"] = flow["val"]["nats_per_dim"] - flow["train"]["nats_per_dim"]
    # what a flow must beat: one Gaussian per class (below it, the flow has learned something)
    flow["gaussian_baseline"] = measures.gaussian_baseline(
        embeddings["train"].cpu(), train_set.labels, embeddings["val"].cpu(), val_set.labels, len(names))
    report["flow"] = flow

    _log(progress, "evaluate: generating samples")
    samples = {}
    for c, name in enumerate(names):
        n = samples_per_class or val_counts[c]
        if n:
            samples[name] = pipeline.generate(name, n, temperature, seed + c, guidance, candidates).images
    report["settings"]["generated_per_class"] = {name: len(images) for name, images in samples.items()}

    if feature_extractor is None:
        report["fid"] = {"available": False, "reason": no_features_reason}
    else:
        _log(progress, "evaluate: Inception features for FID/KID")
        report["fid"] = {"available": True, **_distances(feature_extractor, val_set, samples, seed, device)}

    if yardsticks:
        report["imagenet"] = {"available": True}
        for yardstick in yardsticks:
            _log(progress, f"evaluate: ImageNet {yardstick.name} features and species")
            report["imagenet"][yardstick.name] = _imagenet_figures(yardstick, val_set, reconstructions, samples, seed)
    else:
        report["imagenet"] = {"available": False, "reason": no_yardstick_reason}

    trained_here = classifier is None
    if classifier is None:
        _log(progress, f"evaluate: training the judge classifier ({classifier_epochs} epochs)")
        classifier_started = time.perf_counter()
        # seeded by the run, not by the sampling --seed: one run, one judge
        classifier, _ = train_classifier(train_set, val_set, epochs=classifier_epochs,
                                         seed=int(pipeline.config.get("seed", 0)), progress=progress, runtime=runtime)
        classifier_seconds = time.perf_counter() - classifier_started
    classifier.eval()
    report["classifier"] = _conditional_fidelity(classifier, val_set, reconstructions, samples, names)
    report["classifier"]["trained_now"] = trained_here
    if trained_here:
        report["classifier"]["train_seconds"] = round(classifier_seconds, 1)
    # FID's recipe in the judge's own features: available offline, comparable between runs
    # that share a judge (same data, split and seed), not with published FIDs
    report["judge_fd"] = _distances(classifier.embed, val_set, samples, seed, device)

    _log(progress, "evaluate: diversity and nearest training images")
    diversity, memorisation, neighbours = {}, {}, []
    for c, name in enumerate(names):
        chosen = val_set.labels == c
        real, decoded_images = val_set.images[chosen], reconstructions[chosen]
        if name not in samples or len(samples[name]) < 2 or len(real) < 2:
            continue
        generated = measures.mean_pairwise_distance(samples[name], device=device)
        decoded = measures.mean_pairwise_distance(decoded_images, device=device)
        diversity[name] = {"generated": generated, "val_reconstruction": decoded,
                           "real": measures.mean_pairwise_distance(real, device=device),
                           "ratio": _ratio(generated, decoded)}
        # Decoded images are smoother than photos, so the like-for-like reference for the
        # samples is the decoded validation images: ratio << 1 means copies of training images.
        # One search for all three sets: the training images are flattened once.
        all_distances, all_index = measures.nearest_neighbours(
            torch.cat([samples[name], real, decoded_images]), train_set.images, device=device)
        distances, real_distances, decoded_distances = all_distances.split(
            [len(samples[name]), len(real), len(decoded_images)])
        index = all_index[: len(samples[name])]
        memorisation[name] = {"generated_to_train": measures.distance_summary(distances),
                              "val_reconstruction_to_train": measures.distance_summary(decoded_distances),
                              "val_to_train": measures.distance_summary(real_distances),
                              "ratio": _ratio(float(distances.mean()), float(decoded_distances.mean()))}
        closest = torch.argsort(distances)[:8]
        neighbours.append((name, samples[name][closest], train_set.images[index[closest]], distances[closest]))
    report["diversity"], report["memorisation"] = diversity, memorisation
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report, {"samples": samples, "neighbours": neighbours, "classifier": classifier}


def _ratio(value: float, reference: float) -> float | None:
    return value / reference if reference > 0 else None  # e.g. a decoder that ignores its input


def _distances(extractor: Callable[[torch.Tensor], torch.Tensor], val_set: ImageDataset, samples: dict, seed: int,
               device: torch.device | None = None) -> dict:
    """FID/KID-style distances between validation images and samples, per class and overall
    (features extracted on ``device``, compared on the CPU)."""
    real = image_features(extractor, val_set.images, device=device)
    fake = {name: image_features(extractor, images, device=device) for name, images in samples.items()}
    return _feature_distances(real, fake, val_set, seed)


def _imagenet_figures(yardstick: Any, val_set: ImageDataset, reconstructions: torch.Tensor, samples: dict,
                      seed: int) -> dict:
    """One ImageNet network's verdicts: distances of samples and of reconstructions to the
    validation photos in its features, and (cats and dogs only) the species it sees."""
    from .efficientnet import species_share

    names = list(val_set.class_names)
    real, real_probs = yardstick.embed(val_set.images)
    decoded, decoded_probs = yardstick.embed(reconstructions)
    fake = {name: yardstick.embed(images) for name, images in samples.items()}
    result = {"generated": _feature_distances(real.double(), {n: f.double() for n, (f, _) in fake.items()},
                                              val_set, seed),
              "reconstruction": {**measures.feature_distances(real.double(), decoded.double(), seed=seed),
                                 "n_real": len(real), "n_generated": len(decoded)}}
    if set(names) <= {"cat", "dog"}:
        requested = [name for name, images in samples.items() for _ in range(len(images))]
        result["species"] = {
            "real": species_share(real_probs, val_set.labels, names),
            "reconstruction": species_share(decoded_probs, val_set.labels, names),
            "generated": species_share(torch.cat([p for _, p in fake.values()]), requested) if requested else None}
    return result


def _feature_distances(real: torch.Tensor, fake: dict[str, torch.Tensor], val_set: ImageDataset, seed: int) -> dict:
    result: dict[str, Any] = {"per_class": {}}
    for c, name in enumerate(val_set.class_names):
        chosen = val_set.labels == c
        if name in fake and int(chosen.sum()) >= 4 and len(fake[name]) >= 4:
            result["per_class"][name] = {**measures.feature_distances(real[chosen], fake[name], seed=seed),
                                         "n_real": int(chosen.sum()), "n_generated": len(fake[name])}
    everything = torch.cat(list(fake.values()))
    result["overall"] = {**measures.feature_distances(real, everything, seed=seed),
                         "n_real": len(real), "n_generated": len(everything)}
    return result


def _conditional_fidelity(classifier: ImageClassifier, val_set: ImageDataset, reconstructions: torch.Tensor,
                          samples: dict[str, torch.Tensor], names: Sequence[str]) -> dict:
    """Accuracy on real images; per class, how often real, reconstructed and generated
    images of that class are classified as it (the reconstructions bound what the
    autoencoder lets through)."""
    real_predictions = classifier.predict(val_set.images)
    reconstructed_predictions = classifier.predict(reconstructions)
    result: dict[str, Any] = {"val_accuracy": float((real_predictions == val_set.labels).float().mean()),
              "reconstruction_accuracy": float((reconstructed_predictions == val_set.labels).float().mean()),
              "per_class": {}}
    hits, total = 0, 0
    for c, name in enumerate(names):
        chosen = val_set.labels == c
        entry: dict[str, float] = {}
        if chosen.any():
            entry["real_recall"] = float((real_predictions[chosen] == c).float().mean())
            entry["reconstruction_recall"] = float((reconstructed_predictions[chosen] == c).float().mean())
        if name in samples:
            predicted = classifier.predict(samples[name])
            entry["generated_share"] = float((predicted == c).float().mean())
            hits, total = hits + int((predicted == c).sum()), total + len(predicted)
        result["per_class"][name] = entry
    result["generated_accuracy"] = hits / total if total else None
    recalls = [entry["reconstruction_recall"] for entry in result["per_class"].values() if "reconstruction_recall" in entry]
    result["reconstruction_balanced_accuracy"] = sum(recalls) / len(recalls) if recalls else None
    return result


def evaluate_run(run_dir: str | Path, *, source: str | None = None, out: str | Path | None = None,
                 overwrite: bool = False, fid_weights: str | Path | None = None, fid: bool = True,
                 download: bool = True, samples_per_class: int | None = None, seed: int = 0,
                 temperature: float = 1.0, guidance: float | None = None, candidates: int | None = None,
                 classifier_epochs: int = 12, judge: str | Path | None = None,
                 imagenet: Sequence[int] = (0, 2), progress: bool = True,
                 device: str | torch.device | Runtime = "auto", classifier_dir: str | Path | None = None,
                 precision: str = "auto") -> dict:
    """Evaluate a run folder on its own split; write ``eval.json`` and ``eval-nearest.png``.

    The judge classifier is trained once and kept in ``RUN/classifier/``, so later
    evaluations of the run use the same judge. ``judge`` names another classifier folder
    (e.g. ``runs/a/classifier``) to judge this run by, so that runs on the same data and
    split are compared by one judge. ``imagenet`` lists the EfficientNet-Lite variants to
    measure with (none: skip; a missing ``latentflows[eval]`` install is reported, not fatal).
    (No example: it trains a classifier.)

    Args:
        run_dir: the run folder.
        source: the data, where it is no longer where ``run.json`` says.
        out: the report file (``.json``); default ``RUN/eval.json``.
        overwrite: replace an existing report and figure.
        fid_weights: the Inception weights file for FID/KID (default: cache, then download).
        fid: compute FID/KID at all.
        download: allow downloading the Inception weights.
        samples_per_class: images generated per class; default the validation count of each class.
        seed: seeds the samples and KID's subsets.
        temperature: the flow's sampling temperature.
        guidance: class guidance strength of the samples (0: plain sampling; ``latentflows.guidance``);
            default the run's own (its ``sampling`` setting).
        candidates: with guidance, embeddings drawn per sample kept; default the run's own.
        classifier_epochs: epochs of the judge's training, when it is trained here.
        judge: another run's classifier folder to judge by.
        imagenet: the EfficientNet-Lite variants to measure with.
        progress: print each step to stderr.
        device: where to compute: ``"auto"`` (CUDA, then MPS, then the CPU), ``"cpu"``,
            ``"cuda"``, ``"cuda:N"``, ``"mps"``, a ``torch.device`` or a ``Runtime``. The
            pipeline and the networks are loaded there; the work runs in the runtime's
            ``session()``; the judge is saved as CPU tensors.
        precision: what the decoder and the judge's training compute in, when ``device`` is not
            a ``Runtime`` (which brings its own): ``"auto"`` (bf16 where the device multiplies
            bf16 matrices natively), ``"fp32"``, ``"bf16"``; the flow, the encoder and the
            FID/ImageNet networks compute in fp32 (figures comparable between machines).
        classifier_dir: where this run's judge is kept (default ``RUN/classifier``; e.g. beside
            ``out`` for a run downloaded from the Hub, whose folder is not ours to write).
    """
    from ..pipeline import load
    from ..plots import nearest_neighbour_grid
    from ..runs import RunFolder, run_split
    from ..saving import load_model, save_model
    from ..storage import write_json
    from .inception import load_inception

    check_sampling(samples_per_class, temperature)  # before the slow steps
    check_guidance(guidance, candidates)  # None: the run's own setting, checked when it loads
    runtime = as_runtime(device, precision)
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "eval.json"
    figure = out.with_name(out.stem + "-nearest.png")
    if out.suffix != ".json":
        raise LatentflowsError(f"--out must end in .json, got {out}")
    for path in (out, figure):
        if path.exists() and not overwrite:
            raise LatentflowsError(f"{path} already exists; pass --overwrite to replace it or --out to write elsewhere")
    with runtime.session():
        pipeline = load(run_dir, device=runtime.device, precision=runtime.precision)
        extractor, fid_source = (None, "turned off (--no-fid)")
        if fid:  # before the slow steps: a bad --fid-weights path fails now
            extractor, fid_source = load_inception(fid_weights, download)
            if extractor is not None:
                extractor.to(runtime.device)
        yardsticks, yardstick_reason = _load_yardsticks(imagenet, runtime.device)
        run = RunFolder(run_dir)
        config = run.config()
        dataset = run.dataset(source, progress=progress)
        train_set, val_set = run_split(dataset, config)
        classifier_dir = Path(judge) if judge is not None else Path(classifier_dir or run_dir / CLASSIFIER_DIR)
        if judge is not None and not (classifier_dir / "model.json").is_file():
            raise ModelFileError(f"{classifier_dir}: no judge classifier there (expected RUN/classifier of an "
                                 f"evaluated run)")
        classifier: ImageClassifier | None = None
        if (classifier_dir / "model.json").exists():
            loaded, _ = load_model(classifier_dir)
            if not isinstance(loaded, ImageClassifier) or loaded.num_classes != len(pipeline.class_names):
                raise ModelFileError(f"{classifier_dir}: not a classifier for this run's {len(pipeline.class_names)} "
                                     f"classes; remove it and evaluate again to train a new one")
            classifier = loaded.to(runtime.device)
        report, artefacts = evaluate(pipeline, train_set, val_set, samples_per_class=samples_per_class, seed=seed,
                                     temperature=temperature, guidance=guidance, candidates=candidates,
                                     feature_extractor=extractor, no_features_reason=fid_source,
                                     classifier=classifier, classifier_epochs=classifier_epochs, yardsticks=yardsticks,
                                     no_yardstick_reason=yardstick_reason, progress=progress, runtime=runtime)
        if classifier is None:
            save_model(classifier_dir, artefacts["classifier"])  # safetensors: written as CPU tensors
        report["run"] = str(run_dir)
        report["classifier"]["judge"] = str(classifier_dir)
        report["data"] = {"source": source or "as in run.json", "split_seed": config.seed,
                          "val_fraction": config.val_fraction}
        if extractor is not None:
            report["fid"]["weights"] = fid_source
        if artefacts["neighbours"]:
            nearest_neighbour_grid(artefacts["neighbours"], figure)
            report["memorisation_figure"] = str(figure)
        write_json(out, report)
        return report


def _load_yardsticks(variants: Sequence[int], device: torch.device | None = None) -> tuple[list, str]:
    """The ImageNet networks to measure with (on ``device``), or none and why."""
    if not variants:
        return [], "turned off (--imagenet none)"
    from .efficientnet import ImageNetYardstick

    try:
        return [ImageNetYardstick.load(int(variant), device=device) for variant in variants], ""
    except LatentflowsError as error:
        return [], str(error)
