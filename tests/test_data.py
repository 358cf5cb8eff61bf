"""data.py: where datasets are looked for, the errors for missing and corrupt files, read-only roots,
the contents of MNIST / Fashion-MNIST / Frey Face, binarisation, minibatches and image grids.

Every test that needs a broken or read-only data folder builds it under ``tmp_path`` from copies;
nothing is ever written to the shared data folder, and the network is never used: sockets are
blocked for the whole module and torchvision's downloader is replaced where a download is tried.
"""

import os
import shutil
import socket
import stat
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from urllib.error import URLError

import pytest
import torch

import vae_utils.data as data_module
from vae_utils.config import PROJECT_ROOT
from vae_utils.data import (
    EXPECTED_FILES,
    FREY_TEST_SIZE,
    SPLIT_SEED,
    DatasetCorruptError,
    DatasetNotFoundError,
    _read_idx,
    batches,
    data_root,
    image_grid,
    load_dataset,
)

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a network connection fails loudly (and is recorded)."""
    attempts = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError(f"network disabled in tests (tried {address})")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    yield attempts
    assert not attempts, f"a test tried to reach the network: {attempts}"


def copy_files(src_root: Path, dst_root: Path, name: str, link_from: Path | None = None, skip=()) -> Path:
    """Put ``name``'s expected files under ``dst_root``: copied from ``src_root``, or symlinked to
    the copies under ``link_from`` (a tmp folder, never the shared one). Returns dst_root."""
    for rel in EXPECTED_FILES[name]:
        if rel in skip:
            continue
        dst = dst_root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if link_from is not None:
            dst.symlink_to(link_from / rel)
        else:
            shutil.copyfile(src_root / rel, dst)
    return dst_root


@pytest.fixture(scope="module")
def pristine(shared_data, tmp_path_factory) -> Path:
    """One private copy of the MNIST and Frey Face files in a temporary folder, for tests to link
    to or copy from instead of touching the shared folder."""
    root = tmp_path_factory.mktemp("pristine")
    copy_files(shared_data, root, "mnist")
    copy_files(shared_data, root, "frey_face")
    return root


def snapshot(root: Path) -> dict:
    """Every path under root with its size and modification time (what a write would change)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns, stat.S_IMODE(st.st_mode))
    return out


_WATCH: list = []  # (root, events) pairs being watched; the hook is installed once per process
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_WRITE_EVENTS = {
    "os.mkdir",
    "os.rename",
    "os.replace",
    "os.remove",
    "os.rmdir",
    "os.chmod",
    "os.truncate",
    "os.symlink",
    "os.link",
    "os.utime",
    "shutil.copyfile",
    "shutil.move",
    "shutil.rmtree",
    "os.chown",
}


def _audit(event, args):
    if not _WATCH or not args:
        return
    if event == "open":
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & _WRITE_FLAGS
        )
        if not writing:
            return
        paths = [path]
    elif event in _WRITE_EVENTS:
        paths = [a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
    else:
        return
    for root, events in _WATCH:
        for p in paths:
            if isinstance(p, (str, os.PathLike)) and os.path.abspath(p).startswith(str(root)):
                events.append((event, str(p)))


@contextmanager
def no_writes_under(root: Path):
    """Fail if Python code opens a file for writing, or makes/renames/removes/chmods anything,
    under ``root`` (a Python audit hook: needed because these tests may run as root, for whom
    chmod-ing a tree read-only does not stop writes). C-level writes are caught by comparing a
    snapshot of the tree before and after."""
    if not getattr(sys, "_vae_utils_audit_installed", False):
        sys.addaudithook(_audit)
        sys._vae_utils_audit_installed = True
    events: list = []
    before = snapshot(root)
    _WATCH.append((Path(root).resolve(), events))
    try:
        yield
    finally:
        _WATCH.pop()
    assert not events, f"writes under {root}: {events}"
    assert snapshot(root) == before


def make_read_only(root: Path):
    for dirpath, _dirnames, filenames in os.walk(root):
        for n in filenames:
            os.chmod(Path(dirpath) / n, 0o444)
        os.chmod(dirpath, 0o555)


def make_writable(root: Path):
    for dirpath, _dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for n in filenames:
            os.chmod(Path(dirpath) / n, 0o644)


def _assert_not_found_message(message: str, name: str, root: Path):
    assert repr(name) in message
    assert str(root) in message
    for rel in EXPECTED_FILES[name]:
        assert rel in message
    assert "VAE_DATA_DIR" in message
    assert "Traceback" not in message


# ----------------------------------------------------------------------------- missing files


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "frey_face"])
def test_missing_files_without_download(tmp_path, name):
    """download=False on an empty folder: DatasetNotFoundError (a FileNotFoundError) naming the
    dataset, the folder searched, every expected file and VAE_DATA_DIR; nothing is created."""
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(name, root, download=False)
    assert isinstance(info.value, FileNotFoundError)
    _assert_not_found_message(str(info.value), name, root)
    assert list(root.iterdir()) == []


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_missing_files_when_download_fails(tmp_path, monkeypatch, name):
    """download=True with the network down (torchvision's download_and_extract_archive raising
    URLError for every mirror): torchvision's download is really attempted, and the failure is one
    clear DatasetNotFoundError naming the dataset, folder, files and VAE_DATA_DIR with a one-line
    reason mentioning the URLError, not a network traceback."""
    import torchvision.datasets.mnist as tv_mnist

    tried = []

    def offline(url, *args, **kwargs):
        tried.append(url)
        raise URLError("offline (test)")

    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", offline)
    root = tmp_path / "data"
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(name, root, download=True)
    assert tried and all(u.endswith(".gz") for u in tried)
    message = str(info.value)
    _assert_not_found_message(message, name, root)
    assert "download failed" in message and "offline (test)" in message
    assert "\n" not in message


def test_frey_face_is_never_downloaded(tmp_path):
    """torchvision has no Frey Face downloader: with download=True the error says so and where to
    get the file, and names dataset, folder, file and VAE_DATA_DIR."""
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("frey_face", tmp_path, download=True)
    message = str(info.value)
    _assert_not_found_message(message, "frey_face", tmp_path)
    assert "frey_rawface.mat" in message and "roweis" in message.lower()


def test_partly_missing_files_are_listed(tmp_path, pristine):
    """With only the label files present the error lists exactly the two missing image files as
    missing (and still all four as expected)."""
    images = [f for f in EXPECTED_FILES["mnist"] if "images" in f]
    copy_files(pristine, tmp_path, "mnist", link_from=pristine, skip=images)
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mnist", tmp_path, download=False)
    message = str(info.value)
    missing_part = message.split("missing ", 1)[1].split(" (", 1)[0]
    assert sorted(missing_part.split(", ")) == sorted(images)
    _assert_not_found_message(message, "mnist", tmp_path)


def test_download_error_without_message_still_gives_clear_error(tmp_path, monkeypatch):
    """A download that fails with an exception whose message is empty (ConnectionResetError(),
    TimeoutError(), a bare RuntimeError()) must still end in DatasetNotFoundError, not in an
    IndexError raised while formatting the reason."""
    import torchvision

    def fail(self):
        raise ConnectionResetError()

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", fail)
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mnist", tmp_path, download=True)
    assert "ConnectionResetError" in str(info.value)


# ----------------------------------------------------------------------------- corrupt files


def _corrupt(path: Path, how: str):
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "name, rel, how",
    [
        ("mnist", "MNIST/raw/train-labels-idx1-ubyte", "truncate"),
        ("mnist", "MNIST/raw/t10k-images-idx3-ubyte", "flip"),
        ("frey_face", "FreyFace/frey_rawface.mat", "truncate"),
        ("frey_face", "FreyFace/frey_rawface.mat", "flip"),
    ],
)
@pytest.mark.parametrize("download", [False, True])
def test_corrupt_file_is_reported(tmp_path, pristine, name, rel, how, download):
    """A truncated file or one with a single flipped bit (which the idx/.mat parsers would read
    as silently wrong data) raises DatasetCorruptError naming the dataset and the file and
    mentioning the MD5 check; with download=True no download is tried over it and the file is
    left as it was."""
    copy_files(pristine, tmp_path, name, link_from=pristine, skip=[rel])
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(pristine / rel, tmp_path / rel)
    _corrupt(tmp_path / rel, how)
    before = snapshot(tmp_path)
    with pytest.raises(DatasetCorruptError) as info:
        load_dataset(name, tmp_path, download=download)
    message = str(info.value)
    assert isinstance(info.value, OSError) and not isinstance(info.value, FileNotFoundError)
    assert repr(name) in message and str(tmp_path / rel) in message and "MD5" in message
    assert EXPECTED_FILES[name][rel] in message  # the expected checksum
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- read-only roots


@pytest.mark.parametrize("name, dim", [("mnist", 784), ("frey_face", 560)])
def test_read_only_root_works_and_is_not_written(tmp_path, pristine, name, dim):
    """A data root whose files and folders are read-only (as ../shared/data is in CI) loads with
    the default download=True, and nothing under it is created, opened for writing or changed
    (an audit hook watches Python-level writes; a before/after snapshot catches the rest)."""
    root = copy_files(pristine, tmp_path / "ro", name)
    make_read_only(root)
    try:
        with no_writes_under(root):
            data = load_dataset(name, root, train_subset=100, test_subset=50)
    finally:
        make_writable(root)
    assert data.x_train.shape == (100, dim) and data.x_test.shape == (50, dim)


def test_write_watch_detects_writes(tmp_path):
    """The write detector used above is not vacuous: creating a file under the watched root
    fails the check."""
    with pytest.raises(AssertionError, match="writes under"):
        with no_writes_under(tmp_path):
            (tmp_path / "new.txt").write_text("x")


# ----------------------------------------------------------------------------- where data is looked for


def test_lookup_order_argument_then_env_then_repo(tmp_path, monkeypatch):
    """data_root: an explicit argument beats VAE_DATA_DIR, which beats <repo>/data; an empty
    VAE_DATA_DIR counts as unset; relative paths resolve against the project root."""
    monkeypatch.setenv("VAE_DATA_DIR", str(tmp_path / "env"))
    assert data_root(tmp_path / "arg") == tmp_path / "arg"
    assert data_root(str(tmp_path / "arg")) == tmp_path / "arg"
    assert data_root() == tmp_path / "env"
    monkeypatch.setenv("VAE_DATA_DIR", "rel/env")
    assert data_root() == PROJECT_ROOT / "rel" / "env"
    assert data_root("rel/arg") == PROJECT_ROOT / "rel" / "arg"
    monkeypatch.setenv("VAE_DATA_DIR", "")
    assert data_root() == PROJECT_ROOT / "data"
    monkeypatch.delenv("VAE_DATA_DIR")
    assert data_root() == PROJECT_ROOT / "data"


def test_load_dataset_follows_lookup_order(tmp_path, monkeypatch, shared_data):
    """load_dataset reads from VAE_DATA_DIR when no folder is given (an empty one there gives an
    error naming that folder and the variable's value), and an explicit folder overrides it."""
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("VAE_DATA_DIR", str(empty))
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("frey_face", download=False)
    assert str(empty) in str(info.value) and f"VAE_DATA_DIR={str(empty)!r}" in str(info.value)
    assert load_dataset("frey_face", shared_data).x_train.shape == (1765, 560)
    monkeypatch.setenv("VAE_DATA_DIR", str(shared_data))
    assert load_dataset("frey_face").x_test.shape == (200, 560)
    monkeypatch.delenv("VAE_DATA_DIR")
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("frey_face", tmp_path / "nowhere", download=False)
    assert "VAE_DATA_DIR='<unset>'" in str(info.value)


def test_invalid_arguments(shared_data):
    """An unknown dataset or binarisation is a ValueError naming it, before any file is read."""
    with pytest.raises(ValueError, match="dataset = 'cifar'"):
        load_dataset("cifar", shared_data)
    with pytest.raises(ValueError, match="binarize = 'always'"):
        load_dataset("mnist", shared_data, binarize="always")


# ----------------------------------------------------------------------------- contents


def test_frey_face_split(shared_data):
    """Frey Face: 1765 train / 200 test images of 28x20 as (N, 560) float32 in [0, 1], no labels;
    the split is deterministic (two loads agree), disjoint and exhaustive (each of the 1965
    distinct raw images is in exactly one split), and is the documented one: the test set is
    randperm(1965) under seed SPLIT_SEED, first 200."""
    from scipy.io import loadmat

    a, b = load_dataset("frey_face", shared_data), load_dataset("frey_face", shared_data)
    assert a.x_train.shape == (1765, 560) and a.x_test.shape == (200, 560)
    assert a.image_shape == (28, 20) and a.dim == 560
    assert a.y_train is None and a.y_test is None and a.classes is None
    assert a.x_train.dtype == torch.float32
    assert a.x_train.min() >= 0 and a.x_train.max() <= 1 and a.x_test.max() <= 1
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.x_test, b.x_test)
    raw = torch.from_numpy(loadmat(shared_data / "FreyFace/frey_rawface.mat")["ff"].T.copy())
    index = {bytes(row.tolist()): i for i, row in enumerate(raw)}
    assert len(index) == 1965  # all raw images distinct, so rows identify images

    def indices(x):
        return [index[bytes(row)] for row in (x * 255).round().to(torch.uint8).tolist()]

    train_idx, test_idx = indices(a.x_train), indices(a.x_test)
    assert set(train_idx).isdisjoint(test_idx)
    assert len(set(train_idx) | set(test_idx)) == 1965
    order = torch.randperm(1965, generator=torch.Generator().manual_seed(SPLIT_SEED))
    assert test_idx == order[:FREY_TEST_SIZE].tolist()


def test_mnist_contents_and_shared_root_untouched(shared_data):
    """MNIST: 60,000 / 10,000 images as (N, 784) float32, grey levels k/255 in [0, 1] reaching both
    ends; int64 labels 0-9 with MNIST's known class counts; x_train_eval is the first 10,000
    training images; classes '0'-'9'. Loading from the shared folder writes nothing there."""
    with no_writes_under(shared_data):
        d = load_dataset("mnist", shared_data)
    assert d.x_train.shape == (60_000, 784) and d.x_test.shape == (10_000, 784)
    assert d.x_train.dtype == d.x_test.dtype == torch.float32
    assert d.x_train.min().item() == 0.0 and d.x_train.max().item() == 1.0
    assert d.x_test.min().item() == 0.0 and d.x_test.max().item() == 1.0
    scaled = d.x_test * 255
    assert torch.equal(scaled, scaled.round())
    assert d.y_train.dtype == torch.int64
    assert torch.bincount(d.y_train).tolist() == MNIST_TRAIN_COUNTS
    assert torch.bincount(d.y_test).tolist() == MNIST_TEST_COUNTS
    assert torch.equal(d.x_train_eval, d.x_train[:10_000])
    assert d.classes == tuple("0123456789") and d.image_shape == (28, 28) and d.dim == 784
    sub = load_dataset("mnist", shared_data, train_subset=123, test_subset=45)
    assert torch.equal(sub.x_train, d.x_train[:123]) and torch.equal(sub.y_test, d.y_test[:45])
    assert torch.equal(sub.x_train_eval, sub.x_train)


def test_fashion_mnist_contents(shared_data):
    """Fashion-MNIST loads from its IDX files: (60,000 / 10,000, 784) in [0, 1], 6,000 /
    1,000 images per class, and the ten class names."""
    d = load_dataset("fashion_mnist", shared_data, test_subset=None)
    assert d.x_train.shape == (60_000, 784) and d.x_test.shape == (10_000, 784)
    assert 0 <= d.x_train.min() and d.x_train.max() <= 1
    assert torch.bincount(d.y_train).tolist() == [6000] * 10
    assert torch.bincount(d.y_test).tolist() == [1000] * 10
    assert d.classes[0] == "T-shirt/top" and d.classes[9] == "Ankle boot" and len(d.classes) == 10


# ----------------------------------------------------------------------------- binarisation


@pytest.fixture(scope="module")
def mnist_grey(shared_data):
    return load_dataset("mnist", shared_data, train_subset=2000, test_subset=500)


def _is_binary(x):
    return bool(((x == 0) | (x == 1)).all())


def test_static_binarisation_is_fixed_and_binary(shared_data, mnist_grey):
    """binarize='static': train and test are binary, the same on every load (fixed seed), a draw
    from Bernoulli(grey) (same mean within a few standard errors, exact 0/1 pixels kept), and
    x_train_eval is the binarised training set."""
    a = load_dataset("mnist", shared_data, binarize="static", train_subset=2000, test_subset=500)
    b = load_dataset("mnist", shared_data, binarize="static", train_subset=2000, test_subset=500)
    for x, grey in ((a.x_train, mnist_grey.x_train), (a.x_test, mnist_grey.x_test)):
        assert _is_binary(x)
        n = grey.numel()
        assert abs(x.mean().item() - grey.mean().item()) < 5 * (0.25 / n) ** 0.5
        assert torch.equal(x[grey == 0], torch.zeros_like(x[grey == 0]))
        assert torch.equal(x[grey == 1], torch.ones_like(x[grey == 1]))
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.x_test, b.x_test)
    assert torch.equal(a.x_train_eval, a.x_train)
    assert a.binarize == "static"


def test_dynamic_binarisation_keeps_grey_train_and_fixed_binary_eval(shared_data, mnist_grey):
    """binarize='dynamic': x_train stays grey (batches() binarises it), while x_test and
    x_train_eval are binary, fixed across loads, and draws from their grey images."""
    a = load_dataset("mnist", shared_data, binarize="dynamic", train_subset=2000, test_subset=500)
    b = load_dataset("mnist", shared_data, binarize="dynamic", train_subset=2000, test_subset=500)
    assert torch.equal(a.x_train, mnist_grey.x_train)
    assert _is_binary(a.x_test) and _is_binary(a.x_train_eval)
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.x_train_eval, b.x_train_eval)
    n = mnist_grey.x_test.numel()
    assert abs(a.x_test.mean().item() - mnist_grey.x_test.mean().item()) < 5 * (0.25 / n) ** 0.5
    g = torch.Generator().manual_seed(0)
    batch = next(batches(a.x_train, 100, g, dynamic_binarize=True))
    assert _is_binary(batch)


@pytest.mark.parametrize(
    "binarize, split, kwargs_a, kwargs_b",
    [
        ("static", "x_test", dict(train_subset=100, test_subset=50), dict(train_subset=200, test_subset=50)),
        (
            "dynamic",
            "x_train_eval",
            dict(train_subset=100, test_subset=50),
            dict(train_subset=100, test_subset=60),
        ),
    ],
)
def test_fixed_binarisation_of_a_split_does_not_depend_on_the_other_subset(
    shared_data, binarize, split, kwargs_a, kwargs_b
):
    """A fixed binarisation of one split (the static test set; the dynamic run's train-eval set)
    must not change when only the *other* split's subset size changes: otherwise test ELBOs of a
    quick run (train_subset) and a full run are computed on different binary test sets."""
    a = load_dataset("mnist", shared_data, binarize=binarize, **kwargs_a)
    b = load_dataset("mnist", shared_data, binarize=binarize, **kwargs_b)
    assert torch.equal(getattr(a, split), getattr(b, split))


# ----------------------------------------------------------------------------- minibatches


def test_batches_cover_every_index_once_with_partial_last_batch():
    """30 rows in batches of 7: sizes 7, 7, 7, 7, 2; every row exactly once per epoch; a new order
    each epoch from one generator; the same seed gives the same order; rows are kept intact."""
    x = torch.arange(30, dtype=torch.float32).unsqueeze(1).repeat(1, 3)
    g = torch.Generator().manual_seed(0)
    epochs = [list(batches(x, 7, g)) for _ in range(3)]
    for epoch in epochs:
        assert [len(b) for b in epoch] == [7, 7, 7, 7, 2]
        rows = torch.cat(epoch)
        assert sorted(rows[:, 0].tolist()) == list(range(30))
        assert torch.equal(rows[:, 0], rows[:, 2])
    orders = [torch.cat(e)[:, 0].tolist() for e in epochs]
    assert orders[0] != orders[1] != orders[2] and orders[0] != list(range(30))
    again = [torch.cat(list(batches(x, 7, torch.Generator().manual_seed(0))))[:, 0].tolist()]
    assert again[0] == orders[0]
    assert [len(b) for b in batches(x, 30, g)] == [30]
    assert [len(b) for b in batches(x, 100, g)] == [30]


def test_dynamic_batches_resample_every_time():
    """dynamic_binarize: every batch is a fresh Bernoulli draw of the grey rows: binary, different
    on each pass, averaging to the grey values over many passes; pixels that are exactly 0 or 1
    stay so."""
    p = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0])
    x = p.repeat(50, 1)  # identical rows: the shuffle order does not matter
    g = torch.Generator().manual_seed(0)
    passes = [torch.cat(list(batches(x, 16, g, dynamic_binarize=True))) for _ in range(200)]
    assert all(_is_binary(b) for b in passes)
    assert not torch.equal(passes[0], passes[1])
    mean = torch.stack(passes).mean((0, 1))
    torch.testing.assert_close(mean, p, atol=0.01, rtol=0)
    assert mean[0].item() == 0.0 and mean[4].item() == 1.0
    grey = torch.cat(list(batches(x, 16, g)))
    assert sorted(grey.unique().tolist()) == p.tolist()  # without the flag, untouched


def test_expected_files_match_shared_md5sums(shared_data):
    """The checksums the loader enforces are the ones published with the shared data."""
    sums = {}
    for line in (shared_data / "MD5SUMS").read_text().splitlines():
        md5, rel = line.split()
        sums[rel] = md5
    for files in EXPECTED_FILES.values():
        for rel, md5 in files.items():
            assert sums[rel] == md5, rel
    assert (
        data_module.md5sum(shared_data / "FreyFace/frey_rawface.mat")
        == EXPECTED_FILES["frey_face"]["FreyFace/frey_rawface.mat"]
    )


def test_load_config_data_takes_dataset_binarisation_and_subsets_from_the_config(shared_data):
    """The data a run sees is the config's dataset, data_dir, binarisation and subsets: the same
    tensors as load_dataset called with those fields by hand."""
    from vae_utils.config import TrainConfig
    from vae_utils.data import load_config_data

    config = TrainConfig(data_dir=str(shared_data), binarize="static", train_subset=120, test_subset=30)
    got = load_config_data(config)
    want = load_dataset("mnist", shared_data, binarize="static", train_subset=120, test_subset=30)
    assert got.x_train.shape == (120, 784) and got.x_test.shape == (30, 784)
    for field in ("x_train", "y_train", "x_test", "y_test", "x_train_eval"):
        assert torch.equal(getattr(got, field), getattr(want, field)), field


# ----------------------------------------------------------------------------- test split only


@pytest.mark.parametrize(
    "name, binarize",
    [
        ("mnist", "none"),
        ("mnist", "dynamic"),
        ("mnist", "static"),
        ("frey_face", "none"),
        ("frey_face", "dynamic"),
        ("frey_face", "static"),
    ],
)
def test_test_only_load_gives_the_same_test_images_as_a_full_load(shared_data, name, binarize):
    """train=False (what notebooks 03-05 load): exactly the test images and labels of a full load,
    the same binarisation draws included (each split has its own seeded stream), and for Frey Face
    the same faces (its split is a fixed shuffle of all 1965); no training split in memory."""
    full = load_dataset(name, shared_data, binarize=binarize)
    only = load_dataset(name, shared_data, binarize=binarize, train=False)
    assert torch.equal(only.x_test, full.x_test)
    assert (only.y_test is None and full.y_test is None) or torch.equal(only.y_test, full.y_test)
    assert only.x_train is None and only.y_train is None and only.x_train_eval is None
    assert (only.name, only.image_shape, only.classes, only.binarize, only.dim) == (
        full.name,
        full.image_shape,
        full.classes,
        full.binarize,
        full.dim,
    )
    sub = load_dataset(name, shared_data, binarize=binarize, train=False, train_subset=7, test_subset=50)
    assert torch.equal(sub.x_test, full.x_test[:50])


def test_test_only_load_does_not_read_the_training_split(shared_data, monkeypatch):
    """MNIST's training images are never read (that is where the memory goes): only the test
    split's two IDX files are."""
    read = []

    def recording(path):
        read.append(path.name)
        return _read_idx(path)

    monkeypatch.setattr(data_module, "_read_idx", recording)
    d = load_dataset("mnist", shared_data, train=False, test_subset=20)
    assert read == ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    assert d.x_test.shape == (20, 784) and d.y_test.shape == (20,) and d.x_train is None


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_files_read_as_torchvisions_dataset_reads_them(shared_data, name):
    """The IDX reader gives torchvision's MNIST / FashionMNIST images (uint8, N x 28 x 28) and int64
    labels, element for element, for both splits."""
    cls = data_module._torchvision_class(name)
    ours = data_module._read(name, shared_data)
    theirs = [cls(str(shared_data), train=train) for train in (True, False)]
    expected = [t for split in theirs for t in (split.data, split.targets)]
    for got, want in zip(ours, expected, strict=True):
        assert got.dtype == want.dtype and torch.equal(got, want)


def test_idx_reader_round_trip_and_its_error(tmp_path):
    """A 3 x 2 x 4 IDX file written here reads back as its bytes; a file of another type (0x0D,
    float32), a truncated one or an empty one is a DatasetCorruptError naming the file and
    VAE_DATA_DIR."""
    values = torch.arange(24, dtype=torch.uint8).reshape(3, 2, 4)
    header = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in (3, 2, 4))
    (tmp_path / "good").write_bytes(header + values.numpy().tobytes())
    assert torch.equal(_read_idx(tmp_path / "good"), values)
    (tmp_path / "floats").write_bytes(bytes([0, 0, 13]) + header[3:] + values.numpy().tobytes())
    (tmp_path / "short").write_bytes(header + values.numpy().tobytes()[:-1])
    (tmp_path / "empty").write_bytes(b"")
    for name in ("floats", "short", "empty"):
        with pytest.raises(DatasetCorruptError, match=rf"{name} is not an IDX file .*VAE_DATA_DIR"):
            _read_idx(tmp_path / name)


def test_reading_data_imports_neither_torchvision_nor_torchs_compiler(shared_data):
    """Importing torchvision imports torch._dynamo (about 1.1 s, and more at exit): a process that
    loads a dataset and draws it, as the analysis notebooks do, imports neither."""
    code = (
        "import sys; from vae_utils import load_dataset, plotting; "
        f"d = load_dataset('mnist', {str(shared_data)!r}, train=False); "
        "plotting.show_images(d.x_test[:4], (28, 28)); "
        "print(sorted(m for m in ('torchvision', 'torch._dynamo') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("n", "shape", "nrow", "padding"), [(6, (28, 28), 3, 2), (7, (28, 20), 3, 2), (13, (3, 3), 5, 1)]
)
def test_image_grid_lays_images_out_as_torchvisions_make_grid(n, shape, nrow, padding):
    """Flat images, clipped to [0, 1], tile into make_grid's layout (grey 0.5 borders and empty
    cells), value for value."""
    from torchvision.utils import make_grid

    images = torch.linspace(-1, 2, n * shape[0] * shape[1]).reshape(n, -1)
    expected = make_grid(images.reshape(n, 1, *shape).clamp(0, 1), nrow=nrow, padding=padding, pad_value=0.5)
    assert torch.equal(image_grid(images, shape, nrow, padding), expected[0])


def test_image_grid_shape_padding_and_clipping():
    images = torch.linspace(-1, 2, 6 * 28 * 28).reshape(6, 28 * 28)
    grid = image_grid(images, (28, 28), nrow=3, padding=2)
    assert grid.shape == (2 * (28 + 2) + 2, 3 * (28 + 2) + 2)
    assert grid.min() >= 0 and grid.max() <= 1
    assert torch.all(grid[0] == 0.5)  # the padding row
    faces = torch.rand(4, 560)  # Frey Face: 28 rows of 20 pixels
    frey = image_grid(faces, (28, 20), nrow=4, padding=0)
    assert frey.shape == (28, 80)
    assert torch.equal(frey[:, 20:40], faces[1].reshape(28, 20))  # tile 2, in reading order


def test_load_test_data_loads_only_each_configs_test_split(shared_data):
    """analysis.load_test_data (notebooks 03-05): the config's test split (dataset, binarisation,
    test subset) without training data; runs that share a test set share one load."""
    from vae_utils.analysis import load_test_data
    from vae_utils.config import TrainConfig
    from vae_utils.data import load_config_data

    a = TrainConfig(data_dir=str(shared_data), binarize="static", train_subset=100, test_subset=30)
    b = TrainConfig(
        data_dir=str(shared_data), binarize="static", train_subset=200, test_subset=30, latent_dim=5
    )
    c = TrainConfig(dataset="frey_face", decoder="gaussian", data_dir=str(shared_data))
    got_a, got_b, got_c = load_test_data([a, b, c])
    assert got_a is got_b  # the train subset does not matter for the test split
    assert torch.equal(got_a.x_test, load_config_data(a).x_test) and got_a.x_train is None
    assert got_c.x_test.shape == (FREY_TEST_SIZE, 560) and got_c.x_train is None
    full = load_config_data(a, train=True)
    assert full.x_train.shape == (100, 784)  # train=True (the default) is the training data
