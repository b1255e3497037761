"""Watching runs: TensorBoard, W&B (offline) and trackio beside metrics.jsonl, one tracker run per
run across a kill and resume; evaluation of the live model during training; the report's
self-contained index.html in a real headless browser. (The same through a requeue on the local
Slurm cluster: test_slurm.py.)"""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, cli_in_process, run_cli, tiny_overrides

TIMING = ("tokens_per_s", "elapsed_s")


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def tensorboard_scalars(directory: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_trackers_keep_one_run_across_a_kill_and_resume(cache_dir, tmp_path):
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    args = tiny_overrides(cache_dir, tmp_path, "run_name=watched", "train.tokens=61440", "train.checkpoint_every=20",
                          "train.loggers=[jsonl,tensorboard,wandb]", "train.wandb_mode=offline")
    proc = subprocess.Popen([sys.executable, "-m", "ablate.train", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    run = tmp_path / "default" / "watched"
    deadline = time.time() + 300
    while not (run / "checkpoints" / "step_00000020.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first_id = json.loads((run / "trackers.json").read_text())["id"]
    cli_in_process("ablate.train", *args)
    assert json.loads((run / "summary.json").read_text())["attempts"][0]["status"] == "killed"
    assert json.loads((run / "trackers.json").read_text())["id"] == first_id
    # W&B: every attempt wrote an offline run with the same id (wandb sync merges them into one run)
    offline = sorted((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and {p.name.rsplit("-", 1)[1] for p in offline} == {first_id}
    assert all(list(p.glob("*.wandb")) for p in offline)
    # TensorBoard: one directory per run under the experiment's, each step once, the numbers of metrics.jsonl
    loss = tensorboard_scalars(tmp_path / "default" / "tensorboard" / "watched", "loss")
    logged = [(r["step"], r["loss"]) for r in metrics(run) if "loss" in r]
    assert [s for s, _ in loss] == [s for s, _ in logged] == list(range(1, 61))
    assert all(v == pytest.approx(w, rel=1e-6) for (_, v), (_, w) in zip(loss, logged))


def test_trackio_logs_locally(cache_dir, tmp_path):
    pytest.importorskip("trackio")
    store = tmp_path / "trackio"
    run_cli("ablate.train", *tiny_overrides(cache_dir, tmp_path, "run_name=t", "train.tokens=10240",
                                            "train.loggers=[trackio]", "train.tracker_project=watch"),
            env={"TRACKIO_DIR": str(store)})
    assert any(store.rglob("*watch*")), sorted(store.rglob("*"))  # the run logged where TRACKIO_DIR says


def test_a_missing_tracker_names_its_extra(monkeypatch):
    import importlib.util

    from ablate.registry import ConfigError
    from ablate.run.lifecycle import check_loggers

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'ablate\[wandb\]'"):
        check_loggers(["jsonl", "wandb"])
    with pytest.raises(ConfigError, match="valid: jsonl, tensorboard, wandb, trackio"):
        check_loggers(["mlflow"])


def test_evaluation_during_training_changes_no_step_and_is_reported(cache_dir, tmp_path):
    common = ("train.tokens=20480", "eval.probe_items=40", "eval.suites.probes.tasks=[ablate_agreement,ablate_length]")
    sweep = tiny_overrides(cache_dir, tmp_path, *common, "train.eval_every_tokens=5120", "model/position=rope,alibi",
                           "seed=0,1")
    cli_in_process("ablate.train", "-m", *sweep)
    plain = tiny_overrides(cache_dir, tmp_path / "plain", *common, "run_name=plain")
    cli_in_process("ablate.train", *plain)
    experiment = tmp_path / "default"
    runs = sorted(p for p in experiment.iterdir() if (p / "summary.json").exists())
    assert len(runs) == 4
    rope0 = next(r for r in runs if "rope" in r.name and r.name.endswith("-s0"))
    rows = metrics(rope0)
    live = [r for r in rows if "live" in r]
    assert [r["tokens"] for r in live] == [5120, 10240, 15360, 20480]
    assert all(set(r["live"]) == {"ablate_agreement", "ablate_length"} and r["live_s"] > 0 for r in live)
    # the live evaluation changes nothing of training: the same steps as a run without it
    strip = [{k: v for k, v in r.items() if k not in TIMING} for r in rows if "loss" in r]
    assert strip == [{k: v for k, v in r.items() if k not in TIMING} for r in metrics(tmp_path / "plain" / "default"
                                                                                        / "plain")]
    s = json.loads((rope0 / "summary.json").read_text())
    assert s["live_eval_s"] == pytest.approx(sum(r["live_s"] for r in live), rel=1e-2)
    assert 0 < s["live_eval_share"] < 1

    cli_in_process("ablate.report", f"path={experiment}")
    report = experiment / "report"
    assert (report / "during_training.png").stat().st_size > 10_000
    assert "eval during training (share of time)" in (report / "table.md").read_text()
    page = (report / "index.html").read_text()
    assert page.count("data:image/png;base64,") == len(list(report.glob("*.png"))) >= 3
    assert "<table" in page and "<h2>Verdict</h2>" in page and 'src="http' not in page  # nothing fetched


@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")), reason="no headless browser")
def test_index_html_opens_in_a_headless_browser(cache_dir, tmp_path):
    cli_in_process("ablate.train", "-m", *tiny_overrides(cache_dir, tmp_path, "train.tokens=10240", "seed=0,1"))
    cli_in_process("ablate.report", f"path={tmp_path / 'default'}")
    page = tmp_path / "default" / "report" / "index.html"
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files"]
    # what the browser built: the tables, and each inlined plot decoded to its real size
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", "<script>window.onload=()=>{document.title="
                     "[...document.images].map(i=>i.naturalWidth).join(',')+'|'+document.querySelectorAll"
                     "('table').length}</script></body>"))
    dom = subprocess.run([*common, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()], capture_output=True,
                         text=True, timeout=120).stdout
    title = dom.split("<title>")[1].split("</title>")[0]
    widths, tables = title.split("|")
    assert int(tables) >= 3 and widths and all(int(w) > 100 for w in widths.split(","))
    shot = tmp_path / "page.png"
    subprocess.run([*common, "--window-size=1200,1600", f"--screenshot={shot}", page.as_uri()], capture_output=True,
                   timeout=120)
    from PIL import Image

    image = Image.open(shot)
    assert image.size == (1200, 1600) and len(set(image.convert("L").getdata())) > 20  # not a blank page


def test_a_failing_tracker_is_dropped_and_training_goes_on(caplog):
    from ablate.config import RunConfig
    from ablate.run.rundir import RunDir
    from ablate.train.trackers import Trackers

    class Broken:
        def log(self, numbers, step):
            raise ConnectionResetError("Connection lost")

        def close(self):
            raise AssertionError("a dropped tracker is not closed")

    trackers = Trackers(RunConfig(), RunDir("/nonexistent"), {}, 0)
    trackers.sinks.append(Broken())
    trackers.log({"step": 1, "loss": 2.0})
    trackers.close()  # raises nothing: the broken one is gone
    assert trackers.sinks == [] and "going on without it" in caplog.text and "Connection lost" in caplog.text
