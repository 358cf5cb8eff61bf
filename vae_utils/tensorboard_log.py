"""Live training curves: each evaluation of a run as TensorBoard events in ``<run_dir>/tb`` (the
history's scalars against training samples seen, the step size, and image grids at log-spaced
evaluations). ``history.csv`` stays the record. Events are flushed at each evaluation; a resumed
run starts its file with a purge step so that no step shows twice (docs/live.md says how).
``tensorboard`` is imported when the first event is written, so ``import vae_utils`` stays fast.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vae_utils.data import image_grid

if TYPE_CHECKING:
    from vae_utils.data import Data
    from vae_utils.model import VAE

#: history column -> TensorBoard scalar tag. Tags share a section per quantity (elbo/, recon/, kl/),
#: so that train, test and minibatch sit side by side. A NaN (``test_log_px`` when not computed) is
#: not written.
SCALAR_TAGS = {
    "train_elbo": "elbo/train",
    "test_elbo": "elbo/test",
    "minibatch_elbo": "elbo/minibatch",
    "train_recon": "recon/train",
    "test_recon": "recon/test",
    "train_kl": "kl/train",
    "test_kl": "kl/test",
    "test_log_px": "log_px/test",
    "train_log_px_hmc": "log_px_hmc/train",
    "test_log_px_hmc": "log_px_hmc/test",
    "train_log_px_hmc_is": "log_px_hmc_is/train",
    "test_log_px_hmc_is": "log_px_hmc_is/test",
}
LR_TAG = "lr"  # the step size of the epoch just evaluated (Burda's schedule changes it)
RECONSTRUCTIONS_TAG = "images/reconstructions"  # N_IMAGES test images (top row), their reconstructions
PRIOR_SAMPLES_TAG = "images/prior_samples"  # decoder means of 2 x N_IMAGES fixed draws z ~ N(0, I)
#: Images are written at the evaluations where the samples seen first reach 10^(j/2), and at the
#: last: a handful per run (TensorBoard shows 10 per tag by default).
IMAGES_PER_DECADE = 2
N_IMAGES = 8
PRIOR_SEED_OFFSET = 2  # the prior draws use seed + 2 (seed + 1 is the evaluation noise)


def event_files(log_dir: Path) -> list[Path]:
    """The TensorBoard event files in ``log_dir``, in the order readers take them (by name)."""
    return sorted(log_dir.glob("events.out.tfevents.*")) if log_dir.is_dir() else []


def _wait_past(files: Sequence[Path]) -> None:
    """Sleep until the clock has passed the second in the newest of ``files``' names.

    An event file's name starts with the second it was opened in, then host, pid and a counter
    that counts in decimal ("...9" sorts after "...10"): a resume within the same second as the
    interrupted writer (seen in tests) could sort its file first and its purge would then come
    before the events it should drop. At most a second, and only in that case."""
    parts = [f.name.split(".") for f in files]  # events.out.tfevents.<second>.<host>.<pid>.<counter>
    stamps = [int(p[3]) for p in parts if len(p) > 3 and p[3].isdigit()]
    if stamps:
        delay = max(stamps) + 1 - time.time()
        if delay > 0:
            time.sleep(delay + 0.01)


def image_grids(model: VAE, data: Data, seed: int) -> dict[str, np.ndarray]:
    """The two grids of :data:`RECONSTRUCTIONS_TAG` and :data:`PRIOR_SAMPLES_TAG`: the first
    :data:`N_IMAGES` test images above their reconstructions (decoder means at z = mu(x)), and the
    decoder means of 2 x N_IMAGES prior draws, the same draws at every evaluation (drawn from their
    own generator, seeded with ``seed`` + 2: the training's random numbers are not touched)."""
    x = data.x_test[:N_IMAGES]
    z = torch.randn(
        2 * N_IMAGES, model.latent_dim, generator=torch.Generator().manual_seed(seed + PRIOR_SEED_OFFSET)
    ).to(x.device, x.dtype)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        reconstructions = model.reconstruct(x)
        samples = model.decode(z)
    model.train(was_training)
    pairs = image_grid(torch.cat([x, reconstructions]), data.image_shape, nrow=len(x))
    prior = image_grid(samples, data.image_shape, nrow=N_IMAGES)
    return {RECONSTRUCTIONS_TAG: pairs.numpy(), PRIOR_SAMPLES_TAG: prior.numpy()}


class TensorBoardLog:
    """The TensorBoard writer of one run: ``log_dir`` (``<run_dir>/tb``), opened at the first
    :meth:`write` (so a run that never evaluates leaves no folder) and closed by :meth:`close` or
    at the end of a ``with`` block. With ``enabled=False`` every call does nothing.

    A write that fails on the filesystem (``OSError``: a full disk...) warns once and switches the
    log off: training goes on, ``history.csv`` being the record."""

    def __init__(self, log_dir: Path, enabled: bool = True) -> None:
        self.log_dir = Path(log_dir)
        self.enabled = enabled
        self._writer: Any = None  # torch.utils.tensorboard.SummaryWriter, imported when first used

    def write(
        self,
        row: Mapping[str, Any],
        lr: float,
        previous_samples: int,
        images: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Write one evaluation: the scalars of ``row`` (a history row) and ``lr`` at step
        ``row["samples"]``, and ``images`` (tag -> (H, W) array in [0, 1]), then flush.

        ``previous_samples``: the samples of the evaluation before this one (0 for the first). The
        first write of a resumed run purges from ``previous_samples + 1`` on, the events that an
        interrupted process wrote after the checkpoint it resumes from."""
        if not self.enabled:
            return
        try:
            writer = self._open(previous_samples)
            step = int(row["samples"])
            for column, tag in SCALAR_TAGS.items():
                value = float(row.get(column, math.nan))
                if not math.isnan(value):  # NaN: not computed (test_log_px without eval_iw_samples)
                    writer.add_scalar(tag, value, step)
            writer.add_scalar(LR_TAG, float(lr), step)
            for tag, image in (images or {}).items():
                writer.add_image(tag, image, step, dataformats="HW")
            writer.flush()
        except OSError as error:
            warnings.warn(
                f"TensorBoard events in {self.log_dir} could not be written ({error}): they are "
                "switched off for the rest of this run, which goes on (history.csv is its record)",
                stacklevel=2,
            )
            self.close()
            self.enabled = False

    def _open(self, previous_samples: int) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            earlier = event_files(self.log_dir)
            if earlier:
                _wait_past(earlier)
            # Every file starts with its purge step (a SessionLog START event), the first one too:
            # TensorBoard's server (its Python loader) takes a run's first START for its start,
            # not a restart, so a resume's START purges only when the first file has one.
            self._writer = SummaryWriter(str(self.log_dir), purge_step=previous_samples + 1)
        return self._writer

    def close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            try:
                writer.close()
            except OSError:  # already reported by write(), or nothing left to lose
                pass

    def __enter__(self) -> TensorBoardLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
