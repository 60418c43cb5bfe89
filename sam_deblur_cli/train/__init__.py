"""Training and fine-tuning the SAM-Deblur networks (``sam-deblur train``).

- :mod:`~sam_deblur_cli.train.config`: the resolved run configuration (JSON in the run folder);
- :mod:`~sam_deblur_cli.train.data`: named pairs, masks, aligned random crops, the sampler;
- :mod:`~sam_deblur_cli.train.models`: the network and ``--init``;
- :mod:`~sam_deblur_cli.train.loop`: optimisation, validation, exact resume;
- :mod:`~sam_deblur_cli.train.checkpoint`: ``last.pt`` and its numbered copies, RNG state;
- :mod:`~sam_deblur_cli.train.logs`: ``log.csv`` and TensorBoard scalars;
- :mod:`~sam_deblur_cli.train.dist`: the torchrun job and the device a process trains on;
- :mod:`~sam_deblur_cli.train.export`: ``model.pth``, ``best.pth`` and the local model entry;
- :mod:`~sam_deblur_cli.train.session`: one whole run, as the CLI calls it.

Importing this package is cheap; the sub-modules import torch.
"""
