"""Data for training and evaluation.

* ``clipsr_cli.data.datasets``: ``open_dataset`` (folder, manifest, birds/celeba/coco),
  ``ImageSource``, ``Sample``, ``load_image`` / ``load_rgb`` (the layouts live in ``layouts``,
  the image loading in ``source``).
* ``clipsr_cli.data.captions``: the one caption reader (manifests, sidecars, ``CaptionTable``),
  shared by ``batch``, ``eval`` and training.
* ``clipsr_cli.data.degrade``: ``degrade`` (HR -> LR as everywhere in clipsr), MATLAB-style
  ``imresize``, ``DegradeOptions``, ``crop_to_multiple``, ``quantize_8bit``.

Nothing is re-exported here: a package attribute named ``degrade`` would shadow the submodule of
that name, and importing the datasets alone need not import torch.
"""
