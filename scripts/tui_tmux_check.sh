#!/usr/bin/env bash
# bash scripts/tui_tmux_check.sh [WORK_DIR]
# QUICKSTART=1 bash scripts/tui_tmux_check.sh    # the real quickstart recipe (SmolLM2, slower)
#
# Opens `macft tui` in a tmux pane (100x30) the way a new user would: a project folder with a
# tiny model, a little data and one recipe. With keys it opens the recipe, starts the run, and
# checks on captured screens that the step counter and the loss chart move; then stops the run
# (s), checks the checkpoint the stop wrote, and quits (q). Exit 0 on success.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-$(mktemp -d)}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=python3

if ! command -v tmux >/dev/null; then
    if ! apt-get install -y tmux >/dev/null 2>&1; then
        echo "tmux is missing and could not be installed"; exit 1
    fi
fi

if [ -n "${QUICKSTART:-}" ]; then
    # A project folder holding only the quickstart recipe and its data, as a new user has.
    RUN=quickstart; ADVANCE=1; WAIT=300
    mkdir -p "$WORK/recipes" "$WORK/data"
    cp "$ROOT/recipes/quickstart.yaml" "$WORK/recipes/"
    cp -r "$ROOT/data/quickstart" "$WORK/data/"
else
RUN=tiny; ADVANCE=2; WAIT=60
# The project: model/, train.jsonl, valid.jsonl, recipes/tiny.yaml.
PYTHONPATH="$ROOT/tests" "$PY" - "$WORK" <<'PYEOF'
import json, sys
from pathlib import Path
import macft  # noqa: F401
from conftest import write_tiny_model

work = Path(sys.argv[1])
write_tiny_model(work / "model")
for name, n in (("train.jsonl", 24), ("valid.jsonl", 6)):
    with (work / name).open("w") as fh:
        for i in range(n):
            a, b = i % 10, (i * 3) % 10
            fh.write(json.dumps({"messages": [
                {"role": "user", "content": f"hello {a} world {b}"},
                {"role": "assistant", "content": f"the answer is {a}{b}"}]}) + "\n")
(work / "recipes").mkdir(exist_ok=True)
(work / "recipes" / "tiny.yaml").write_text(
    "# macft run recipes/tiny.yaml\nname: tiny\nmodel: model\nmethod: lora\n"
    "data: {train: train.jsonl, valid: valid.jsonl, max_length: 64}\n"
    "train: {steps: 300, batch_size: 2, learning_rate: 0.01, eval_every: 50, save_every: 0}\n")
PYEOF
fi

SOCK="macft-check-$$"
T="tmux -L $SOCK"
cleanup() { $T kill-server 2>/dev/null || true; }
trap cleanup EXIT

$T new-session -d -s tui -x 100 -y 30 \
    "cd '$WORK' && HF_HUB_OFFLINE=1 '$PY' -m macft tui; sleep 1"
screen() { $T capture-pane -p -t tui; }

wait_for() {  # wait_for PATTERN SECONDS
    local deadline=$((SECONDS + $2))
    until screen | grep -q -- "$1"; do
        if [ $SECONDS -ge $deadline ]; then
            echo "timed out waiting for: $1"; screen; exit 1
        fi
        sleep 0.3
    done
}

# The status line: "training 12/300" while running, "step 12/300" once stopped (and neither
# while it evaluates: "evaluating 2/4").
step_of() { screen | grep -o '\(step\|training\) [0-9]*/[0-9]*' | head -1 | grep -o '[0-9]*' |
            head -1; }
chart_of() { screen | sed -n '/loss .*train/,/└step 1/p'; }

wait_for "Recipes" 60
wait_for "$RUN" 10
$T send-keys -t tui Enter            # the first recipe: the project's own come first
wait_for "save as" 20
$T send-keys -t tui C-r              # start the run
wait_for "running   training [1-9]" $((WAIT + 30))

first_step=$(step_of); first_chart=$(chart_of)
deadline=$((SECONDS + WAIT))
while :; do
    sleep 1
    step=$(step_of); chart=$(chart_of)
    if [ "${step:-0}" -ge "$((first_step + ADVANCE))" ] && [ "$chart" != "$first_chart" ]; then
        break
    fi
    [ $SECONDS -lt $deadline ] || { echo "the run did not advance"; screen; exit 1; }
done
echo "step $first_step -> $step; chart moved"
echo "$chart"

$T send-keys -t tui s                # stop: the loop writes a checkpoint
wait_for "stopped   step" $WAIT
stopped=$(step_of)
latest=$(cat "$WORK/runs/$RUN/checkpoints/latest")
if [ "$latest" != "$(printf 'step-%07d' "$stopped")" ]; then
    echo "the latest checkpoint is $latest but the run stopped at step $stopped"; exit 1
fi
echo "stopped at step $stopped with checkpoint $latest"

$T send-keys -t tui q
for _ in $(seq 50); do $T has-session -t tui 2>/dev/null || break; sleep 0.2; done
echo "ok"
