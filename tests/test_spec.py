import pytest

from advmix.errors import DataError
from advmix.spec import DatasetSpec, parse_spec


def test_defaults_and_options():
    assert parse_spec("cfmnist:random") == DatasetSpec("cfmnist", "random")
    spec = parse_spec("cfmnist:train?sigma=0.1&seed=3&limit=100&offset=5&gray=1")
    assert (spec.sigma, spec.seed, spec.limit, spec.offset, spec.gray) == (0.1, 3, 100, 5, True)


def test_canonical_string_round_trips():
    spec = parse_spec("cfmnist:train?seed=3&sigma=0.1&limit=100")
    assert str(spec) == "cfmnist:train?sigma=0.1&seed=3&limit=100"
    assert parse_spec(str(spec)) == spec
    assert str(parse_spec("cfmnist:iid?sigma=0.05")) == "cfmnist:iid"


@pytest.mark.parametrize(
    "text, message",
    [
        ("imagenet:train", "unknown dataset 'imagenet'"),
        ("cfmnist", "missing split"),
        ("cfmnist:", "missing split"),
        ("cfmnist:valid", "unknown split 'valid'"),
        ("cfmnist:train?sigma=abc", "is not a number"),
        ("cfmnist:train?sigma=-1", "must be in"),
        ("cfmnist:train?limit=0", "limit must be >= 1"),
        ("cfmnist:train?seed=1.5", "is not an integer"),
        ("cfmnist:train?gray=maybe", "is not a boolean"),
        ("cfmnist:train?colour=red", "unknown option 'colour'"),
        ("cfmnist:train?seed=1&seed=2", "given twice"),
        ("cfmnist:train?seed", "malformed query"),
    ],
)
def test_bad_specs_raise_clear_errors(text, message):
    with pytest.raises(DataError, match=message) as info:
        parse_spec(text)
    assert "\n" not in str(info.value)
