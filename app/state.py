"""What the pages import (``from app import state``): one namespace over the app's modules. All maths
lives in :mod:`toast_core`; here: :mod:`app.config` (environment), :mod:`app.demo` (what the library says
about the demo checkpoints), :mod:`app.models` (the session's models), :mod:`app.background` (the
background trainer's progress), :mod:`app.images` (gallery, uploads, picker), :mod:`app.controls` (shared
controls) and :mod:`app.figures` (patch picker, figure preview cache).
"""
from __future__ import annotations

from .background import BACKGROUND_REFRESH, background_progress, background_sidebar  # noqa: F401
from .config import (ASSETS, COLORMAPS, IMAGE_SUFFIXES, KEEP, MAX_SESSION_UPLOADS, ROOT,  # noqa: F401
                     configure_torch_threads, device, keep_widget_state, models_mode, paths_allowed, slug)
from .demo import (background_active, background_status, demo_checkpoint_keys, is_quick,  # noqa: F401
                   pending_demo_methods, prepare_demo, prepare_demo_available)
from .figures import add_patch_picker, figure_preview, patch_from_point, spec_digest  # noqa: F401
from .images import (add_upload, gallery, gallery_image, image_options, image_picker, resolve_image,  # noqa: F401
                     upload_widget, uploads)
from .models import (base_model_keys, directory_checkpoint_keys, load_model, resolve_checkpoint_path,  # noqa: F401
                     save_uploaded_checkpoint, session_entries)
from .controls import (Timer, colormap_select, model_work, kind_select, layer_slider, methods_multiselect,  # noqa: F401
                      opacity_slider, pass_select, predictions_text, sanitize_choice, sidebar_status,
                      untrained_notice)
