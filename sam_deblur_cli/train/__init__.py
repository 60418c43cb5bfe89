"""Training and fine-tuning the SAM-Deblur networks (``sam-deblur train``).

- :mod:`~sam_deblur_cli.train.config`: the resolved run configuration (JSON in the run folder);
- :mod:`~sam_deblur_cli.train.data`: named pairs, masks, aligned random crops, the sampler;
- :mod:`~sam_deblur_cli.train.models`: the network and ``--init``;
- :mod:`~sam_deblur_cli.train.loop`: optimisation, validation, checkpoints, exact resume;
- :mod:`~sam_deblur_cli.train.export`: ``model.pth`` and the local model entry;
- :mod:`~sam_deblur_cli.train.run`: one whole run, as the CLI calls it.

Importing this package is cheap; the sub-modules import torch.
"""
