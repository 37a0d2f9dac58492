from typer.testing import CliRunner

from cifar2l.cli import app


def test_smoke_train_runs(smoke_args):
    result = CliRunner().invoke(app, ["train", *smoke_args])
    assert result.exit_code == 0, result.output
