"""``medlens pretrain --method simclr``: the loss, a round trip into --init-from, resume, the probe head."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_transfer import _config, _npz

from medlens.engine.checkpoint import load_card, load_model, load_state
from medlens.engine.pretrain import PretrainSettings, linear_probe, nt_xent, pretrain
from medlens.engine.run_folder import RunFolder
from medlens.engine.train import train


def _settings(spec, **options):
    return PretrainSettings(spec=spec, model="resnet_compact", model_kwargs={"width": 8}, epochs=2, batch_size=16,
                            **options)


def test_nt_xent_prefers_matching_views():
    torch.manual_seed(0)
    z = torch.randn(8, 16)
    matched, shuffled = nt_xent(z, z + 0.01 * torch.randn(8, 16), 0.2), nt_xent(z, z.roll(3, 0), 0.2)
    assert float(matched) < float(shuffled)
    assert float(nt_xent(z, z, 0.2)) >= 0


def test_pretrain_round_trip_into_init_from(tmp_path):
    spec = _npz(tmp_path / "two.npz", classes=2, n=40)
    extra = _npz(tmp_path / "extra.npz", classes=3, n=16, seed=5)
    result = pretrain(_settings(spec, unlabeled=extra), tmp_path / "pre", say=lambda m: None)
    folder = RunFolder(tmp_path / "pre")
    assert len(folder.pretrain_history.read_text().splitlines()) == 1 + 2
    assert set(result["probe"]) == {"auc", "acc"} and 0 <= result["probe"]["auc"] <= 1
    card = load_card(folder.best)
    assert card.metrics["linear_probe"]["val"] == result["probe"] and card.dataset["images"] == 40 + 16 + 8 + 8
    # The checkpoint's head is the probe: its probabilities are the probe's on the validation split.
    from medlens.data.augment import Normalisation
    from medlens.data.source import resolve
    from medlens.inference import InferenceModel

    model, card = load_model(folder.best)
    source = resolve(spec)
    _, estimator = linear_probe(model, source, Normalisation.from_dict(card.normalisation))
    with torch.no_grad():
        ours = InferenceModel.from_card(model, card)(torch.from_numpy(source.splits["val"].images)).numpy()
    np.testing.assert_allclose(ours, estimator.predict_proba(
        _features_of(model, source, card)), atol=1e-4)
    # --init-from accepts the folder: its encoder is where the classifier starts.
    run = train(_config(spec, model={"init_from": str(folder.path)}, optim={"freeze_epochs": 1},
                        train={"epochs": 1}), tmp_path / "run").run_dir
    encoder, started = load_state(folder.best), load_state(run / "checkpoints" / "last.safetensors")
    for key in [k for k in encoder if not k.startswith("fc.")]:
        torch.testing.assert_close(started[key], encoder[key], msg=key)


def _features_of(model, source, card):
    from medlens.data.augment import Normalisation
    from medlens.engine.pretrain import _features

    return _features(model, source.splits["val"].images, Normalisation.from_dict(card.normalisation))


def test_pretrain_resumes_to_the_same_weights(tmp_path):
    spec = _npz(tmp_path / "two.npz", classes=2, n=32)
    pretrain(_settings(spec), tmp_path / "straight", say=lambda m: None)

    def interrupt(message):
        if message.startswith("pretrain epoch 1"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(_settings(spec), tmp_path / "cut", say=interrupt)
    assert not RunFolder(tmp_path / "cut").best.is_file()
    with pytest.raises(FileExistsError, match="--resume"):
        pretrain(_settings(spec), tmp_path / "cut", say=lambda m: None)
    pretrain(None, tmp_path / "cut", resume=True, say=lambda m: None)
    straight, resumed = load_state(RunFolder(tmp_path / "straight").best), load_state(RunFolder(tmp_path / "cut").best)
    for key, value in straight.items():
        torch.testing.assert_close(resumed[key], value, msg=key)


def test_pretrain_settings_and_cli(tmp_path, capsys):
    with pytest.raises(ValueError, match="--method 'mae' is not valid; valid: simclr"):
        PretrainSettings(spec="x", method="mae")
    with pytest.raises(ValueError, match="batch_size must be an integer >= 2"):
        PretrainSettings(spec="x", batch_size=1)
    from medlens.cli import main

    spec = _npz(tmp_path / "two.npz", classes=2, n=24)
    assert main(["pretrain", spec, "--out", str(tmp_path / "p"), "--epochs", "1", "--batch-size", "8",
                 "--model-arg", "width=8"]) == 0
    assert "linear probe val AUC" in capsys.readouterr().out
