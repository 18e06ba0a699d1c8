"""Train the demo checkpoints the app still lacks in a background process, one at a time.

The app's first start (``scripts/run_app.sh``) runs ``prepare-demo --background``: the default backbone,
the task and the shipped checkpoints in the foreground (about 30 s on 2 cores), then :func:`start`
launches one process that runs :func:`toast_core.demo.prepare_demo` for the rest — full fine-tuning on a
CPU; on a GPU everything the GPU plan trains — at lower CPU priority (``nice``), and returns at once. The
app shows its progress and picks each checkpoint up when it is complete (``is_complete_checkpoint``: the
final file is renamed into place, so a half-written one is never seen).

Files in the demo directory::

    background.lock   flock()-ed by the trainer for its whole life (the kernel releases it at exit)
    background.json   its status: state, method, step/total, remaining time (rewritten atomically)
    background.log    its output

One trainer at a time: :func:`start` takes the lock before it spawns the trainer and hands it over, so a
second start (the app restarted, a second session's button) finds it held and reports the running one.

Stopping and resuming: SIGTERM, SIGINT or SIGHUP make the trainer finish its current step, save the
training state (``last.safetensors``) and exit with state ``stopped``; the next start resumes from that
step. A trainer killed outright resumes from its last epoch. The trainer does not stop with the app:
restarting the app while it trains starts no second training and loses nothing.

Command line: ``python -m toast_core.background status|stop [--quick]`` (the trainer itself runs as
``python -m toast_core.background run ...``).
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterable, Optional

from ..cache import atomic_write_bytes

LOCK_NAME = "background.lock"
STATUS_NAME = "background.json"
LOG_NAME = "background.log"
NICE = 19  # the lowest priority: the app and the browser win every contended core
#: seconds between status writes while steps run (state changes are written at once)
STATUS_EVERY = 1.0
ACTIVE = ("starting", "running")


# ------------------------------------------------------------------------------------------------
# Reading the state (the app, the command line)
# ------------------------------------------------------------------------------------------------

def _out(out: Optional[str | os.PathLike], quick: bool) -> Path:
    if out is not None:
        return Path(out)
    from . import demo_dir

    return demo_dir(quick)


def is_running(out: str | os.PathLike) -> bool:
    """True while a trainer holds ``out/background.lock``."""
    lock = Path(out) / LOCK_NAME
    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def read_status(out: str | os.PathLike) -> Optional[dict]:
    """The trainer's status file as a dict (None when there is none), with ``running`` (the lock is
    held now). A status left ``running`` by a trainer that was killed reads as ``interrupted``."""
    path = Path(out) / STATUS_NAME
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(status, dict):
        return None
    status["running"] = is_running(out)
    if status.get("state") in ACTIVE and not status["running"]:
        # "starting" is written by the launcher just before the trainer takes over the lock
        fresh = status.get("state") == "starting" and time.time() - float(status.get("updated", 0)) < 30
        if not fresh:
            status["state"] = "interrupted"
    return status


def pending_methods(out: Optional[str | os.PathLike] = None, quick: bool = False, device: str = "auto") -> list[str]:
    """The plan's methods without a complete checkpoint in ``out`` (default: the demo directory)."""
    from ..io.checkpoints import is_complete_checkpoint
    from . import plan_for
    from ..device import resolve_device

    root = _out(out, quick)
    plan = plan_for(resolve_device(device), quick)
    return [r.method for r in plan.recipes if not is_complete_checkpoint(root / r.method)]


def describe(status: Optional[dict]) -> str:
    """One line for people: what the trainer does now and how long it has left."""
    if not status:
        return "no background training"
    state = status.get("state")
    method = status.get("method") or ", ".join(status.get("methods") or []) or "the demo checkpoints"
    if state == "starting" or (state == "running" and not status.get("total")):
        return f"{method}: starting (loading the data and the model)"
    if state == "running":
        text = f"{method}: step {status.get('step')}/{status.get('total')}"
        if status.get("epoch_total"):
            text += f" · epoch {min(status.get('epoch', 0) + 1, status['epoch_total'])}/{status['epoch_total']}"
        eta = status.get("eta_seconds")
        text += f" · {format_seconds(eta)} left" if eta is not None else " · estimating the time left"
        if status.get("phase") == "evaluating":
            text += " (evaluating)"
        return text
    if state == "done":
        return f"done in {format_seconds(status.get('seconds'))}"
    if state == "stopped":
        return f"stopped at step {status.get('step')}/{status.get('total')}; the next start resumes from there"
    if state == "interrupted":
        return "interrupted (the trainer is gone); the next start resumes from the last saved epoch"
    if state == "failed":
        return f"failed: {status.get('error')} (log: {status.get('log')})"
    return str(state)


def format_seconds(seconds: Optional[float]) -> str:
    if seconds is None:
        return "?"
    s = max(0, int(round(float(seconds))))
    if s < 60:
        return f"about {max(s, 5) // 5 * 5} s" if s >= 5 else "a few seconds"
    m, s = divmod(s, 60)
    return f"about {m} min {s // 10 * 10:02d} s" if m < 10 else f"about {m} min"


# ------------------------------------------------------------------------------------------------
# Starting and stopping
# ------------------------------------------------------------------------------------------------

_MODULE = "toast_core.background"  # the trainer runs as `python -m toast_core.background run`


def take_lock(lock: Path, tries: int = 20) -> Optional[int]:
    """An fd holding an exclusive flock on ``lock``, or None when a trainer holds it. (A reader's
    short shared lock, from :func:`is_running`, is waited out.)"""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    for i in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if i + 1 < tries:
                time.sleep(0.05)
    os.close(fd)
    return None


def write_status(out: Path, status: dict) -> None:
    """Write a trainer's status file atomically (readers add ``running`` themselves)."""
    status = {k: v for k, v in status.items() if k != "running"}
    status["updated"] = time.time()
    atomic_write_bytes(out / STATUS_NAME, (json.dumps(status, indent=1) + "\n").encode())


def spawn_trainer(module: str, args: list[str], root: Path, fd: int, banner: str,
                  env: Optional[dict] = None) -> subprocess.Popen:
    """Start ``python -m MODULE run ARGS --lock-fd FD`` in its own session, logging to ``root/LOG_NAME``.
    The child inherits the locked ``fd`` (the caller closes its own copy)."""
    cmd = [sys.executable, "-m", module, "run", *args, "--lock-fd", str(fd)]
    package_root = str(Path(__file__).resolve().parents[2])
    child_env = dict(os.environ)
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, child_env.get("PYTHONPATH")) if p)
    child_env.update(env or {})
    with open(root / LOG_NAME, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {banner}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                pass_fds=(fd,), start_new_session=True, cwd=package_root, env=child_env)
    threading.Thread(target=proc.wait, daemon=True).start()  # reap it if this process lives on
    return proc


def stop_trainer(root: Path, module: str, timeout: float = 120.0) -> Optional[dict]:
    """Ask the trainer of ``root`` (a process running ``module``) to save its state and exit (SIGTERM);
    wait up to ``timeout`` seconds. Returns its last status (None when none ran)."""
    status = read_status(root)
    if not status or not status.get("running") or not status.get("pid"):
        return status
    pid = int(status["pid"])
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        cmdline = b""
    if module.encode() not in cmdline:
        return status
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while is_running(root) and time.monotonic() < deadline:
        time.sleep(0.2)
    return read_status(root)


def enter_trainer_process(lock: Path, lock_fd: Optional[int], nice: int) -> Optional[tuple[int, threading.Event]]:
    """The trainer process's first steps: hold the lock (unless the parent passed its fd), lower the
    priority, and turn SIGTERM/SIGINT/SIGHUP into a stop request (saved after the current step).
    Returns ``(lock_fd, stop_event)``, or None when another trainer holds the lock."""
    if lock_fd is None:
        lock_fd = take_lock(lock, tries=1)
        if lock_fd is None:
            print("another trainer holds the lock; nothing to do", flush=True)
            return None
    try:
        os.nice(nice)
    except OSError:
        pass
    stop_event = threading.Event()

    def ask_stop(signum, frame):  # noqa: ARG001
        print(f"signal {signum}: saving the training state after this step", flush=True)
        stop_event.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, ask_stop)
    return lock_fd, stop_event


def start(quick: bool = False, device: str = "auto", out: Optional[str | os.PathLike] = None,
          methods: Optional[Iterable[str]] = None, env: Optional[dict] = None, nice: int = NICE) -> dict:
    """Start the background trainer unless one runs or nothing is left to train.

    Args:
        quick: the quick plan (tests). device: "auto", "cpu", "cuda".
        out: the demo directory (default :func:`toast_core.demo.demo_dir`).
        methods: what to report as being trained (default: :func:`pending_methods`). The trainer runs
            ``prepare_demo`` for the whole plan, so what is complete and valid is kept.
        env: extra environment variables for the trainer. nice: its niceness increment.
    Returns:
        ``{"started": bool, "pid": int or None, "reason": str, "methods": [...], "log": path}``.
    """
    root = _out(out, quick)
    root.mkdir(parents=True, exist_ok=True)
    fd = take_lock(root / LOCK_NAME)
    if fd is None:
        status = read_status(root) or {}
        return {"started": False, "pid": status.get("pid"), "reason": "already running",
                "methods": status.get("methods", []), "log": str(root / LOG_NAME)}
    try:
        todo = list(methods) if methods is not None else pending_methods(root, quick, device)
        if not todo:
            return {"started": False, "pid": None, "reason": "nothing to train", "methods": [],
                    "log": str(root / LOG_NAME)}
        log_path = root / LOG_NAME
        write_status(root, {"state": "starting", "pid": None, "methods": todo, "quick": quick,
                            "started": time.time(), "log": str(log_path)})
        args = ["--out", str(root), "--device", device, "--methods", ",".join(todo), "--nice", str(nice)]
        proc = spawn_trainer(_MODULE, args + (["--quick"] if quick else []), root, fd,
                             f"background training: {', '.join(todo)}", env)
        return {"started": True, "pid": proc.pid, "reason": "started", "methods": todo, "log": str(log_path)}
    finally:
        os.close(fd)  # the trainer holds the lock through its inherited copy


def stop(out: Optional[str | os.PathLike] = None, quick: bool = False, timeout: float = 120.0) -> Optional[dict]:
    """Ask the running trainer to save its state and exit (SIGTERM); wait up to ``timeout`` seconds.
    Returns its last status (None when none ran)."""
    return stop_trainer(_out(out, quick), _MODULE, timeout)


# ------------------------------------------------------------------------------------------------
# The trainer process
# ------------------------------------------------------------------------------------------------

class Tracker:
    """Receives prepare-demo's progress and the trainer's callbacks, writes ``background.json`` and
    estimates the time left; ``on_step`` returns False (stop) once ``stop_event`` is set."""

    def __init__(self, out: Path, methods: list[str], stop_event: threading.Event, **fields):
        self.out, self.stop_event = out, stop_event
        self.status = {"state": "running", "pid": os.getpid(), "methods": methods, "method": None,
                       "step": 0, "total": None, "epoch": 0, "epoch_total": None, "eta_seconds": None,
                       "fraction": 0.0, "message": "", "started": time.time(), "log": str(out / LOG_NAME),
                       **fields}
        self._last_write = 0.0
        self._rate_key: Optional[tuple] = None
        self._t0 = self._step0 = 0
        self._overhead = 0.12  # evaluation time as a share of the training steps' time, until measured
        self._per_step: Optional[float] = None

    def write(self, force: bool = True, **changes) -> None:
        self.status.update(changes)
        now = time.monotonic()
        if force or now - self._last_write >= STATUS_EVERY:
            self._last_write = now
            write_status(self.out, self.status)

    # prepare_demo's progress(fraction, text)
    def progress(self, fraction: float, text: str) -> None:
        method = self.status.get("method")
        m = re.match(r"training ([\w-]+)$", text) or re.match(r"([\w-]+): step \d+/\d+", text)
        if m:
            method = m.group(1)
        elif "pre-tuning" in text:
            method = "pretune"
        changed = method != self.status.get("method")
        if changed:
            self.status.update(step=0, total=None, epoch=0, epoch_total=None, eta_seconds=None, phase="preparing")
        self.write(force=changed, method=method, fraction=round(float(fraction), 4), message=text)

    # trainer callbacks
    def on_step(self, step: int, total: int, loss: float, lr: float):
        now = time.monotonic()
        key = (self.status.get("method"), total)
        if key != self._rate_key or step <= self._step0:
            self._rate_key, self._t0, self._step0 = key, now, step
        done = step - self._step0
        eta = None
        if done > 0:
            per_step = (now - self._t0) / done
            # steps left, their evaluation share, and the test evaluation at the end (~ one share of an epoch)
            epochs = self.status.get("epoch_total") or 1
            eta = per_step * (total - step) * (1 + self._overhead) + per_step * total / epochs * self._overhead
            self._per_step = per_step
        self.write(force=False, step=step, total=total, eta_seconds=None if eta is None else round(eta, 1),
                   phase="training", loss=round(float(loss), 4))
        return False if self.stop_event.is_set() else None

    def on_epoch(self, epoch: int, metrics: dict):
        per_step = self._per_step
        seconds = metrics.get("seconds")
        if per_step and seconds and self.status.get("total"):
            steps = self.status["total"] / max(self.status.get("epoch_total") or 1, 1)
            self._overhead = max(0.0, float(seconds) / (steps * per_step) - 1.0)
        self.write(epoch=epoch, phase="training")

    def on_message(self, text: str):
        m = re.search(r"at epoch (\d+), step (\d+)", text)
        if text.startswith("resumed from") and m:
            self.status["resumed_at_step"] = int(m.group(2))
        print(f"[{self.status.get('method')}] {text}", flush=True)
        self.write(message=text)


def _epochs_of(plan, method: Optional[str]) -> Optional[int]:
    if method == "pretune":
        return plan.pretune_epochs
    return next((r.epochs for r in plan.recipes if r.method == method), None)


def _task_reference_first(plan, tracker) -> None:
    """The far-from-the-task notice's reference (about half a minute on 2 cores), before the long training,
    so that a first upload finds it cached. A failure is reported and does not stop the training."""
    try:
        from ..data.demo_task import ensure_demo_task
        from .reference import task_reference

        tracker.write(message="measuring the task's images once (far-from-the-task notice)")
        t0 = time.perf_counter()
        task_reference(ensure_demo_task(plan.task))
        print(f"task reference ready in {time.perf_counter() - t0:.1f} s", flush=True)
    except Exception as e:  # noqa: BLE001 - the notice is optional; the training is not
        print(f"task reference not computed: {type(e).__name__}: {e}", flush=True)


def run(out: Path, methods: list[str], quick: bool, device: str, lock_fd: Optional[int], nice: int) -> int:
    """The trainer process: hold the lock, lower the priority, run prepare-demo, record the outcome."""
    entered = enter_trainer_process(out / LOCK_NAME, lock_fd, nice)
    if entered is None:
        return 3
    lock_fd, stop_event = entered
    tracker = Tracker(out, methods, stop_event, quick=quick, nice=nice)
    tracker.write()
    t0 = time.perf_counter()
    try:
        import torch

        from . import plan_for, prepare_demo
        from ..errors import TrainingStopped
        from ..device import resolve_device

        torch.set_num_threads(os.cpu_count() or 1)
        plan = plan_for(resolve_device(device), quick)
        if not quick:
            _task_reference_first(plan, tracker)
        base_progress = tracker.progress

        def progress(fraction: float, text: str) -> None:
            base_progress(fraction, text)
            tracker.status["epoch_total"] = _epochs_of(plan, tracker.status.get("method"))

        tracker.progress = progress
        try:
            results = prepare_demo(out_dir=out, quick=quick, device=device, plan=plan, progress=progress,
                                   callbacks=[tracker], echo=True)
        except TrainingStopped as e:
            tracker.write(state="stopped", message=str(e), eta_seconds=None, seconds=round(time.perf_counter() - t0, 1))
            print(f"stopped: {e}", flush=True)
            return 0
        tracker.write(state="done", method=None, eta_seconds=None, fraction=1.0,
                      seconds=round(time.perf_counter() - t0, 1),
                      trained={m: r.get("train_seconds") for m, r in results["methods"].items() if not r.get("cached")})
        return 0
    except BaseException as e:  # noqa: BLE001 - recorded for the app, then re-raised for the log
        tracker.write(state="failed", error=f"{type(e).__name__}: {e}", eta_seconds=None)
        raise
    finally:
        os.close(lock_fd)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m toast_core.background", description=__doc__.split("\n\n")[0])
    ap.add_argument("action", choices=("status", "stop", "run"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--methods", default="")
    ap.add_argument("--lock-fd", type=int, default=None)
    ap.add_argument("--nice", type=int, default=NICE)
    args = ap.parse_args(argv)
    out = _out(args.out, args.quick)
    if args.action == "run":
        return run(out, [m for m in args.methods.split(",") if m], args.quick, args.device, args.lock_fd, args.nice)
    status = stop(out) if args.action == "stop" else read_status(out)
    print(describe(status))
    return 0


if __name__ == "__main__":
    sys.exit(main())
