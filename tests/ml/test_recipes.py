"""A short run of each crop recipe beats the prototype's fastai recipe on a shifted synthetic
site, the way the hard proxy's "tighter collimation" family hurts fastai on real films.

The training set carries a shortcut the real training folder carries too (bench.acquisition:
normal films have more black border than pneumonia films): every synthetic normal is framed
in black (ml.shift.reframe, frame 0.2); pneumonias are not. The site collimates tighter: every
image, of both classes, is its central 60% scaled back up, so no normal there has a frame.
fastai's recipe (flip, a small warp and zoom, lighting) always shows the frame, so the frame is
what it learns, and at the site it ranks the classes backwards; a random resized crop often
cuts the frame away, so the crop recipes learn the consolidations, which the site still shows.

Measured while writing this test (64 px from scratch, 80 images a class, 8 epochs at 1e-3,
2-core Intel Xeon), site AUC with the training images drawn from seeds 0 / 1 / 2 (the test
uses 0): fastai 0.071 / 0.57 / 0.343, crops 0.784 / 0.94 / 0.969, robust 0.763 / 0.81 / 0.811;
seed 0 on a 2-core AMD EPYC without AVX-512 (CI, 2026-12-07): fastai 0.026, crops 0.992,
robust 0.686 (other kernels, another trajectory). Hence the bounds: fastai below 0.65, a crop
recipe at least 0.65 and 0.2 above fastai. The
thresholds travel for none of them (specificity near 0 at the stored one), as on real films:
a threshold cannot undo a shortcut.
"""

from __future__ import annotations

import numpy as np
import pytest

from ml import metrics
from ml.inference import Predictor
from ml.shift import reframe
from ml.train import main, parse_config
from tests.synthetic import write_dataset

pytestmark = pytest.mark.slow  # trains three models (~2 minutes on two cores)

SIZE, FRAME = 64, 0.2


def _shortcut(image, label: str):
    return reframe(image, frame=FRAME) if label == "NORMAL" else image


def _site(image, label: str):
    return reframe(_shortcut(image, label), crop=1 - 2 * FRAME)  # tighter: no frame left


@pytest.fixture(scope="module")
def site_auc(tmp_path_factory) -> dict[str, float]:
    tmp = tmp_path_factory.mktemp("recipes")
    write_dataset(tmp / "train", 80, size=SIZE, seed=0, opacity=0.5, transform=_shortcut)
    site = write_dataset(tmp / "site", 30, size=SIZE, seed=9, opacity=0.5, transform=_site)
    y = np.array([int(label == "PNEUMONIA") for _, label in site])
    auc = {}
    for recipe in ("fastai", "crops", "robust"):
        out = main(parse_config([
            "--data", str(tmp / "train"), "--out", str(tmp / f"{recipe}.pt"), "--recipe", recipe,
            "--img-size", str(SIZE), "--epochs", "8", "--lr", "1e-3", "--print-freq", "0",
        ]))  # fmt: skip
        predictor = Predictor.from_checkpoint(out)
        assert predictor.meta.metrics["val_auc"] >= 0.95  # every recipe learns its own data
        scores = [p.probability for p in predictor.predict_batch([str(p) for p, _ in site])]
        auc[recipe] = metrics.roc_auc(y, scores)
    print(f"site AUC: {auc}")  # shown with -s, and beside a failure
    return auc


def test_fastai_learns_the_frame_and_fails_the_shifted_site(site_auc):
    assert site_auc["fastai"] < 0.65


@pytest.mark.parametrize("recipe", ["crops", "robust"])
def test_a_crop_recipe_learns_the_consolidations_and_beats_fastai_there(site_auc, recipe):
    assert site_auc[recipe] >= 0.65
    assert site_auc[recipe] - site_auc["fastai"] >= 0.2
