"""``prepare-demo``: the default backbone, the default task, TOAST pre-tuning and seven trained checkpoints.

One call builds everything the app's first start needs, in ``toast_home()/demo/`` (``demo-quick/`` for
``quick=True``)::

    pretune/model.safetensors      TOAST stage 1, least squares on generic photo crops (initialises toast, toast-lite)
    <method>/model.safetensors     one trained checkpoint per method (+ config.json, last.safetensors)
    results.json, results.md       test accuracy, trainable share and time per method

Each checkpoint records a ``demo_hash`` (recipe, image size, task, backbone weights, pre-tuning); a
checkpoint that is complete and has the same hash is kept, so a second run only reports. An
interrupted run resumes each method from its last epoch.

The recipes (:func:`plan_for`) are sized to the budget: on a 2-core CPU the whole command must finish
within 15 minutes, on a GPU within 2 minutes; the GPU plan uses a larger input and more epochs.

The package: :mod:`.plans` (recipes and plans), :mod:`.tensors` (the task's splits in memory),
:mod:`.progress` (stage weights and the ``progress(fraction, text)`` callback), :mod:`.locations` (where the
checkpoints are; which demo set a checkpoint belongs to), :mod:`.prepare` (:func:`prepare_demo`),
:mod:`.shipped` (the checkpoints in ``assets/``), :mod:`.background` (the background trainer), and the same
recipes on a user's labelled folder: :mod:`.dataset_run` (train the chosen methods one after another) and
:mod:`.dataset_background` (that run in the background trainer's process).
"""
from .. import lazy_names

# name -> submodule; loaded on first use, so ``demo_dir`` (the background trainer's status, the app's
# polling) does not import the trainer, timm or the task generator.
_LAZY = {
    **dict.fromkeys(("DemoSet", "demo_checkpoint_paths", "demo_dir", "demo_set_of"), "locations"),
    **dict.fromkeys(("DEMO_VERSION", "PLAN_NAMES", "SHIP_EPOCHS", "SHIPPED_METHODS", "DemoPlan", "MethodRecipe",
                     "plan_for"), "plans"),
    **dict.fromkeys(("prepare_demo", "results_markdown"), "prepare"),
    "Progress": "progress",
    **dict.fromkeys(("TensorImageDataset", "load_task_split"), "tensors"),
}


__getattr__, __dir__ = lazy_names(__name__, _LAZY)

__all__ = list(_LAZY)
