import numpy as np
import pytest

import exactem
from exactem.cli import main


def test_fit_command_writes_a_loadable_model_and_a_figure(tmp_path, capsys):
    model_path, fig_path = tmp_path / "m.npz", tmp_path / "f.png"
    rc = main(["fit", "--data", "circle", "--n", "200", "--hidden", "6", "--iterations", "4", "--quiet",
               "--model", str(model_path), "--out", str(fig_path)])
    assert rc == 0
    assert fig_path.stat().st_size > 10_000
    model = exactem.DGN.load(model_path)
    history = np.load(model_path)["extra_history"]
    X = exactem.datasets.circle(200, 0.1, seed=0)
    # The saved model is the fitted one: its exact likelihood is the last entry of the history.
    assert abs(model.log_likelihood(X).mean() - history[-1]) < 1e-9
    assert np.all(np.diff(history) >= -1e-9)
    assert "iterations" in capsys.readouterr().out


def test_fit_command_reads_csv_files_and_reports_bad_input(tmp_path, capsys):
    data = tmp_path / "x.csv"
    np.savetxt(data, exactem.datasets.wave(100, 0.1, seed=1), delimiter=",")
    assert main(["fit", "--data", str(data), "--hidden", "4", "--iterations", "2", "--quiet",
                 "--model", str(tmp_path / "m.npz"), "--out", str(tmp_path / "f.png")]) == 0
    assert main(["fit", "--data", str(tmp_path / "missing.npy"), "--quiet"]) == 2
    assert "cannot read" in capsys.readouterr().err
    bad = tmp_path / "bad.npy"
    np.save(bad, np.array([[0.0, np.nan], [1.0, 2.0]]))
    assert main(["fit", "--data", str(bad), "--quiet"]) == 2
    assert "NaN" in capsys.readouterr().err


def test_region_limit_is_a_clean_error(tmp_path, capsys):
    with pytest.warns(UserWarning):
        rc = main(["fit", "--latent-dim", "2", "--hidden", "32,32", "--max-regions", "10", "--iterations", "1",
                   "--quiet", "--model", str(tmp_path / "m.npz"), "--out", str(tmp_path / "f.png")])
    assert rc == 2
    assert "max_regions" in capsys.readouterr().err
