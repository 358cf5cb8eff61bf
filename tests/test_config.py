"""TrainConfig: the defaults are the original study's, and every bad value of every field is a
``ValueError`` that names the field, shows the value and says what is allowed (issue 2, section 5).
"""

import dataclasses
import json
import math

import pytest

from vae_utils.config import PROJECT_ROOT, TrainConfig, resolve_path

NAN, INF = math.nan, math.inf

# field -> [(bad value, a fragment the "allowed ..." part of the message must contain), ...]
# Every field of TrainConfig must appear here (test_every_field_has_invalid_cases checks that).
INVALID = {
    "dataset": [("cifar10", "'mnist'"), ("MNIST", "'frey_face'"), (None, "'fashion_mnist'"), (1, "'mnist'")],
    "decoder": [("gauss", "'gaussian'"), ("", "'bernoulli'"), (None, "'gaussian'")],
    "latent_dim": [
        (0, ">= 1"),
        (-3, ">= 1"),
        (2.0, "integer"),
        ("2", "integer"),
        (True, "integer"),
        (None, "integer"),
    ],
    "hidden_dim": [(0, ">= 1"), (500.0, "integer"), ("500", "integer"), (False, "integer")],
    "hidden_layers": [(0, ">= 1"), (2.0, "integer"), ("2", "integer"), (None, "integer")],
    "algorithm": [("wake-sleep", "'wake_sleep'"), ("AEVB", "'aevb'"), (None, "'aevb'")],
    "lr_candidates": [
        ([], "non-empty list"),
        ("0.01", "non-empty list"),
        (0.01, "non-empty list"),
        ([0.01, 0.0], "> 0"),
        ([0.01, NAN], "finite"),
        ([0.01, "0.1"], "finite"),
    ],
    "pilot_samples": [(0, ">= 1"), (1e4, "integer"), (None, "integer")],
    "lr_schedule": [("step", "'burda'"), (None, "'constant'")],
    "adam_eps": [(0.0, "> 0"), (NAN, "finite"), (None, "finite")],
    "eval_per_decade": [(0, ">= 1"), (2.5, "integer"), ("8", "integer")],
    "eval_every": [(0, ">= 1"), (3e6, "integer"), ("3000000", "integer")],
    "eval_iw_samples": [(0, ">= 1"), (100.0, "integer"), ("5000", "integer")],
    "eval_marginal": [(0, ">= 1"), (10.5, "integer"), ("1000", "integer")],
    "activation": [("sigmoid", "'tanh'"), ("Tanh", "'relu'"), (0, "'tanh'")],
    "init": [("xavier", "'paper'"), (None, "'pytorch'"), (0.01, "'paper'")],
    "min_logvar": [
        (NAN, "finite"),
        (-INF, "finite"),
        (INF, "finite"),
        ("-6", "finite"),
        (True, "finite"),
        (None, "finite"),
    ],
    "sigmoid_mean": [
        (1, "True or False"),
        (0, "True or False"),
        ("True", "True or False"),
        (None, "True or False"),
    ],
    "batch_size": [(0, ">= 1"), (-100, ">= 1"), (100.0, "integer"), ("100", "integer"), (True, "integer")],
    "epochs": [(0, ">= 1"), (1.5, "integer"), ("100", "integer"), (True, "integer"), (None, "integer")],
    "lr": [
        (0.0, "> 0"),
        (-0.01, "> 0"),
        (NAN, "finite"),
        (INF, "finite"),
        ("0.01", "finite"),
        (True, "finite"),
        (None, "finite"),
    ],
    "optimizer": [("sgd", "'adagrad'"), ("Adam", "'adam'"), (None, "'adagrad'")],
    "weight_decay": [(-1e-4, ">= 0"), (NAN, "finite"), (INF, "finite"), ("0", "finite"), (False, "finite")],
    "n_samples": [(0, ">= 1"), (1.0, "integer"), ("1", "integer"), (True, "integer")],
    "kl": [("exact", "'analytic'"), ("MC", "'mc'"), (None, "'analytic'")],
    "binarize": [("yes", "'dynamic'"), (True, "'static'"), (None, "'none'")],
    "patience": [(0, ">= 1"), (-1, ">= 1"), (3.0, "integer"), ("3", "integer"), (True, "integer")],
    "seed": [
        (-1, "in [0, 2147483647]"),
        (2**31, "in [0, 2147483647]"),
        (0.5, "integer"),
        ("0", "integer"),
        (True, "integer"),
        (None, "integer"),
    ],
    "device": [("gpu", "'cuda'"), ("cuda:0", "'cpu'"), (None, "'auto'")],
    "dtype": [("float16", "'float64'"), ("double", "'float32'"), (None, "'float32'")],
    "compile": [(1, "True or False"), ("yes", "True or False"), (None, "True or False")],
    "autocast": [("float16", "'bfloat16'"), ("bf16", "'none'"), (None, "'bfloat16'")],
    "tensorboard": [(1, "True or False"), ("no", "True or False"), (None, "True or False")],
    "run_dir": [("", "non-empty path"), ("   ", "non-empty path"), (3, "non-empty path")],
    "train_subset": [(0, ">= 1"), (100.0, "integer"), ("100", "integer"), (True, "integer")],
    "test_subset": [(0, ">= 1"), (-5, ">= 1"), (10.0, "integer"), ("10", "integer"), (False, "integer")],
    "data_dir": [("", "non-empty path"), (" ", "non-empty path"), (1.5, "non-empty path")],
}

CASES = [
    pytest.param(field, value, allowed, id=f"{field}={value!r}")
    for field, values in INVALID.items()
    for value, allowed in values
]


def test_every_field_has_invalid_cases():
    """The table of bad values above covers every TrainConfig field, so a new field cannot be
    added without a test of its validation."""
    assert set(INVALID) == {f.name for f in dataclasses.fields(TrainConfig)}


@pytest.mark.parametrize("field, value, allowed", CASES)
def test_invalid_value_names_field_value_and_allowed(field, value, allowed):
    """Each bad value raises ValueError whose message starts with ``<field> = <value>`` and
    says what is allowed (bools given as ints and the reverse, strings for numbers, NaN/inf)."""
    with pytest.raises(ValueError) as info:
        TrainConfig(**{field: value})
    message = str(info.value)
    assert message.startswith(f"{field} = {value!r}"), message
    assert "allowed" in message and allowed in message, message


@pytest.mark.parametrize(
    "field, choices",
    [
        ("dataset", ("mnist", "fashion_mnist", "frey_face")),
        ("decoder", ("bernoulli", "gaussian")),
        ("activation", ("tanh", "relu")),
        ("init", ("pytorch", "paper")),
        ("optimizer", ("adagrad", "adam")),
        ("kl", ("analytic", "mc")),
        ("binarize", ("none", "dynamic", "static")),
        ("device", ("auto", "cpu", "cuda")),
    ],
)
def test_choice_fields_list_every_choice_and_accept_each(field, choices):
    """A bad choice lists every allowed choice; every allowed choice is accepted (the Gaussian
    decoder only with binarize='none', see the cross-field test)."""
    with pytest.raises(ValueError) as info:
        TrainConfig(**{field: "nonsense"})
    for choice in choices:
        assert repr(choice) in str(info.value)
        assert getattr(TrainConfig(**{field: choice}), field) == choice


@pytest.mark.parametrize("binarize", ["static", "dynamic"])
def test_gaussian_decoder_requires_binarize_none(binarize):
    """Cross-field rule: a Gaussian decoder with a binarised dataset is refused, naming binarize,
    its value, the allowed 'none' and the decoder that forces it; 'none' is accepted, and the
    Bernoulli decoder accepts every binarisation."""
    with pytest.raises(ValueError) as info:
        TrainConfig(decoder="gaussian", binarize=binarize)
    message = str(info.value)
    assert message.startswith(f"binarize = {binarize!r}")
    assert "'none'" in message and "gaussian" in message
    assert TrainConfig(decoder="gaussian", binarize="none").binarize == "none"
    assert TrainConfig(decoder="bernoulli", binarize=binarize).binarize == binarize


@pytest.mark.parametrize(
    "field, value",
    [
        ("latent_dim", 1),
        ("hidden_dim", 1),
        ("batch_size", 1),
        ("epochs", 1),
        ("n_samples", 1),
        ("patience", 1),
        ("patience", None),
        ("seed", 0),
        ("train_subset", 1),
        ("train_subset", None),
        ("test_subset", 1),
        ("min_logvar", -100),
        ("min_logvar", 0.5),
        ("lr", 1e-8),
        ("lr", 1),
        ("weight_decay", 0),
        ("weight_decay", 1e-4),
        ("sigmoid_mean", True),
        ("run_dir", "x/y"),
        ("data_dir", "/some/where"),
    ],
)
def test_boundary_values_are_accepted(field, value):
    """The smallest allowed values (and ints for float fields, None for optional ones) pass: the
    checks are not stricter than their messages say."""
    assert getattr(TrainConfig(**{field: value}), field) == value


def test_defaults_are_the_original_study():
    """MNIST, Bernoulli decoder, hidden 500, latent 2, batch 100, 100 epochs, Adagrad lr 0.01,
    patience 3; one sample of z, analytic KL (estimator B), grey levels, tanh."""
    c = TrainConfig()
    assert (c.dataset, c.decoder, c.hidden_dim, c.latent_dim) == ("mnist", "bernoulli", 500, 2)
    assert (c.batch_size, c.epochs, c.optimizer, c.lr, c.patience) == (100, 100, "adagrad", 0.01, 3)
    assert (c.n_samples, c.kl, c.binarize, c.activation) == (1, "analytic", "none", "tanh")
    assert c.weight_decay == 0.0 and c.train_subset is None and c.test_subset is None
    assert c.run_dir == "runs/mnist_bernoulli_z2_h500_s0"
    assert c.path == PROJECT_ROOT / "runs" / "mnist_bernoulli_z2_h500_s0"


def test_from_dict_rejects_unknown_keys_by_name():
    """An unknown key (a typo such as ``latent_dims``) is a ValueError naming it, not a silent
    default."""
    with pytest.raises(ValueError) as info:
        TrainConfig.from_dict({"latent_dims": 5, "hiden_dim": 3, "epochs": 2})
    assert "latent_dims" in str(info.value) and "hiden_dim" in str(info.value)
    assert "latent_dim" in str(info.value)  # the allowed names are listed


def test_from_dict_validates_values():
    """from_dict goes through the same validation as the constructor."""
    with pytest.raises(ValueError, match=r"^latent_dim = 0 "):
        TrainConfig.from_dict({"latent_dim": 0})


def test_to_dict_from_dict_round_trip_through_json(tmp_path):
    """A config survives to_dict -> JSON -> from_dict unchanged (what config.json relies on),
    including a Path run_dir, which is stored as a string."""
    c = TrainConfig(
        latent_dim=7,
        lr=0.02,
        patience=None,
        run_dir=tmp_path / "run",
        seed=3,
        kl="mc",
        decoder="gaussian",
        sigmoid_mean=True,
        min_logvar=-4.5,
    )
    d = json.loads(json.dumps(c.to_dict()))
    assert d["run_dir"] == str(tmp_path / "run")
    back = TrainConfig.from_dict(d)
    assert back.to_dict() == c.to_dict()
    assert back.path == tmp_path / "run"


def test_relative_paths_resolve_against_project_root(tmp_path):
    """A relative run_dir is taken from the project root (not the current directory), so that
    notebooks started in notebooks/ or in the root find the same runs; absolute paths stay."""
    assert TrainConfig(run_dir="runs/x").path == PROJECT_ROOT / "runs" / "x"
    assert resolve_path(tmp_path) == tmp_path
    assert resolve_path("data") == PROJECT_ROOT / "data"


def test_name_describes_the_configuration():
    """The default run name encodes dataset, decoder, N_z, hidden size and seed."""
    c = TrainConfig(dataset="frey_face", decoder="gaussian", latent_dim=5, hidden_dim=200, seed=4)
    assert c.name == "frey_face_gaussian_z5_h200_s4"
    assert c.run_dir == "runs/frey_face_gaussian_z5_h200_s4"


@pytest.mark.parametrize("seed", [2**64 - 1, 2**64])
def test_seed_too_large_for_torch_is_a_config_error(seed):
    """torch.manual_seed / Generator.manual_seed take seeds below 2**64; train() seeds the
    evaluation generator with ``seed + 1``. A seed the run cannot use must be refused by the
    config (naming ``seed``), not by torch after the data has loaded or after an epoch."""
    with pytest.raises(ValueError, match=r"^seed = "):
        TrainConfig(seed=seed)


def test_numpy_scalars_are_accepted_and_stored_as_python_numbers():
    """A sweep built with numpy (``np.arange``, ``np.float32``) gives numpy scalars; they are valid
    and stored as plain int/float so that config.json can be written."""
    import json

    import numpy as np

    c = TrainConfig(latent_dim=np.int64(5), lr=np.float32(0.02), seed=np.int32(3))
    assert type(c.latent_dim) is int and c.latent_dim == 5
    assert type(c.lr) is float and c.lr == pytest.approx(0.02)
    assert json.loads(json.dumps(c.to_dict()))["seed"] == 3


# ----------------------------------------------------------------------------- combinations


@pytest.mark.parametrize(
    "values, field, fragment",
    [
        (dict(lr_schedule="burda"), "optimizer", "'adam' with lr_schedule='burda'"),
        (dict(lr_schedule="burda", optimizer="adam", epochs=7), "epochs", ">= 8 with lr_schedule='burda'"),
        (dict(decoder="continuous_bernoulli", binarize="static"), "binarize", "'none' with decoder="),
        (dict(decoder="gaussian", binarize="dynamic"), "binarize", "'none' with decoder="),
        (dict(eval_every=1000, eval_per_decade=8), "eval_every", "None when eval_per_decade is set"),
        (dict(autocast="bfloat16", dtype="float64"), "autocast", "'none' with dtype='float64',"),
        (
            dict(autocast="bfloat16", algorithm="mcem", binarize="static", patience=None),
            "autocast",
            "algorithm='mcem' and",
        ),
        # its bfloat16 curves fell 17 nats below float32's on Frey Face (10 seeds, docs/speed.md)
        (dict(autocast="bfloat16", decoder="gaussian"), "autocast", "and decoder='gaussian' (float32 AEVB"),
    ],
)
def test_fields_that_exclude_each_other(values, field, fragment):
    with pytest.raises(ValueError) as info:
        TrainConfig(**values)
    assert str(info.value).startswith(f"{field} = ") and fragment in str(info.value)


def test_lr_candidates_become_a_list_of_floats_that_survive_json():
    import numpy as np

    config = TrainConfig(lr_candidates=np.array([0.01, 0.02, 0.1]))
    assert config.lr_candidates == [0.01, 0.02, 0.1]
    assert all(type(v) is float for v in config.lr_candidates)
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_names_mark_depth_and_wake_sleep():
    assert TrainConfig().name == "mnist_bernoulli_z2_h500_s0"  # unchanged for existing runs
    assert TrainConfig(hidden_layers=2, hidden_dim=200, latent_dim=50).name == "mnist_bernoulli_z50_h200x2_s0"
    assert TrainConfig(algorithm="wake_sleep").name == "mnist_bernoulli_z2_h500_s0_ws"


def test_a_saved_config_without_the_newer_fields_reads_as_their_defaults():
    saved = {
        k: v
        for k, v in TrainConfig().to_dict().items()
        if k not in ("algorithm", "hidden_layers", "eval_per_decade", "lr_candidates")
    }
    assert TrainConfig().differences(saved) == {}
    assert TrainConfig(algorithm="wake_sleep").differences(saved) == {"algorithm": ("aevb", "wake_sleep")}
    assert TrainConfig.from_dict(saved) == TrainConfig()


def test_paper_weight_decay_is_one_over_the_training_set_size():
    from vae_utils.config import paper_weight_decay

    assert paper_weight_decay("mnist") == 1 / 60_000
    assert paper_weight_decay("frey_face") == 1 / 1_765
    assert paper_weight_decay("mnist", train_subset=1_000) == 1 / 1_000
    assert paper_weight_decay("frey_face", train_subset=10_000) == 1 / 1_765
    with pytest.raises(ValueError, match="dataset = 'cifar' is invalid"):
        paper_weight_decay("cifar")
