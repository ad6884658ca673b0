import os

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
    rc = main(["fit", "--latent-dim", "2", "--hidden", "32,32", "--max-regions", "10", "--iterations", "1",
               "--quiet", "--model", str(tmp_path / "m.npz"), "--out", str(tmp_path / "f.png")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "exactem: warning: " in err and "underdetermined" in err  # warnings are one line too
    assert "max_regions" in err


# -- bad input fails before any training, in one line ------------------------------------------


def _fails_before_training(argv, tmp_path, capsys, monkeypatch, match):
    """Runs `exactem fit` with argv, expecting exit status 2, a one-line message containing
    `match`, no training (ExactEM.fit is never called) and no model or figure written."""
    calls = []
    monkeypatch.setattr(exactem.ExactEM, "fit", lambda self, X, y=None: calls.append(1))
    model, fig = tmp_path / "m.npz", tmp_path / "f.png"
    argv = ["fit", "--quiet", *argv]
    if "--model" not in argv:
        argv += ["--model", str(model)]
    if "--out" not in argv:
        argv += ["--out", str(fig)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("exactem: error: ") and err.count("\n") == 1, err
    assert match in err, err
    assert "numpy" not in err and "Traceback" not in err
    assert calls == [] and not model.exists() and not fig.exists()


def test_csv_header_detected_or_skipped(tmp_path, capsys):
    data = tmp_path / "x.csv"
    X = exactem.datasets.wave(60, 0.1, seed=1)
    data.write_text("t,y\n" + "\n".join(f"{a},{b}" for a, b in X) + "\n")
    out = [ "--model", str(tmp_path / "m.npz"), "--out", str(tmp_path / "f.png")]
    assert main(["fit", "--data", str(data), "--hidden", "3", "--iterations", "1", "--quiet", *out]) == 0
    assert "on 60 points of dimension 2" in capsys.readouterr().out
    # A numeric first line is data unless --skip-header says otherwise.
    data.write_text("\n".join(f"{a},{b}" for a, b in X) + "\n")
    assert main(["fit", "--data", str(data), "--hidden", "3", "--iterations", "1", "--quiet", "--skip-header", *out]) == 0
    assert "on 59 points" in capsys.readouterr().out


def test_one_dimensional_npy_is_n_points_of_dimension_one(tmp_path, capsys):
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(0).normal(size=80))
    rc = main(["fit", "--data", str(data), "--hidden", "3", "--iterations", "2", "--quiet", "--test-fraction", "0.25",
               "--model", str(tmp_path / "m.npz"), "--out", str(tmp_path / "f.png")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "on 60 points of dimension 1 (20 held out)" in out
    assert "held-out exact log-likelihood per point" in out


@pytest.mark.parametrize("case", ["nan_csv", "nan_npy", "text_csv", "ragged_csv", "3d_npy", "string_npy",
                                  "neg_tol", "neg_noise", "zero_iter", "bad_fraction", "bad_ext",
                                  "missing_dir", "out_is_dir", "readonly_model"])
def test_bad_input_is_one_line_before_training(case, tmp_path, capsys, monkeypatch):
    csv_path, npy = tmp_path / "x.csv", tmp_path / "x.npy"
    rows = "1,2\n3,4\n5,6\n7,8\n"
    if case == "nan_csv":
        csv_path.write_text("a,b\n" + rows + "9,nan\n10,\n")
        args, match = ["--data", str(csv_path)], "lines 6, 7"
    elif case == "nan_npy":
        np.save(npy, np.array([[0.0, 1.0], [0.0, np.nan], [1.0, 2.0], [np.inf, 1.0]]))
        args, match = ["--data", str(npy)], "rows 1, 3 (counting from 0)"
    elif case == "text_csv":
        csv_path.write_text(rows + "9,ten\n")
        args, match = ["--data", str(csv_path)], "line 5, column 2: 'ten' is not a number"
    elif case == "ragged_csv":
        csv_path.write_text(rows + "9,10,11\n")
        args, match = ["--data", str(csv_path)], "line 5 has 3 fields"
    elif case == "3d_npy":
        np.save(npy, np.zeros((4, 2, 2)))
        args, match = ["--data", str(npy)], "got shape (4, 2, 2)"
    elif case == "string_npy":
        np.save(npy, np.array([["a", "b"], ["c", "d"]]))
        args, match = ["--data", str(npy)], "must hold numbers"
    elif case == "neg_tol":
        args, match = ["--tol=-1e-3"], "--tol must be >= 0"
    elif case == "neg_noise":
        args, match = ["--data-noise=-0.1"], "--data-noise must be >= 0"
    elif case == "zero_iter":
        args, match = ["--iterations", "0"], "--iterations must be at least 1"
    elif case == "bad_fraction":
        args, match = ["--test-fraction", "1.5"], "--test-fraction"
    elif case == "bad_ext":
        args, match = ["--out", str(tmp_path / "f.xyz")], "must end in one of"
    elif case == "missing_dir":
        args, match = ["--model", str(tmp_path / "nowhere" / "m.npz")], "does not exist"
    elif case == "out_is_dir":
        args, match = ["--out", str(tmp_path)], "is a directory"
    else:
        if os.geteuid() == 0:
            pytest.skip("root can write to read-only directories")
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        args, match = ["--model", str(locked / "m.npz")], "cannot write"
    _fails_before_training(args, tmp_path, capsys, monkeypatch, match)


def test_help_shows_defaults_and_version(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    out = capsys.readouterr().out
    out = " ".join(out.split())
    assert "maximum number of iterations (default: 200)" in out and "(default: wave)" in out
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"exactem {exactem.__version__}"
