"""python -m toy_world run  -- regenerate the world, train every model, evaluate, write the report.

Everything is seeded and runs on the CPU (at most about 75 minutes on 2 cores). Trained weights go
to toy_world/weights/, the tables and figures to toy_world/results/. ``--quick`` is a minutes-long
smoke run of the same pipeline (numbers meaningless) used by the tests.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from nested_attention.nested_train.comfy_runtime import prepare_comfyui

from . import RESULTS, WEIGHTS

log = logging.getLogger("toy_world")

FULL = dict(
    vae_steps=100,
    pool=6000,
    base_steps=2000,
    grounding_weight=0.01,
    reader_steps=1000,
    adapter_steps=600,
    adapter_batch=16,
    photos_per_identity=6,
    diagnose=40,
    sample_steps=20,
    eval_prompts=2,
    eval_identities=40,
    sweep_identities=40,
    pairs=40,
)
QUICK = dict(
    vae_steps=3,
    pool=64,
    base_steps=3,
    grounding_weight=0.01,
    reader_steps=3,
    adapter_steps=2,
    adapter_batch=4,
    photos_per_identity=2,
    diagnose=2,
    sample_steps=3,
    eval_prompts=1,
    eval_identities=2,
    sweep_identities=1,
    pairs=1,
)
EXPLAIN = dict(fit_identities=8, fit_prompts=5, fit_photos=12, fit_steps=300)  # python -m toy_world explain
EXPLAIN_QUICK = dict(fit_identities=2, fit_prompts=1, fit_photos=2, fit_steps=2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m toy_world", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "command",
        choices=["run", "report", "diagnose", "explain"],
        help=(
            "run: everything; report: redraw results.md and the curve from results.json; "
            "diagnose: toy_world/diagnose.py's measurements on the committed models; "
            "explain: toy_world/explain.py's tests of why nested does not beat a single token"
        ),
    )
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (meaningless numbers)")
    parser.add_argument("--weights", default=str(WEIGHTS))
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tests",
        nargs="+",
        default=None,
        help="explain: run only these of probe, recipe, fitted, detail (the others are kept from explain.json)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    prepare_comfyui(cpu=True)
    logging.getLogger("nested_attention").setLevel(logging.WARNING)  # the nodes' per-image info lines
    from .pipeline import run_pipeline, write_report

    if args.command == "report":
        write_report(json.loads((Path(args.results) / "results.json").read_text()), Path(args.results))
        log.info("wrote %s", Path(args.results) / "results.md")
        return 0
    if args.command == "diagnose":
        from .diagnose import diagnose
        from .evaluate import load_kit
        from .world import split_identities

        kit = load_kit(Path(args.weights), {"nested": Path(args.weights) / "adapter_nested.safetensors"})
        diagnose(kit, *split_identities(args.seed), Path(args.results), log.info)
        log.info("wrote %s", Path(args.results) / "diagnostics.md")
        return 0

    if args.command == "explain":
        from .evaluate import load_kit
        from .explain import TESTS, explain, markdown
        from .world import split_identities

        settings = {**(QUICK if args.quick else FULL), **(EXPLAIN_QUICK if args.quick else EXPLAIN)}
        kit = load_kit(Path(args.weights), {})
        kit.steps = settings["sample_steps"]
        started = time.time()
        tests = args.tests or TESTS
        found = explain(kit, Path(args.weights), *split_identities(args.seed), settings, args.seed, log.info, tests)
        results = Path(args.results)
        if args.tests and (results / "explain.json").is_file():  # keep the tests not rerun
            found = {**json.loads((results / "explain.json").read_text()), **found}
        found["minutes"] = {**found.get("minutes", {}), ", ".join(tests): round((time.time() - started) / 60, 1)}
        (results / "explain.json").write_text(json.dumps(found, indent=1) + "\n")
        committed = json.loads((results / "results.json").read_text())
        (results / "explain.md").write_text(markdown(found, committed))
        log.info("done in %.1f minutes: %s", found["minutes"][", ".join(tests)], results / "explain.md")
        return 0

    settings = QUICK if args.quick else FULL
    started = time.time()
    report = run_pipeline(settings, Path(args.weights), Path(args.results), args.seed, log.info)
    report["minutes"] = round((time.time() - started) / 60, 1)
    (Path(args.results) / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    log.info("done in %.1f minutes: %s", report["minutes"], Path(args.results) / "results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
