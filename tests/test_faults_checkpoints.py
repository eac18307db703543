"""One user checkpoint directory, ``$SBJAX_HOME/checkpoints``, where `sbjax port` writes and
every command looks, wherever it runs."""

import jax
import pytest

from sbjax import checkpoints, cli, models, pretrained


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv(checkpoints.HOME_ENV, str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "home"


def save(path, seed=0):
    _, variables = models.init("mlp", jax.random.key(seed))
    return checkpoints.save(path, variables, checkpoints.CheckpointInfo("mlp", 10), overwrite=True)


def test_the_home_is_sbjax_home_else_the_users_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(checkpoints.HOME_ENV, str(tmp_path / "mine"))
    assert checkpoints.home() == tmp_path / "mine"
    assert checkpoints.user_dir() == tmp_path / "mine" / "checkpoints"
    monkeypatch.delenv(checkpoints.HOME_ENV)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert checkpoints.user_dir() == tmp_path / "data" / "sbjax" / "checkpoints"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert checkpoints.home() == tmp_path / "user" / ".local" / "share" / "sbjax"


def test_a_name_is_found_in_the_user_directory_from_any_working_directory(home, tmp_path, monkeypatch):
    saved = save(home / "checkpoints" / "mine")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert checkpoints.locate("mine") == saved
    assert checkpoints.read_info(checkpoints.locate("mine")).model == "mlp"


def folder(path):
    """A folder where a checkpoint would be (``locate`` reads nothing in it)."""
    path.mkdir(parents=True)
    return path


def test_explicit_paths_then_the_user_directory_then_the_shipped_ones(home, tmp_path):
    assert checkpoints.locate("mnistnet-mnist5k") == checkpoints.shipped()["mnistnet-mnist5k"]
    mine = folder(home / "checkpoints" / "mnistnet-mnist5k")
    assert checkpoints.locate("mnistnet-mnist5k") == mine  # the user's copy of a shipped name wins
    folder(tmp_path / "checkpoints" / "mnistnet-mnist5k")  # where earlier versions of `sbjax port` wrote
    assert checkpoints.locate("mnistnet-mnist5k") == mine
    explicit = folder(tmp_path / "elsewhere" / "mnistnet-mnist5k")
    assert checkpoints.locate(str(explicit)) == explicit


def test_a_missing_name_says_everywhere_it_looked(home, tmp_path):
    folder(home / "checkpoints" / "mine")
    with pytest.raises(FileNotFoundError) as caught:
        checkpoints.locate("nope")
    message = str(caught.value)
    assert "no checkpoint 'nope'" in message and "\n" not in message
    assert str(home / "checkpoints") in message and "['mine']" in message
    assert str(tmp_path / "checkpoints") in message  # the working directory's checkpoints/ of earlier versions
    assert "mnistnet-mnist5k" in message and "$SBJAX_HOME" in message and "sbjax port" in message


def test_sbjax_port_writes_into_the_user_directory_by_default(home, monkeypatch, capsys):
    outs = []

    def port(name, source, out, **kwargs):
        outs.append(out)
        return out, checkpoints.CheckpointInfo("mlp", 10, name=name, source=source)

    monkeypatch.setattr(pretrained, "port", port)
    assert cli.main(["port", "resnet20", "--from", "w.th"]) == 0
    assert cli.main(["port", "resnet20", "--from", "w.th", "--out", "here"]) == 0
    assert [str(o) for o in outs] == [str(home / "checkpoints" / "resnet20"), "here"]
    assert f"saved to {home / 'checkpoints' / 'resnet20'}" in capsys.readouterr().out
