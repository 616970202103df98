"""Model registry: shipped + user folder (argument or $REGISTRATION_SUITE_MODELS), list / resolve / clear."""

import pytest
import torch

from RegistrationSuiteLib.errors import InputError
from RegistrationSuiteLib.models import registry
from RegistrationSuiteLib.models.model_file import CARD_KEYS, ModelFile, save_model


def _save(path, kind="k1", summary="first"):
    card = {k: None for k in CARD_KEYS}
    card.update(name=path.stem, summary=summary)
    model = ModelFile(kind=kind, network_name="n", network_config={}, state_dict={"w": torch.zeros(2)},
                      card=card)
    save_model(model, path)
    path.with_suffix(".md").write_text("# card")
    return path


@pytest.fixture
def folders(tmp_path, monkeypatch):
    shipped, user = tmp_path / "shipped", tmp_path / "user"
    shipped.mkdir()
    user.mkdir()
    monkeypatch.setattr(registry, "SHIPPED_DIR", shipped)
    monkeypatch.setenv(registry.ENV_VAR, str(user))
    return shipped, user


def test_user_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv(registry.ENV_VAR, str(tmp_path / "env"))
    assert registry.user_models_dir() == tmp_path / "env"
    assert registry.user_models_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv(registry.ENV_VAR)
    assert registry.user_models_dir().parts[-2:] == (".registration-suite", "models")


def test_list_resolve_and_clear(folders, tmp_path):
    shipped, user = folders
    _save(shipped / "alpha.pt")
    _save(user / "beta.pt", kind="k2", summary="second")
    (user / "notes.txt").write_text("keep me")
    (user / "broken.pt").write_bytes(b"garbage")
    models = {m.name: m for m in registry.list_models()}
    assert set(models) == {"alpha", "beta", "broken"}
    assert models["alpha"].source == "shipped" and models["beta"].source == "user"
    assert models["beta"].kind == "k2" and models["beta"].summary == "second"
    assert models["broken"].kind is None and models["broken"].summary.startswith("unreadable")
    assert [m.name for m in registry.list_models(kind="k1")] == ["alpha"]
    assert registry.resolve_model("alpha") == shipped / "alpha.pt"
    assert registry.resolve_model(str(user / "beta.pt")) == user / "beta.pt"
    with pytest.raises(InputError, match="no model named 'gamma'; available: alpha, beta, broken"):
        registry.resolve_model("gamma")
    installed = registry.install_model(_save(tmp_path / "gamma.pt"), user_dir=user)
    (user / "manual.md").write_text("someone's notes, not a model card we installed")
    removed = registry.clear_user_models()
    assert {p.name for p in removed} == {"gamma.pt", "gamma.md"} and not installed.exists()
    # files the registry did not install are never deleted, whatever their extension
    assert {p.name for p in user.iterdir()} >= {"beta.pt", "beta.md", "broken.pt", "notes.txt", "manual.md"}
    assert (shipped / "alpha.pt").exists()
    assert [m.name for m in registry.list_models()] == ["beta", "broken", "alpha"]


def test_user_model_shadows_shipped_and_install_remove(folders, tmp_path):
    shipped, user = folders
    _save(shipped / "alpha.pt")
    other = _save(tmp_path / "alpha.pt", summary="mine")
    dest = registry.install_model(other, user_dir=user)
    assert dest == user / "alpha.pt" and (user / "alpha.md").exists()
    assert registry.resolve_model("alpha") == user / "alpha.pt"
    with pytest.raises(InputError, match="already exists"):
        registry.install_model(other, user_dir=user)
    registry.remove_model("alpha", user_dir=user)
    assert registry.resolve_model("alpha") == shipped / "alpha.pt"
    with pytest.raises(InputError, match="no user model named 'alpha'"):
        registry.remove_model("alpha", user_dir=user)
    (tmp_path / "bad.pt").write_bytes(b"xx")
    with pytest.raises(InputError, match="corrupt"):
        registry.install_model(tmp_path / "bad.pt", user_dir=user)


def test_clear_missing_folder_is_noop(tmp_path):
    assert registry.clear_user_models(user_dir=tmp_path / "none") == []


def test_changed_or_manual_files_never_deleted(tmp_path):
    user = tmp_path / "any folder"
    dest = registry.install_model(_save(tmp_path / "m.pt"), user_dir=user)
    assert registry.MANIFEST_NAME in {p.name for p in user.iterdir()}
    dest.with_suffix(".md").write_text("edited by the user")  # changed since installed: kept
    (user / "../outside.pt").resolve().write_bytes(b"x")
    manifest = registry.read_manifest(user)
    manifest["../outside.pt"] = manifest["m.pt"]
    registry._write_manifest(user, manifest)
    removed = registry.clear_user_models(user_dir=user)
    assert [p.name for p in removed] == ["m.pt"]
    assert dest.with_suffix(".md").exists() and (tmp_path / "outside.pt").exists()
    _save(user / "hand.pt")
    with pytest.raises(InputError, match="not installed by RegistrationSuite"):
        registry.remove_model("hand", user_dir=user)
    assert (user / "hand.pt").exists()


def test_install_is_atomic(tmp_path, monkeypatch):
    import shutil

    def failing_copy(src, dst):
        open(dst, "wb").write(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(shutil, "copyfile", failing_copy)
    user = tmp_path / "user"
    with pytest.raises(OSError):
        registry.install_model(_save(tmp_path / "m.pt"), user_dir=user)
    assert [p.name for p in user.iterdir()] == []
