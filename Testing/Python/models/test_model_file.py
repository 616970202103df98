"""Model files: round trip, strict loading with clear errors (wrong keys, corrupt bytes, template checksum)."""

import hashlib

import pytest
import torch

from RegistrationSuiteLib.errors import InputError
from RegistrationSuiteLib.models.model_file import (
    CARD_KEYS,
    ModelFile,
    card_markdown,
    load_model,
    load_state_strict,
    save_model,
)


def _card(**extra):
    card = {k: None for k in CARD_KEYS}
    card.update(name="tiny", summary="a tiny test model", seed=0, metrics={"loss": 0.5}, **extra)
    return card


def _tiny(template=None, **card):
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    model = ModelFile(kind="tiny_kind", network_name="tiny", network_config={"width": 3},
                      state_dict=net.state_dict(), template=template, intensity={"mode": "percentile"},
                      card=_card(**card))
    return net, model


def test_round_trip_is_exact_and_weights_only(tmp_path):
    net, model = _tiny(template={"name": "t", "sha256": "abc", "nifti_gz": b"\x1f\x8bxyz"},
                       environment={"torch": torch.__version__})  # a str subclass must not break loading
    path = save_model(model, tmp_path / "m.pt")
    torch.load(str(path), weights_only=True)  # plain content only
    loaded = load_model(path, kind="tiny_kind")
    assert loaded.kind == "tiny_kind" and loaded.network_config == {"width": 3} and loaded.name == "tiny"
    assert loaded.template["nifti_gz"] == b"\x1f\x8bxyz" and loaded.card["metrics"] == {"loss": 0.5}
    for k, v in net.state_dict().items():
        assert torch.equal(loaded.state_dict[k], v)
    assert "# Model card: tiny" in card_markdown(loaded.card)


def test_card_must_be_complete(tmp_path):
    _, model = _tiny()
    del model.card["data_licence"]
    with pytest.raises(InputError, match="data_licence"):
        save_model(model, tmp_path / "m.pt")


def test_wrong_kind_rejected(tmp_path):
    _, model = _tiny()
    save_model(model, tmp_path / "m.pt")
    with pytest.raises(InputError, match="'tiny_kind' model, expected a 'other' model"):
        load_model(tmp_path / "m.pt", kind="other")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_bytes_rejected(tmp_path, damage):
    _, model = _tiny()
    path = save_model(model, tmp_path / "m.pt")
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"not a model" * 100, "empty": b""}[damage])
    with pytest.raises(InputError, match="corrupt or truncated"):
        load_model(path)


def test_foreign_pickle_and_missing_keys_rejected(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(InputError, match="not a RegistrationSuite model file"):
        load_model(tmp_path / "foreign.pt")
    _, model = _tiny()
    path = save_model(model, tmp_path / "m.pt")
    content = torch.load(str(path), weights_only=True)
    del content["intensity"]
    torch.save(content, path)
    with pytest.raises(InputError, match=r"lacks the keys \['intensity'\]"):
        load_model(path)


def test_template_checksum_mismatch_rejected(tmp_path):
    _, model = _tiny(template={"name": "t", "sha256": "abc", "nifti_gz": b"payload"})
    path = save_model(model, tmp_path / "m.pt")
    content = torch.load(str(path), weights_only=True)
    content["template"]["nifti_gz"][0] ^= 0xFF  # one flipped byte in the embedded template
    torch.save(content, path)
    with pytest.raises(InputError, match="fails its checksum"):
        load_model(path)
    assert content["template"]["nifti_gz_sha256"] == hashlib.sha256(b"payload").hexdigest()


def test_missing_file():
    with pytest.raises(InputError, match="file not found"):
        load_model("/nonexistent/model.pt")


def test_strict_state_loading_names_the_difference():
    net, _ = _tiny()
    state = dict(net.state_dict())
    state["extra.weight"] = state.pop("0.weight")
    with pytest.raises(InputError, match=r"missing keys \['0.weight'\], unexpected keys \['extra.weight'\]"):
        load_state_strict(net, state)
    state = dict(net.state_dict())
    state["0.weight"] = torch.zeros(5, 4)
    with pytest.raises(InputError, match=r"'0.weight' has shape \(5, 4\), the network expects \(3, 4\)"):
        load_state_strict(net, state)
