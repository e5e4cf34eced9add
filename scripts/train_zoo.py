"""Regenerate the shipped zoo weights (edgekit/zoo_weights/): the digits teacher, then the student distilled
from it, both seed 0, trained from scratch here. Run after changing the zoo recipe (bump RECIPE_VERSION).

    .venv/bin/python scripts/train_zoo.py
"""

from __future__ import annotations

import json
import os
import platform
import tempfile

import torch

from edgekit.bench.environment import cpu_model
from edgekit.data import zoo


def main() -> None:
    os.environ["EDGEKIT_CACHE"] = tempfile.mkdtemp(prefix="edgekit-zoo-")  # never reuse cached weights
    zoo.WEIGHTS_DIR.mkdir(exist_ok=True)
    test = zoo.digits_split("test")
    card = {"recipe_version": zoo.RECIPE_VERSION, "torch": torch.__version__, "machine": cpu_model(),
            "python": platform.python_version(), "models": {}}
    for kind, make in (("teacher", zoo.digits_teacher), ("student", zoo.digits_student)):
        model = make(seed=0, progress=True, train=True)
        path = zoo.shipped_weights(kind, 0)
        torch.save(model.state_dict(), path)
        card["models"][kind] = {"file": path.name, "params": zoo.count_params(model),
                                "test_accuracy": zoo.accuracy(model, test)}
        print(kind, card["models"][kind])
    (zoo.WEIGHTS_DIR / "README.json").write_text(json.dumps(card, indent=2) + "\n")


if __name__ == "__main__":
    main()
