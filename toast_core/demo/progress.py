"""How prepare-demo reports: one 0..1 fraction over its stages, each stage weighted by its declared cost.

The app's progress bar and the background trainer read the same :data:`Progress` callback,
``progress(fraction, text)``: fraction in [0, 1], never decreasing.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional

#: ``progress(fraction, text)``: what prepare-demo reports (fraction in [0, 1], never decreasing).
Progress = Callable[[float, str], None]

#: Relative cost of each stage (about its share of the CPU plan's time); a method stage not listed
#: weighs :data:`METHOD_WEIGHT`, an installed shipped checkpoint :data:`SHIPPED_WEIGHT`.
STAGE_WEIGHTS: dict[str, float] = {"backbone": 1.0, "task": 4.0, "pretune": 6.0,
                                   "linear": 1.0, "toast": 5.0, "toast-lite": 5.0}
METHOD_WEIGHT = 4.0
SHIPPED_WEIGHT = 0.2


def stage_weights(methods: Iterable[str], shipped: Iterable[str], pretune: bool) -> dict[str, float]:
    """The weights of one prepare-demo call: backbone, task, (pretune), then one per method."""
    shipped = set(shipped)
    weights = {"backbone": STAGE_WEIGHTS["backbone"], "task": STAGE_WEIGHTS["task"]}
    if pretune:
        weights["pretune"] = STAGE_WEIGHTS["pretune"]
    for m in methods:
        weights[m] = SHIPPED_WEIGHT if m in shipped else STAGE_WEIGHTS.get(m, METHOD_WEIGHT)
    return weights


class Stages:
    """Maps stage progress onto one 0..1 fraction for ``progress(fraction, text)`` (never decreasing)."""

    def __init__(self, weights: dict[str, float], progress: Optional[Progress], echo: bool):
        self.weights, self.progress, self.echo = weights, progress, echo
        self.total = sum(weights.values()) or 1.0
        self.done, self.within = 0.0, 0.0
        self.current: Optional[str] = None

    def fraction(self) -> float:
        return min(1.0, (self.done + self.weights.get(self.current, 0.0) * self.within) / self.total)

    def start(self, name: str, text: str) -> None:
        if self.current is not None:
            self.done += self.weights.get(self.current, 0.0)
        self.current, self.within = name, 0.0
        self.say(text)

    def say(self, text: str, within: Optional[float] = None, echo: Optional[bool] = None) -> None:
        if within is not None:
            self.within = max(self.within, min(1.0, within))
        if self.progress is not None:
            self.progress(self.fraction(), text)
        if (self.echo if echo is None else echo) and text:
            print(f"[prepare-demo {100 * self.fraction():3.0f}%] {text}", flush=True)

    def step_callback(self, label: str):
        stages = self

        class _StageProgress:
            def on_step(self, step, total, loss, lr):
                stages.say(f"{label}: step {step}/{total}, loss {loss:.3f}", step / max(total, 1), echo=False)

            def on_message(self, text):
                stages.say(f"{label}: {text}", echo=False)

        return _StageProgress()

    def finish(self, text: str) -> None:
        self.done, self.current, self.within = self.total, None, 0.0
        if self.progress is not None:
            self.progress(1.0, text)
        if self.echo:
            print(f"[prepare-demo 100%] {text}", flush=True)
