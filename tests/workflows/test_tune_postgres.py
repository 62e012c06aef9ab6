"""Many machines, one study: two `medlens tune` workers share a study in a real PostgreSQL server.

The fixture starts a throw-away PostgreSQL cluster (Debian's ``postgresql`` package: ``initdb`` and
``pg_ctl`` from ``/usr/lib/postgresql/*/bin``) in a temporary folder, listening on 127.0.0.1 at a
free port, with trust authentication for one user. PostgreSQL refuses to run as root, so as root
the server runs as the ``postgres`` user the package creates. Where it cannot be started the test
skips with the reason, except under ``CI=true``, where it fails (``make test`` installs the package
when it runs as root with apt-get).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SPACE = {"optim.lr": {"log": [1.0e-3, 1.0e-2]}, "model.kwargs.dropout": [0.2, 0.5]}


def _unavailable(reason: str):
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"PostgreSQL cannot be started under CI=true: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL cannot be started: {reason}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """``postgresql://medlens@127.0.0.1:PORT/medlens`` of a server started for this module."""
    initdb = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not initdb:
        _unavailable("no /usr/lib/postgresql/*/bin/initdb (Debian package postgresql; `make test` installs it as root)")
    bindir = Path(initdb[-1]).parent
    as_user: list[str] = []
    home = Path(tempfile.mkdtemp(prefix="medlens-pg-"))
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            _unavailable("running as root needs runuser to start the server as the postgres user")
        try:
            import pwd

            owner = pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("running as root needs the postgres user (the Debian package creates it)")
        os.chown(home, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = home / "data", _free_port()
    steps = [
        [*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "medlens", "--auth=trust", "-E", "UTF8"],
        [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(home / "server.log"), "-w", "-t", "60",
         "-o", f"-p {port} -k {home} -c listen_addresses=127.0.0.1", "start"],
        [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "medlens", "medlens"],
    ]
    try:
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                log = (home / "server.log").read_text()[-500:] if (home / "server.log").is_file() else ""
                _unavailable(f"{Path(step[len(as_user)]).name} failed: {(done.stderr or done.stdout).strip()[-500:]} "
                             f"{log}")
        yield f"postgresql://medlens@127.0.0.1:{port}/medlens"
    finally:
        if (data / "postmaster.pid").is_file():
            subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                           capture_output=True, timeout=60)
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.integration
@pytest.mark.slow
def test_two_workers_finish_n_trials_together_with_no_duplicate_and_none_lost(postgres_url, medmnist_root, tmp_path):
    import optuna
    from optuna.trial import TrialState

    from medlens.engine.run_folder import RunFolder

    trials = 6
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    workers = []
    for name in ("w1", "w2"):  # two machines: each its own folder of trial runs, one study
        args = [sys.executable, "-m", "medlens", "tune", "breastmnist", "--root", str(medmnist_root), "--recipe",
                "default", "--model", "cnn_small", "--batch-size", "64", "--epochs", "1", "--space", str(space),
                "--trials", str(trials), "--pruner", "none", "--tracking-uri", "none", "--no-progress",
                "--no-report", "--storage", postgres_url, "--study", "shared", "--out", str(tmp_path / name)]
        workers.append(subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        env={**os.environ}))
    outputs = [w.communicate(timeout=600) for w in workers]
    for worker, (_, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err[-2000:]

    study = optuna.load_study(study_name="shared", storage=postgres_url)
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == trials, "together the workers finish exactly --trials trials"
    others = [t for t in study.trials if t.state not in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert all(t.state == TrialState.FAIL and t.user_attrs.get("surplus") for t in others), \
        "the only unfinished trials are claims past --trials, never run"
    numbers = [t.number for t in finished]
    assert len(set(numbers)) == trials
    folders = {name: {int(p.name) for p in RunFolder(tmp_path / name).trials_dir.iterdir()} for name in ("w1", "w2")}
    assert not folders["w1"] & folders["w2"], "no trial ran on both workers"
    assert folders["w1"] | folders["w2"] == set(numbers), "every trial ran once, in one worker's folder"
    assert folders["w1"] and folders["w2"], "both workers took part"
    for t in finished:
        assert RunFolder(t.user_attrs["run_dir"]).is_finished
    # Each worker writes its summary when it stops; one that stops first cannot count a trial the
    # other was still finishing (seen in CI), so the summary written last must count them all.
    last = max((RunFolder(tmp_path / name).tune_summary for name in ("w1", "w2")), key=lambda f: f.stat().st_mtime_ns)
    summary = yaml.safe_load(last.read_text())
    assert summary["counts"]["complete"] + summary["counts"]["pruned"] == trials
