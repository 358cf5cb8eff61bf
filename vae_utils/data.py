"""Datasets in memory: float tensors in [0, 1] of shape (N, D), batched by slicing a shuffled index.
MNIST and Fashion-MNIST from their IDX files (downloaded by torchvision when missing), Frey Face
through ``scipy.io.loadmat``, every file checked against its MD5; docs/data.md says where the files
are looked for (``VAE_DATA_DIR``). Also the grid that shows flat images side by side.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vae_utils.config import (
    BINARIZATIONS,
    DATASETS,
    DTYPES,
    PROJECT_ROOT,
    TrainConfig,
    check_choice,
    resolve_path,
)

#: Fixed seeds, independent of the training seed, so that every run sees the same data.
SPLIT_SEED = 0  # Frey Face's train/test split
STATIC_SEED = 1  # the one binarisation of ``binarize="static"``
EVAL_SEED = 2  # the fixed binarisation used to *evaluate* a ``binarize="dynamic"`` run
FREY_TEST_SIZE = 200
TRAIN_EVAL_SIZE = 10_000  # training images on which the end-of-epoch train ELBO is evaluated

_IDX = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

#: The files each dataset needs, relative to the data root (torchvision's layout), with their MD5
#: checksums. The IDX files are read directly: importing torchvision imports torch's compiler too,
#: 1.1 s of every process (docs/speed.md); torchvision is imported only to download missing files,
#: and their ``.gz`` archives are only used then.
EXPECTED_FILES = {
    "mnist": dict(
        zip(
            (f"MNIST/raw/{f}" for f in _IDX),
            (
                "6bbc9ace898e44ae57da46a324031adb",
                "a25bea736e30d166cdddb491f175f624",
                "2646ac647ad5339dbf082846283269ea",
                "27ae3e4e09519cfbb04c329615203637",
            ),
            strict=True,
        )
    ),
    "fashion_mnist": dict(
        zip(
            (f"FashionMNIST/raw/{f}" for f in _IDX),
            (
                "f4a8712d7a061bf5bd6d2ca38dc4d50a",
                "9018921c3c673c538a1fc5bad174d6f9",
                "8181f5470baa50b63fa0f6fddb340f0a",
                "15d484375f8d13e6eb1aabb0c3f46965",
            ),
            strict=True,
        )
    ),
    "frey_face": {"FreyFace/frey_rawface.mat": "5aeb024d42b8a6091f30e5eb18c8a48d"},
}

FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
CLASSES = {"mnist": tuple(str(d) for d in range(10)), "fashion_mnist": FASHION_CLASSES, "frey_face": None}
IMAGE_SHAPES = {"mnist": (28, 28), "fashion_mnist": (28, 28), "frey_face": (28, 20)}


class DatasetError(OSError):
    """A dataset could not be read: missing files, or files that fail their checksum."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The dataset's files are not in the data folder and could not be downloaded."""


class DatasetCorruptError(DatasetError):
    """A dataset file is present but truncated or corrupt (its MD5 does not match)."""


@dataclass
class Data:
    """One dataset in memory. ``x_*`` are (N, D) floats in [0, 1] (float32 unless a run asks for
    float64); ``y_*`` are class labels or None.

    ``x_test`` and ``x_train_eval`` are what the ELBO is *evaluated* on: for ``binarize="dynamic"``
    they are binarised once with :data:`EVAL_SEED`, while ``x_train`` stays grey and
    :func:`batches` resamples it every time a batch is drawn.

    Loaded with ``train=False`` (the analysis notebooks), only the test split is in memory:
    ``x_train``, ``y_train`` and ``x_train_eval`` are None.
    """

    name: str
    x_train: torch.Tensor | None
    y_train: torch.Tensor | None
    x_test: torch.Tensor
    y_test: torch.Tensor | None
    x_train_eval: torch.Tensor | None
    image_shape: tuple
    classes: tuple | None
    binarize: str = "none"

    @property
    def dim(self) -> int:
        return self.x_test.shape[1]


def data_root(data_dir: str | Path | None = None) -> Path:
    """The folder datasets are read from: ``data_dir``, else ``$VAE_DATA_DIR``, else ``<repo>/data``."""
    if data_dir is not None:
        return resolve_path(data_dir)
    if os.environ.get("VAE_DATA_DIR"):
        return resolve_path(os.environ["VAE_DATA_DIR"])
    return PROJECT_ROOT / "data"


def md5sum(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _where_hint() -> str:
    return (
        "Point VAE_DATA_DIR (or the data_dir argument) at a folder in torchvision's layout "
        f"(currently VAE_DATA_DIR={os.environ.get('VAE_DATA_DIR', '<unset>')!r})."
    )


#: The datasets torchvision can download, by the name of their class in ``torchvision.datasets``.
TORCHVISION_CLASSES = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}


def _torchvision_class(name: str) -> Any:  # a torchvision dataset class (untyped)
    import torchvision

    return getattr(torchvision.datasets, TORCHVISION_CLASSES[name])


def ensure_files(name: str, root: Path, download: bool = True) -> None:
    """Check that ``name``'s files are under ``root`` with the right MD5; download them if allowed.

    Raises :class:`DatasetNotFoundError` naming the dataset, the folder, the files and
    ``VAE_DATA_DIR`` when files are missing and cannot be fetched (Frey Face never is: torchvision
    has no downloader for it), and :class:`DatasetCorruptError` when a file's checksum is wrong.
    """
    expected = EXPECTED_FILES[name]
    missing = [f for f in expected if not (root / f).is_file()]
    if name not in TORCHVISION_CLASSES:
        reason = (
            "torchvision cannot download it: get frey_rawface.mat from https://cs.nyu.edu/~roweis/data.html"
        )
    elif not download:
        reason = "download disabled"
    elif missing:
        reason = "torchvision's download left them missing"
        try:
            for train in (True, False):
                _torchvision_class(name)(str(root), train=train, download=True)
        except Exception as error:  # network, permissions, a read-only root...
            lines = str(error).strip().splitlines()
            reason = f"download failed: {type(error).__name__}" + (f": {lines[-1]}" if lines else "")
        missing = [f for f in expected if not (root / f).is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"dataset {name!r} not found in {root}: missing {', '.join(missing)} "
            f"({reason}). Expected files: {', '.join(expected)}. {_where_hint()}"
        )
    for f, md5 in expected.items():
        actual = md5sum(root / f)
        if actual != md5:
            raise DatasetCorruptError(
                f"dataset {name!r}: {root / f} is truncated or corrupt (MD5 {actual}, expected "
                f"{md5}). Replace it with a good copy, or delete it to download it again. "
                f"{_where_hint()}"
            )


_Split = tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor, torch.Tensor | None]


def _read(name: str, root: Path, train: bool = True) -> _Split:
    """Raw images (N, H, W) uint8 and labels (N,) or None, for train and test; with ``train=False``
    the training split is not read and its images and labels are None."""
    if name == "frey_face":
        from scipy.io import loadmat

        faces = torch.from_numpy(loadmat(root / "FreyFace/frey_rawface.mat")["ff"].T.copy())
        faces = faces.reshape(-1, *IMAGE_SHAPES[name])
        # The split is a fixed shuffle of all faces, so all of them are read either way (1.1 MB).
        order = torch.randperm(len(faces), generator=torch.Generator().manual_seed(SPLIT_SEED))
        test, rest = order[:FREY_TEST_SIZE], order[FREY_TEST_SIZE:]
        return (faces[rest] if train else None), None, faces[test], None
    files = [_read_idx(root / f) for f in EXPECTED_FILES[name] if train or "t10k" in f]
    if not train:
        return None, None, files[0], files[1].long()
    return files[0], files[1].long(), files[2], files[3].long()


def _read_idx(path: Path) -> torch.Tensor:
    """An IDX file of unsigned bytes (LeCun's MNIST format: two zero bytes, the type 0x08, the number
    of dimensions, each dimension's size as a big-endian uint32, then the data) as a uint8 tensor."""
    raw = np.fromfile(path, dtype=np.uint8)  # read once, into a writable array
    ndim = int(raw[3]) if len(raw) > 3 else 0
    sizes = raw[4 : 4 + 4 * ndim].tobytes()
    shape = tuple(int.from_bytes(sizes[4 * i : 4 * i + 4], "big") for i in range(ndim))
    if raw[:3].tobytes() != b"\x00\x00\x08" or len(raw) != 4 + 4 * ndim + math.prod(shape):
        raise DatasetCorruptError(f"{path} is not an IDX file of unsigned bytes. {_where_hint()}")
    return torch.from_numpy(raw[4 + 4 * ndim :]).reshape(shape)


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    *,
    binarize: str = "none",
    train_subset: int | None = None,
    test_subset: int | None = None,
    device: str | torch.device = "cpu",
    download: bool = True,
    train: bool = True,
    dtype: str = "float32",
) -> Data:
    """Load ``"mnist"``, ``"fashion_mnist"`` or ``"frey_face"`` into memory on ``device``.

    Frey Face (1965 faces of 28x20) has no official split: its images are shuffled by
    ``torch.randperm`` under seed :data:`SPLIT_SEED` = 0, the first 200 form the test set and the
    other 1765 the training set.

    ``dtype`` (``"float32"`` or ``"float64"``) is the images' floating-point type.
    ``train_subset`` / ``test_subset`` keep the first n images. ``binarize`` is ``"none"``,
    ``"static"`` (train and test binarised once, seed :data:`STATIC_SEED`) or ``"dynamic"`` (see
    :class:`Data`).

    ``train=False`` reads and keeps only the test split (for analysing a trained model): the
    :class:`Data` then has ``x_train``, ``y_train`` and ``x_train_eval`` None, ``train_subset`` is
    ignored, and ``x_test`` holds exactly the images a full load gives (same split, same
    binarisation seeds).
    """
    check_choice("dataset", name, DATASETS)
    check_choice("binarize", binarize, BINARIZATIONS)
    check_choice("dtype", dtype, DTYPES)
    root = data_root(data_dir)
    ensure_files(name, root, download)
    x_train, y_train, x_test, y_test = _read(name, root, train)

    def scaled(x: torch.Tensor) -> torch.Tensor:  # (N, H, W) uint8 -> (N, D) floats in [0, 1]
        return x.reshape(len(x), -1).to(device, getattr(torch, dtype)).div_(255.0)  # one copy, not two

    x_train, x_test = (None if x_train is None else scaled(x_train)), scaled(x_test)
    x_train_eval = None if x_train is None else x_train[:TRAIN_EVAL_SIZE]
    # Each split is binarised whole, by a generator of its own (split 0 train, 1 test), before any
    # subset is taken: a quick run evaluates on the same binary images as a full one, and a
    # test-only load gets the same test images as a full one.
    if binarize == "static":
        x_test = _binarize(x_test, STATIC_SEED, 1)
        if x_train is not None:
            x_train = _binarize(x_train, STATIC_SEED, 0)
            x_train_eval = x_train[:TRAIN_EVAL_SIZE]
    elif binarize == "dynamic":
        x_test = _binarize(x_test, EVAL_SEED, 1)
        if x_train_eval is not None:
            x_train_eval = _binarize(x_train_eval, EVAL_SEED, 0)
    x_train, x_train_eval, y_train = (
        None if t is None else t[:train_subset] for t in (x_train, x_train_eval, y_train)
    )
    x_test, y_test = x_test[:test_subset], (None if y_test is None else y_test[:test_subset])
    y_train, y_test = (None if t is None else t.to(device) for t in (y_train, y_test))
    return Data(
        name, x_train, y_train, x_test, y_test, x_train_eval, IMAGE_SHAPES[name], CLASSES[name], binarize
    )


def load_config_data(config: TrainConfig, device: str | torch.device = "cpu", train: bool = True) -> Data:
    """The data a run trains and is evaluated on: ``config``'s dataset, data_dir, binarisation and
    subsets, on ``device``. ``train=False``: only its test split (see :func:`load_dataset`)."""
    return load_dataset(
        config.dataset,
        config.data_dir,
        binarize=config.binarize,
        train_subset=config.train_subset,
        test_subset=config.test_subset,
        device=device,
        train=train,
        dtype=config.dtype,
    )


def _binarize(x: torch.Tensor, seed: int, split: int) -> torch.Tensor:
    """One fixed Bernoulli(x) draw; ``split`` (0 train, 1 test) gives each split its own stream."""
    return torch.bernoulli(x, generator=torch.Generator(x.device).manual_seed(seed + 1000 * split))


def batches(
    x: torch.Tensor, batch_size: int, generator: torch.Generator, dynamic_binarize: bool = False
) -> Iterator[torch.Tensor]:
    """Minibatches of ``x`` in a fresh random order: slices of one shuffled index.

    With ``dynamic_binarize`` each batch is resampled as Bernoulli(x) on the way out (Burda et al.'s
    dynamic binarisation). The last batch is smaller when ``batch_size`` does not divide N.
    """
    order = torch.randperm(len(x), generator=generator, device=x.device)
    for start in range(0, len(x), batch_size):
        batch = x.index_select(0, order[start : start + batch_size])  # 6x faster than x[index]
        yield torch.bernoulli(batch, generator=generator) if dynamic_binarize else batch


def image_grid(
    images: torch.Tensor, image_shape: Sequence[int], nrow: int = 10, padding: int = 2, pad_value: float = 0.5
) -> torch.Tensor:
    """Tile flat images (N, D) into one (H', W') float32 grey image on the CPU, ``nrow`` images per row
    in reading order, clipped to [0, 1]: H' = rows (H + padding) + padding, likewise W' with
    min(nrow, N) columns, cells left over and borders ``pad_value``: the layout of torchvision's
    ``make_grid``."""
    h, w = image_shape
    images = images.detach().to("cpu", torch.float32).reshape(-1, h, w).clamp(0, 1)
    ncol = min(nrow, len(images))
    rows = math.ceil(len(images) / ncol)
    cells = torch.full((rows * ncol, h + padding, w + padding), pad_value)
    cells[: len(images), padding:, padding:] = images
    grid = cells.reshape(rows, ncol, h + padding, w + padding).transpose(1, 2)
    grid = grid.reshape(rows * (h + padding), ncol * (w + padding))
    return torch.nn.functional.pad(grid, (0, padding, 0, padding), value=pad_value)
