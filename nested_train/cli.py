"""The trainer's command line: ``python -m nested_train --config run.toml [--steps 2000 --resume ...]``."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Callable, Optional

import torch

from .comfy_runtime import prepare_comfyui
from .config import load_config
from .dataset import DatasetError

if TYPE_CHECKING:
    from .frozen import FrozenPartsLoader

log = logging.getLogger("nested_train")


def main(argv: Optional[list[str]] = None, frozen: Optional[Callable[[], "FrozenPartsLoader"]] = None) -> int:
    """Train with the settings of ``argv``. ``frozen`` makes the loader of the base model's parts (the
    checkpoint files of the settings by default); it is called once ComfyUI is prepared."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        config, resume = load_config(argv)
        cuda = config.uses_cuda()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # ComfyUI picks its device when first imported, so everything that imports it comes after.
        prepare_comfyui(cpu=not cuda)
        from .frozen import CheckpointFiles
        from .loop import Trainer

        path = Trainer(config, frozen() if frozen else CheckpointFiles(), resume=resume).train()
    except (DatasetError, ValueError) as error:
        log.error("%s", error)
        return 2
    log.info("adapter written to %s", path)
    return 0
