"""One config of a sweep trained in a process of its own, for ``cartspec sweep --jobs N``.

    python -m cartspec.experiments.worker SWEEP_FILE OUT_DIR CONFIG_ID DEVICE

The worker plans the sweep again (cheap, no torch), trains the config into its run folder
(resuming from its newest checkpoint), validates it at the sweep's loop counts and prints one JSON
line: its tokens/s and loop evaluations. The parent ``cartspec sweep`` alone writes the results
database. A user error or a diverged run is one line on stderr and exit code 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cartspec.errors import SpecError, UserError


def main(argv: list[str]) -> int:
    from cartspec.experiments.plan import plan_sweep
    from cartspec.experiments.run import loop_counts
    from cartspec.runtime.evaluate import evaluate_loops
    from cartspec.runtime.loop import Options, TrainingDiverged, train

    sweep_file, out_dir, config_id, device = argv
    try:
        plan = plan_sweep(Path(sweep_file), Path(out_dir))
        config = next((c for c in plan.configs if c.id == config_id), None)
        if config is None:
            raise UserError(f"{sweep_file}: no config {config_id!r} in this sweep")
        run_dir = plan.run_dir(config)
        summary = train(config.resolved, Options(out=run_dir, resume="auto", device=device, progress="off"))
        counts = loop_counts(config, plan.eval_loops)
        found = evaluate_loops(run_dir, counts, None, device)[1] if counts else []
    except (SpecError, UserError, TrainingDiverged) as e:
        print(str(e).strip().splitlines()[-1], file=sys.stderr)
        return 2
    evals = [[r.loops, r.val_loss, r.val_ppl] for r in found]
    print(json.dumps({"tokens_per_s": summary.tokens_per_s, "loop_evals": evals}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
