"""python -m nested_train --config run.toml [--steps 2000 --resume ...]"""

from __future__ import annotations

import logging
import sys

from .config import load_config
from .dataset import DatasetError


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        config, resume = load_config(argv)
        from .loop import Trainer

        trainer = Trainer(config, resume=resume)
        path = trainer.train()
    except (DatasetError, ValueError) as error:
        logging.getLogger("nested_train").error("%s", error)
        return 2
    logging.getLogger("nested_train").info("adapter written to %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
