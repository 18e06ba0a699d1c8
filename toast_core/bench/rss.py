"""A cross-check of peak memory: the RSS high-water mark of one call in a fresh process."""
from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch

from .config import BackboneSpec
from .workload import Peer, build

def _status_kib(key: str) -> int:
    m = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(m.group(1)) if m else -1


def rss_peak_subprocess(spec: BackboneSpec, batch: int, variant: str, seed: int = 0,
                        timeout: float = 900) -> Optional[int]:
    """Peak RSS growth (bytes) of one variant (plain, ours, peer) run once in a fresh Python process.

    The child builds the model, runs the variant once to warm up, resets the high-water mark
    (``/proc/self/clear_refs``), runs it again and reports VmHWM − VmRSS. glibc is told to return
    large freed blocks to the system (fixed mmap threshold) so RSS tracks live memory.
    Returns None where /proc is not available or the child fails.
    """
    if not Path("/proc/self/clear_refs").exists():
        return None
    payload = json.dumps({"spec": asdict(spec), "batch": batch, "variant": variant, "seed": seed})
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    try:
        proc = subprocess.run([sys.executable, "-m", "toast_core.bench", "--rss-child", payload],
                              capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=str(Path(__file__).resolve().parents[2]))
        return int(json.loads(proc.stdout.strip().splitlines()[-1])["delta_bytes"])
    except (subprocess.SubprocessError, ValueError, KeyError, IndexError, json.JSONDecodeError):
        return None


def _rss_child(payload: str) -> None:
    from ..recording import extract_attention

    job = json.loads(payload)
    spec = BackboneSpec(job["spec"]["name"], job["spec"]["img_size"], job["spec"]["kwargs"])
    device = torch.device("cpu")
    model = build("linear", spec, device, seed=job["seed"])
    g = torch.Generator().manual_seed(job["seed"])
    x = torch.randn(job["batch"], 3, spec.img_size, spec.img_size, generator=g)
    if job["variant"] == "peer":
        peer = Peer(spec, device, source=model)
        fn = peer.cls_maps
    elif job["variant"] == "ours":
        def fn(images):
            return extract_attention(model, images).cls["main"]
    else:
        fn = model
    with torch.no_grad():
        fn(x)
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_kib("VmRSS")
        out = fn(x)
        hwm = _status_kib("VmHWM")
    del out
    print(json.dumps({"delta_bytes": (hwm - before) * 1024}))
