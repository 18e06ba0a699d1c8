"""What a benchmark run measures: the backbones, the sections and their settings."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


from ..errors import InputError

SECTIONS = ("record", "peer", "toast", "train", "analysis", "scaling")
NUM_CLASSES = 10
MiB = 2 ** 20


@dataclass(frozen=True)
class BackboneSpec:
    """One backbone architecture to benchmark (random weights).

    Attributes:
        name: timm model name.
        img_size: input side in pixels (the model is built for it).
        kwargs: extra ``timm.create_model`` arguments (tiny models for ``--quick``).
    """

    name: str
    img_size: int = 224
    kwargs: dict = field(default_factory=dict)

    def label(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in sorted(self.kwargs.items()))
        return f"{self.name}@{self.img_size}" + (f"[{extra}]" if extra else "")


DEFAULT_SPECS = (BackboneSpec("vit_small_patch14_dinov2", 224), BackboneSpec("vit_base_patch16_224", 224))
QUICK_SPECS = (
    BackboneSpec("vit_tiny_patch16_224", 32, dict(patch_size=8, depth=3, embed_dim=32, num_heads=2)),
    BackboneSpec("vit_small_patch14_reg4_dinov2", 28, dict(patch_size=7, depth=2, embed_dim=24, num_heads=3)),
)


@dataclass
class BenchConfig:
    """What to measure and how often.

    Attributes:
        specs: backbones; the first one is used by ``analysis`` and ``scaling``.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        dtype: ``"fp32"`` or ``"bf16"`` (autocast); ``None`` = bf16 on CUDA, fp32 on CPU.
        batch: batch size of ``record``, ``peer``, ``toast``, ``train`` and ``analysis``.
        reps, warmup: timed and untimed repetitions per variant (``train_reps`` for training steps,
            ``scaling_reps`` for the scaling grid).
        sizes, batches: the scaling grid (image side in px, batch size).
        sections: subset of :data:`SECTIONS`.
        rss: also measure the peak RSS of each memory variant in a fresh subprocess (CPU only).
        peer_max_bytes: in ``scaling``, measure the peer only where its kept matrices are estimated
            below this; above, the analytic size is reported.
        peak_tflops: the device's dense peak (for the share of peak the forward reaches), if known.
        threads: torch intra-op threads for the run (restored after); None = leave as is.
        profile: in ``record``, also profile the plain forward and recording with ``torch.profiler``
            (host time to issue the work, kernel or CPU-op time, number of ATen calls, top operators).
        quick: tiny models and sizes, 2 repetitions (seconds; used by the tests).
        seed: seed of inputs, weights and masks.
        command: the command line, recorded in the output.
    """

    specs: tuple = DEFAULT_SPECS
    device: str = "cpu"
    dtype: Optional[str] = None
    batch: int = 8
    reps: int = 7
    warmup: int = 1
    train_reps: int = 5
    scaling_reps: int = 3
    sizes: tuple = (224, 336, 448)
    batches: tuple = (1, 8, 32)
    sections: tuple = SECTIONS
    rss: bool = True
    peer_max_bytes: int = 1 << 30
    peak_tflops: Optional[float] = None
    threads: Optional[int] = None
    profile: bool = False
    quick: bool = False
    seed: int = 0
    command: str = ""

    @classmethod
    def quick_config(cls, **overrides) -> "BenchConfig":
        base = dict(specs=QUICK_SPECS, batch=2, reps=2, warmup=1, train_reps=2, scaling_reps=1,
                    sizes=(32, 48), batches=(1, 2), rss=False, threads=1, quick=True)
        base.update(overrides)
        return cls(**base)

    def validate(self) -> None:
        bad = [s for s in self.sections if s not in SECTIONS]
        if bad:
            raise InputError(f"unknown section(s) {bad}; choose from {', '.join(SECTIONS)}")
        if not self.specs:
            raise InputError("at least one backbone is needed")
        for name, v in [("batch", self.batch), ("reps", self.reps), ("train_reps", self.train_reps),
                        ("scaling_reps", self.scaling_reps)]:
            if int(v) < 1:
                raise InputError(f"{name} must be >= 1, got {v}")
        if self.threads is not None and int(self.threads) < 1:
            raise InputError(f"threads must be >= 1, got {self.threads}")
        if self.warmup < 0:
            raise InputError(f"warmup must be >= 0, got {self.warmup}")
        if any(int(s) < 1 for s in self.sizes) or any(int(b) < 1 for b in self.batches):
            raise InputError("sizes and batches must be positive")
        if self.dtype not in (None, "fp32", "bf16"):
            raise InputError(f"dtype must be fp32 or bf16, got {self.dtype!r}")
        if self.device not in ("cpu", "cuda", "auto") and not str(self.device).startswith("cuda:"):
            raise InputError(f"device must be cpu, cuda or auto, got {self.device!r}")
