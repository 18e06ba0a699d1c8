"""Train a dataset run (:mod:`toast_core.demo.dataset_run`) in a background process.

The same machinery as the default models' background trainer (:mod:`toast_core.demo.background`): one
process at the lowest CPU priority, an ``flock`` held for its whole life, a status file rewritten
atomically, SIGTERM/SIGINT/SIGHUP save the training state and exit (state ``stopped``; the next start
resumes). Files in the run's directory::

    background.lock / background.json / background.log   as for the default models
    request.json                                         the spec (and the estimate) the trainer runs

The status adds, per method, ``per_method[m] = {"state": "pending"|"training"|"done"|"kept", "seconds",
"test_acc", "eta_seconds"}`` and ``total_eta_seconds`` (the current method's time left plus the
estimate of the pending ones, when an estimate was given).

One training at a time on the machine: a start is refused while another dataset run or the default
models' trainer is running (two would share the same cores and both crawl).

Command line: ``python -m toast_core.demo.dataset_background status|stop --dir RUN_DIR`` (the trainer
runs as ``... run --dir RUN_DIR``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Optional

from ..cache import atomic_write_bytes
from .background import (LOCK_NAME, LOG_NAME, NICE, Tracker, describe, enter_trainer_process, is_running,
                         read_status, spawn_trainer, stop_trainer, take_lock, write_status)
from .dataset_run import DatasetRunSpec, datasets_home, run_dir, write_run_record

REQUEST_NAME = "request.json"
_MODULE = "toast_core.demo.dataset_background"


def running_elsewhere(directory: Optional[Path] = None) -> Optional[str]:
    """Why no training may start now (another dataset run or the default models train), else None."""
    home = datasets_home()
    if home.is_dir():
        for d in sorted(p for p in home.iterdir() if p.is_dir()):
            if d != directory and is_running(d):
                return f"the dataset run in {d.name} is training"
    from ..demo import demo_dir

    for quick in (False, True):
        if is_running(demo_dir(quick)):
            return "the default models are training in the background"
    return None


def start(spec: DatasetRunSpec, device: str = "auto", estimate: Optional[dict] = None,
          env: Optional[dict] = None, nice: int = NICE) -> dict:
    """Start training ``spec`` in the background unless a training runs already.

    Args:
        spec: the run (its folder is scanned without decoding first: problems raise here, at once).
        device: "auto", "cpu", "cuda". estimate: :func:`~toast_core.demo.dataset_run.estimate`'s result,
            for the time left of pending methods. env: extra environment. nice: niceness increment.
    Returns:
        ``{"started": bool, "pid", "reason", "dir", "log"}``.
    Raises:
        InputError: the folder cannot be trained on (every problem listed).
    """
    from ..data.scan import scan_folder

    report = scan_folder(spec.data, check_images=False, val_fraction=spec.val_fraction, seed=spec.seed)
    report.raise_if_unusable()
    root = run_dir(spec, report.fingerprint)
    root.mkdir(parents=True, exist_ok=True)
    log_path = root / LOG_NAME
    busy = running_elsewhere(root)
    fd = None if busy else take_lock(root / LOCK_NAME)
    if fd is None:
        status = read_status(root) or {}
        return {"started": False, "pid": status.get("pid"), "reason": busy or "already running", "dir": str(root),
                "log": str(log_path)}
    try:
        write_run_record(root, spec, report, device)  # the run is listed (and its progress shown) at once
        request = {"spec": spec.to_dict(), "estimate": estimate, "device": device}
        atomic_write_bytes(root / REQUEST_NAME, (json.dumps(request, indent=1) + "\n").encode())
        write_status(root, {"state": "starting", "pid": None, "methods": list(spec.methods), "name": spec.name,
                             "started": time.time(), "log": str(log_path)})
        proc = spawn_trainer(_MODULE, ["--dir", str(root), "--device", device, "--nice", str(nice)], root, fd,
                             f"dataset run {spec.name}: {', '.join(spec.methods)}", env)
        return {"started": True, "pid": proc.pid, "reason": "started", "dir": str(root), "log": str(log_path)}
    finally:
        os.close(fd)  # the trainer holds the lock through its inherited copy


def stop(directory: str | os.PathLike, timeout: float = 120.0) -> Optional[dict]:
    """Ask the run's trainer to save and exit (SIGTERM); wait up to ``timeout`` s. Returns its last status."""
    return stop_trainer(Path(directory), _MODULE, timeout)


def describe_run(status: Optional[dict]) -> str:
    """One line for people, with the whole run's time left when known."""
    text = describe(status)
    if status and status.get("state") == "running" and status.get("total_eta_seconds") is not None:
        from .background import format_seconds

        done = sum(1 for m in (status.get("per_method") or {}).values() if m.get("state") in ("done", "kept"))
        text += f" · {done}/{len(status.get('methods') or [])} methods done · all: " \
                f"{format_seconds(status['total_eta_seconds'])} left"
    return text


class RunTracker(Tracker):
    """The default trainer's status writer, plus the per-method states and the whole run's time left."""

    def __init__(self, out: Path, spec: DatasetRunSpec, stop_event: threading.Event, estimate: Optional[dict]):
        super().__init__(out, list(spec.methods), stop_event, name=spec.name,
                         per_method={m: {"state": "pending"} for m in spec.methods}, total_eta_seconds=None)
        self.estimates = {m: v.get("seconds") for m, v in ((estimate or {}).get("methods") or {}).items()}
        for m, secs in self.estimates.items():
            if m in self.status["per_method"]:
                self.status["per_method"][m]["eta_seconds"] = secs

    def _total_eta(self) -> Optional[float]:
        current = self.status.get("eta_seconds")
        pending = [self.estimates.get(m) for m, v in self.status["per_method"].items() if v["state"] == "pending"]
        if current is None or any(p is None for p in pending):
            return None
        return round(current + sum(pending), 1)

    def on_method(self, method: str, state: str, info: dict) -> None:
        entry = self.status["per_method"].setdefault(method, {})
        if state == "start":
            entry.update(state="training", eta_seconds=self.estimates.get(method))
            self.status.update(step=0, total=None, epoch=0, epoch_total=info.get("epochs"), eta_seconds=None,
                               phase="preparing")
            self.write(method=method, message=f"training {method}")
            return
        entry.update(state=state, eta_seconds=0.0, seconds=info.get("seconds"), test_acc=info.get("test_acc"),
                     val_acc=info.get("val_acc"))
        self.write(message=f"{method}: {state}")

    def write(self, force: bool = True, **changes) -> None:
        """Every write carries the current method's and the whole run's time left."""
        self.status.update(changes)
        method = self.status.get("method")
        if method in self.status["per_method"] and self.status["per_method"][method].get("state") == "training":
            self.status["per_method"][method]["eta_seconds"] = self.status.get("eta_seconds")
        self.status["total_eta_seconds"] = self._total_eta()
        super().write(force)


def run(directory: Path, device: str, lock_fd: Optional[int], nice: int) -> int:
    """The trainer process: hold the lock, lower the priority, train the run, record the outcome."""
    from ..errors import TrainingStopped
    from .dataset_run import train_dataset

    entered = enter_trainer_process(directory / LOCK_NAME, lock_fd, nice)
    if entered is None:
        return 3
    lock_fd, stop_event = entered
    request = json.loads((directory / REQUEST_NAME).read_text())
    spec = DatasetRunSpec.from_dict(request["spec"])
    tracker = RunTracker(directory, spec, stop_event, request.get("estimate"))
    tracker.write()
    t0 = time.perf_counter()
    try:
        import torch

        if not os.environ.get("OMP_NUM_THREADS"):  # a value set on purpose (a shared machine) is kept
            torch.set_num_threads(os.cpu_count() or 1)
        try:
            results = train_dataset(spec, device=device, callbacks=[tracker], echo=True)
        except TrainingStopped as e:
            tracker.write(state="stopped", message=str(e), eta_seconds=None, total_eta_seconds=None,
                          seconds=round(time.perf_counter() - t0, 1))
            print(f"stopped: {e}", flush=True)
            return 0
        tracker.write(state="done", method=None, eta_seconds=None, total_eta_seconds=None, fraction=1.0,
                      seconds=round(time.perf_counter() - t0, 1),
                      trained={m: r.get("seconds") for m, r in results["methods"].items() if not r.get("cached")})
        return 0
    except BaseException as e:  # noqa: BLE001 - recorded for the app, then re-raised for the log
        tracker.write(state="failed", error=f"{type(e).__name__}: {e}", eta_seconds=None, total_eta_seconds=None)
        raise
    finally:
        os.close(lock_fd)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog=f"python -m {_MODULE}", description=__doc__.split("\n\n")[0])
    ap.add_argument("action", choices=("status", "stop", "run"))
    ap.add_argument("--dir", required=True, help="the dataset run's directory")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--lock-fd", type=int, default=None)
    ap.add_argument("--nice", type=int, default=NICE)
    args = ap.parse_args(argv)
    directory = Path(args.dir)
    if args.action == "run":
        return run(directory, args.device, args.lock_fd, args.nice)
    status = stop(directory) if args.action == "stop" else read_status(directory)
    print(describe_run(status))
    return 0


if __name__ == "__main__":
    sys.exit(main())
