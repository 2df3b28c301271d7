"""The core of aigc-kit: the plugin registry, the run configuration and the training loop.

Nothing in this package knows about GANs or diffusion (save the timestep sequences in
:mod:`aigc_kit.core.timesteps`, which the torch-free runtime needs too): model families arrive
through the registry (:mod:`aigc_kit.core.registry`) as components.
Importing this package does not import torch.
"""
