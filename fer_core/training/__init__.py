"""The parts of ``python -m fer_core.train`` that are not the training loop itself.

- :mod:`~fer_core.training.utils`: devices, torchrun processes and their share of a batch, the model's
  input, logits;
- :mod:`~fer_core.training.sync_bn`: BatchNorm over the whole batch of torchrun's processes;
- :mod:`~fer_core.training.data`: the training and val faces, ``--merge``, corrections, soft labels;
- :mod:`~fer_core.training.corrections`: the corrections file the annotation tool exports;
- :mod:`~fer_core.training.val_labels`: the val faces' label sets (``--val-labels``): which one
  chooses the best epoch, the mirror gate and the temperature, and val against each;
- :mod:`~fer_core.training.optim`: optimizer, learning-rate schedule, weight EMA, class weights,
  the self-distillation loss;
- :mod:`~fer_core.training.checkpoint`: the resumable checkpoint (safetensors + JSON), each process's
  end state (``--dump-state``);
- :mod:`~fer_core.training.card`: the model card, the logs and the training curve.

The loop (``train_one_epoch``, ``evaluate``, ``main``) is :mod:`fer_core.train`, and the
``--folds`` helpers are :mod:`fer_core.folds`; nothing here imports either.
"""
