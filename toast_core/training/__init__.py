"""Training: the trainer (:mod:`.trainer`), TOAST's first-pass cache (:mod:`.first_pass`), TOAST's
stage 1 by least squares (:mod:`.stage1`) and the stage-1 pre-tuning driver (:mod:`.pretune`)."""
