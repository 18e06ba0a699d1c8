"""How a run reports: trainer events dispatched to callbacks, and a tqdm bar for the command line.

Callbacks are objects with any of ``on_step(step, total, loss, lr)``, ``on_epoch(epoch, metrics)``,
``on_message(text)``, or plain functions called as ``fn(event_name, *args)``. A callback that returns
``False`` from ``on_step`` stops the run after that step.
"""
from __future__ import annotations

from typing import Any, Iterable

class Events:
    """Dispatches trainer events to callbacks (objects with on_* methods, or functions)."""

    def __init__(self, callbacks: Iterable[Any] = (), enabled: bool = True):
        self.callbacks = list(callbacks or []) if enabled else []

    def emit(self, name: str, *args) -> bool:
        """Send an event; True if a callback asked to stop (returned False)."""
        stop = False
        for cb in self.callbacks:
            fn = getattr(cb, name, None)
            if fn is not None and callable(fn):
                result = fn(*args)
            elif callable(cb) and not hasattr(cb, "on_step"):
                result = cb(name, *args)
            else:
                continue
            stop = stop or result is False
        return stop


class TqdmProgress:
    """A tqdm bar over all steps, epoch summaries and messages printed above it."""

    def __init__(self, desc: str = "train"):
        self.desc, self.bar = desc, None

    def on_step(self, step, total, loss, lr):
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=self.desc, unit="step", dynamic_ncols=True, initial=step - 1)
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)

    def on_epoch(self, epoch, metrics):
        text = f"{self.desc} epoch {epoch}: " + ", ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items() if k != "epoch")
        self.on_message(text)

    def on_message(self, text):
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
