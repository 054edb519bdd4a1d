"""The `macft` command: run | eval | generate | fuse | doctor ... (the TUI is imported lazily)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from macft import env
from macft.errors import EXIT_SIGINT, MacftError
from macft.export.targets import APPS, DEFAULT_QUANT, TARGETS, quant_names
from macft.generation import MAX_TOKENS
from macft.plan import SAFE_SHARE


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--offline", action="store_true",
                        help="never touch the network (same as HF_HUB_OFFLINE=1)")
    common.add_argument("--debug", action="store_true", help="show tracebacks on errors")

    p = argparse.ArgumentParser(prog="macft", description="Fine-tune small language models "
                                "locally with MLX.", parents=[common])
    sub = p.add_subparsers(dest="command")

    run = sub.add_parser("run", parents=[common], help="train from a recipe (or resume a run)")
    run.add_argument("recipe", help="recipe YAML file, or a run folder to resume")
    run.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    run.add_argument("--memory-budget", metavar="SIZE",
                     help="plan first (see `macft plan`) and refuse to train when the measured "
                          "peak memory exceeds SIZE (e.g. 12GB), naming a setting that fits")
    run.add_argument("--force", action="store_true",
                     help="train even when the plan exceeds --memory-budget")
    run.add_argument("--allow-changes", action="store_true",
                     help="resume although the recipe or data differ from what the run "
                          "started with (train.steps, eval/save/sample cadence may always "
                          "change)")
    run.add_argument("--hosts", metavar="HOSTS.json",
                     help="train data-parallel on these machines: re-runs this command under "
                          "`mlx.launch --backend ring --hostfile HOSTS.json` (see README)")

    pl = sub.add_parser("plan", parents=[common],
                        help="measure peak memory and step time before training; find a "
                             "batch size / accumulation / checkpointing that fits a budget")
    pl.add_argument("recipe", help="recipe YAML file")
    pl.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    pl.add_argument("--memory-budget", metavar="SIZE",
                    help=f"e.g. 12GB (default: {SAFE_SHARE * 100:.0f}%% of this machine's memory)")
    pl.add_argument("--json", action="store_true",
                    help="print the measurements as one JSON line instead of the report")

    ev = sub.add_parser("eval", parents=[common], help="greedy answers + exact match on a data set")
    ev.add_argument("target", help="run folder or model")
    ev.add_argument("--data", help="JSONL (chat or completions) to evaluate on")
    ev.add_argument("--pairs", help="preference JSONL: report preference accuracy and margin, "
                                    "and how often greedy answers take the chosen style")
    ev.add_argument("--style", metavar="REGEX",
                    help="with --pairs: the chosen style as a regular expression searched in "
                         "each stripped greedy answer (default: the answer opens with the "
                         "chosen answer's first three words)")
    ev.add_argument("--out", help="write one JSON line per example here")
    ev.add_argument("--max-tokens", type=int, help="longest answer (default: recipe eval.max_tokens)")
    ev.add_argument("--batch-size", type=int, help="prompts generated together")
    ev.add_argument("--limit", type=int, default=0, help="only the first N examples")
    ev.add_argument("--no-loss", action="store_true", help="skip the loss computation")
    ev.add_argument("--adapter", help="adapter folder to use instead of the run's best/final")
    ev.add_argument("--schema", help="JSON Schema file: also report the schema-valid rate")
    ev.add_argument("--rewards", nargs="?", const="", metavar="RECIPE",
                    help="score greedy answers with GRPO rewards: this recipe's grpo.rewards "
                         "(default: the run's); prompts from --data or the recipe's data.test")
    ev.add_argument("--general", action="store_true",
                    help="forgetting check: perplexity and accuracy on macft's general set")

    gen = sub.add_parser("generate", parents=[common], help="answer one prompt")
    gen.add_argument("target", help="run folder or model")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--system", help="system message")
    gen.add_argument("--max-tokens", type=int, default=MAX_TOKENS)
    gen.add_argument("--raw", action="store_true",
                     help="continue the prompt as plain text (no chat template): base models")

    fuse = sub.add_parser("fuse", parents=[common], help="merge a run's adapters into the base")
    fuse.add_argument("run", help="run folder")
    fuse.add_argument("--out", required=True, help="output folder (Hugging Face layout)")
    exp = sub.add_parser("export", parents=[common],
                         help="write a run or model as GGUF for llama.cpp (optionally verified)")
    exp.add_argument("target", help="run folder or model")
    for t in TARGETS.values():
        exp.add_argument(t.flag, metavar=t.metavar, help=t.help)
    exp.add_argument("--to", nargs=2, metavar=("APP", "DIR"),
                     help="write the GGUF where an app runs it: " + "; ".join(
                         f"{a.name}: {a.help}" for a in APPS.values()))
    exp.add_argument("--force", action="store_true", help="overwrite files that exist")
    exp.add_argument("--quant", default=DEFAULT_QUANT, metavar="TYPE",
                     help=_LazyHelp(lambda: f"{', '.join(quant_names())} "
                                            f"(default {DEFAULT_QUANT})"))
    exp.add_argument("--verify", action="store_true",
                     help="load the file in llama.cpp and compare it with MLX on held-out text")
    exp.add_argument("--verify-text", metavar="FILE", help="held-out text for --verify")
    chat = sub.add_parser("chat", parents=[common], help="talk to a GGUF file through llama.cpp")
    chat.add_argument("gguf", help="GGUF model file")
    chat.add_argument("--prompt", help="answer this one message and exit")
    chat.add_argument("--system", help="system message")
    chat.add_argument("--lora", metavar="ADAPTER.gguf", help="LoRA adapter GGUF to apply")
    chat.add_argument("--max-tokens", type=int, default=MAX_TOKENS)
    chat.add_argument("--temp", type=float, default=0.0, help="sampling temperature (0: greedy)")
    chat.add_argument("--ctx", type=int, default=4096, help="context length")
    doc = sub.add_parser("doctor", parents=[common],
                         help="one screen of facts: platform, MLX, device, BLAS speed, compiler, "
                              "offline state, caches, and each kernel's parity verdict here")
    doc.add_argument("--json", action="store_true", help="the same facts as one JSON object")
    init = sub.add_parser("init", parents=[common],
                          help="copy a shipped recipe and its data into a folder, to run there")
    init.add_argument("name", help="a shipped recipe (quickstart, dpo-quickstart, ...)")
    init.add_argument("dir", nargs="?", help="the folder to make (default: NAME)")
    opts = sub.add_parser("options", parents=[common], help="list every recipe option")
    opts.add_argument("--markdown", action="store_true", help="as a Markdown table")
    from macft.dataprep.commands import add_parser as add_data_parser

    add_data_parser(sub, common)
    from macft.report import add_parser as add_compare_parser

    add_compare_parser(sub, common)
    tui = sub.add_parser("tui", parents=[common],
                         help="the terminal UI (also what `macft` alone opens)")
    tui.add_argument("target", nargs="?", help="a recipe file or run folder to open")
    return p


class _LazyHelp(str):
    """Help text made only when help is shown (the quant names need gguf-py, ~1 s to load)."""

    def __new__(cls, make):
        self = super().__new__(cls, "...")
        self.make = make
        return self

    def __mod__(self, params):
        return self.make()


def options_table(markdown: bool) -> list[str]:
    """Every recipe option with its type, default and help, straight from the dataclasses."""
    from macft.recipe import bounds_of, describe

    rows = [(k, t, d, _with_range(h, bounds_of(k))) for k, t, d, h in describe()]
    if markdown:
        out = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        for key, tname, default, text in rows:
            tname = tname.replace(" | ", " or ")
            out.append(f"| `{key}` | {tname} | `{default!r}` | {text} |")
        return out
    width = max(len(k) for k, *_ in rows)
    return [f"{k.ljust(width)}  {d!r:>24}  {h}" for k, t, d, h in rows]


def _with_range(text: str, bounds) -> str:
    return f"{text} Allowed: {bounds.describe()}." if bounds else text


def cmd_options(args) -> int:
    from macft import env

    for line in options_table(args.markdown):
        _console(line)
    _console("")
    _console("Environment switches:" if not args.markdown else "Environment switches:\n")
    for line in env.table(args.markdown):
        _console(line)
    return 0


def _console(text: str) -> None:
    print(text, flush=True)


def cmd_run(args) -> int:
    from macft import recipe as recipe_mod, runs
    from macft.events import ConsoleProgress, StopSignal
    from macft.train.loop import train

    if args.hosts:
        return _launch(args)
    target = Path(args.recipe)
    if target.is_dir():
        if not runs.is_run_dir(target):
            raise MacftError(f"{target}: not a run folder (no {runs.RECIPE})")
        recipe = recipe_mod.load(runs.recipe_path(target), args.overrides + [f"output={target}"])
    else:
        recipe = recipe_mod.load(target, args.overrides)
    from macft import runtime

    if args.memory_budget:
        from macft.plan import parse_size, plan

        budget = parse_size(args.memory_budget)
        result = plan(recipe, budget)
        _console(result.summary())
        if not result.fits and not args.force:
            raise MacftError(result.refusal())
    runtime.limit_memory()          # on a Mac: fail cleanly rather than freeze the machine
    stop = StopSignal()
    received = stop_on_signals(stop)
    done = train(recipe, [ConsoleProgress()], stop, allow_changes=args.allow_changes)
    return run_exit_code(done.reason, received)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def stop_on_signals(stop) -> list[int]:
    """SIGINT (Ctrl-C), SIGTERM and SIGHUP stop the run at the next step boundary, after a
    checkpoint; a second one aborts at once. Returns the list the signals received go into."""
    received: list[int] = []

    def on_signal(signum, frame):
        if stop.stopped:
            raise KeyboardInterrupt
        received.append(signum)
        print(f"\n{signal.Signals(signum).name}: stopping after this step (a checkpoint will "
              "be written); press Ctrl-C again to abort", file=sys.stderr)
        stop.stop()

    for signum in STOP_SIGNALS:
        signal.signal(signum, on_signal)
    if hasattr(signal, "SIGUSR1"):      # "checkpoint now" from the TUI (macft.tui.trainer)
        signal.signal(signal.SIGUSR1, lambda signum, frame: stop.request_checkpoint())
    return received


def run_exit_code(reason: str, received: list[int]) -> int:
    """0 for a finished run; 128 + the signal's number for one a signal stopped (see
    ``macft.errors``), so a script can tell them apart."""
    from macft.errors import EXIT_OK, EXIT_SIGINT, exit_for_signal

    if reason != "stopped":
        return EXIT_OK
    return exit_for_signal(received[0]) if received else EXIT_SIGINT


def cmd_plan(args) -> int:
    import json

    from macft import recipe as recipe_mod
    from macft.plan import parse_size, plan

    budget = parse_size(args.memory_budget) if args.memory_budget else None
    recipe = recipe_mod.load(Path(args.recipe), args.overrides)
    if args.json:                 # one line for a program (the TUI's Plan key)
        result = plan(recipe, budget)
        _console(json.dumps(result.to_json()))
        return 0 if result.fits else 1
    _console(f"planning {args.recipe}: two steps on the longest batch ...")
    result = plan(recipe, budget)
    for line in result.report(args.recipe):
        _console(line)
    return 0 if result.fits else 1


def _launch(args) -> int:
    """``run --hosts``: the same command once per host, through mlx.launch's ring backend."""
    from macft.train import distributed

    distributed.read_hosts(args.hosts)
    if args.memory_budget:
        raise MacftError("--memory-budget plans one process; run `macft plan` on one Mac, "
                         "then --hosts without it")
    argv = ["run", str(Path(args.recipe).resolve()), *args.overrides]
    argv += [flag for flag, on in (("--offline", args.offline), ("--debug", args.debug)) if on]
    cmd = distributed.launch_command(str(Path(args.hosts).resolve()), argv)
    return distributed.run_launcher(cmd)


def _eval_rewards(args) -> int:
    from macft.models.load import load_for_inference
    from macft.reward_eval import evaluate_rewards, reward_recipe

    loaded, run_recipe = load_for_inference(args.target, args.adapter)
    recipe = reward_recipe(args.rewards, run_recipe)
    data = args.data or recipe.data.test
    if not data:
        raise MacftError("--rewards: give --data FILE.jsonl (the recipe has no data.test)")
    report = evaluate_rewards(loaded.model, loaded.tokenizer, data, recipe,
                              args.max_tokens or recipe.grpo.max_new_tokens,
                              args.batch_size or recipe.eval.batch_size, args.limit)
    _console(f"model: {args.target}  prompts: {data}")
    for line in report.lines():
        _console(line)
    if args.out:
        from macft.runs import atomic_write

        atomic_write(args.out, "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                       for r in report.records))
    return 0


def cmd_eval(args) -> int:
    from macft.evaluation import evaluate
    from macft.models.load import load_for_inference
    from macft.recipe import DataSpec, EvalSpec

    if args.rewards is not None:
        return _eval_rewards(args)
    if not (args.data or args.pairs or args.general):
        raise MacftError("eval needs --data FILE.jsonl, --pairs FILE.jsonl or --general")
    for path in (args.data, args.pairs):
        if path and not Path(path).exists():
            raise MacftError(f"{path}: file not found")
    from macft.evaluation import compile_style

    style = compile_style(args.style)
    loaded, recipe = load_for_inference(args.target, args.adapter)
    spec = recipe.data if recipe else DataSpec()
    ev = recipe.eval if recipe else EvalSpec()
    max_tokens = args.max_tokens or ev.max_tokens
    batch = args.batch_size or ev.batch_size
    if args.pairs:
        from macft.evaluation import evaluate_pairs

        pairs = evaluate_pairs(loaded.model, loaded.tokenizer, args.pairs, spec,
                               args.batch_size or 8,
                               recipe is not None and recipe.method != "full",
                               max_tokens, style, batch)
        _console(f"model: {args.target}  pairs: {args.pairs}")
        for line in pairs.lines():
            _console(line)
        if not args.data:
            if args.out:
                _write_records(args.out, pairs.records)
            return 0

    def progress(done, total):
        print(f"\rgenerating {done}/{total}", end="", file=sys.stderr, flush=True)

    if args.general:
        from macft.general import evaluate_general

        general = evaluate_general(loaded.model, loaded.tokenizer, batch, progress)
        print(file=sys.stderr)
        _console(f"model: {args.target}  general set (forgetting check)")
        for line in general.lines():
            _console(line)
        if not args.data:
            return 0
    from macft.metrics import read_schema

    report = evaluate(loaded.model, loaded.tokenizer, args.data, spec, max_tokens, batch,
                      args.limit, not args.no_loss, progress, read_schema(args.schema))
    print(file=sys.stderr)
    _console(f"model: {args.target}  data: {args.data}")
    for line in report.lines():
        _console(line)
    if args.out:
        _write_records(args.out, report.records)
    return 0


def _write_records(path: str, records: list[dict]) -> None:
    from macft.runs import atomic_write

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    _console(f"predictions: {out}")


def cmd_generate(args) -> int:
    from mlx_lm.generate import stream_generate

    from macft.generation import chat_prompt
    from macft.models.load import load_for_inference

    loaded, recipe = load_for_inference(args.target)
    system = args.system or (recipe.data.system_prompt if recipe else None)
    if args.raw:
        prompt = list(loaded.tokenizer.encode(args.prompt))
    else:
        prompt = chat_prompt(loaded.tokenizer, args.prompt, system)
    for response in stream_generate(loaded.model, loaded.tokenizer, prompt,
                                     max_tokens=args.max_tokens):
        print(response.text, end="", flush=True)
    print()
    return 0


def cmd_fuse(args) -> int:
    from macft import runs
    from macft.export.targets import fuse_to_folder

    if not runs.is_run_dir(args.run):
        raise MacftError(f"{args.run}: not a run folder (no {runs.RECIPE})")
    n, out = fuse_to_folder(args.run, args.out)
    _console(f"fused {n} adapter layers into {out}")
    return 0


def cmd_export(args) -> int:
    from macft.export.pipeline import export

    return export(args.target, gguf=args.gguf, quant=args.quant, adapter_gguf=args.gguf_adapter,
                  verify=args.verify, verify_text=args.verify_text, say=_console, hf=args.hf,
                  to=tuple(args.to) if args.to else None, force=args.force)


def cmd_chat(args) -> int:
    from macft.export.chat import chat

    return chat(args.gguf, prompt=args.prompt, system=args.system, max_tokens=args.max_tokens,
                temperature=args.temp, lora=args.lora, n_ctx=args.ctx)


def _yes(flag: bool | None) -> str:
    return "unknown" if flag is None else ("yes" if flag else "no")


def doctor_lines(facts) -> list[str]:
    """``macft doctor``: one fact a line."""
    b = facts.blas
    threads = f", {b['threads']} threads" if b["threads"] else ""
    speed = (f"{facts.gflops:.1f} GFLOP/s (float32 1024x1024 matmul on the CPU{threads})"
             if facts.gflops is not None else "not measured")
    compiler = (f"{facts.compiler} ({facts.compiler_version})" if facts.compiler
                else "none (no g++ on PATH)")
    lines = [
        f"platform: {facts.os}, {facts.machine}",
        f"cpu: {facts.cpu}, {facts.cores} cores, AVX2 {_yes(facts.avx2)}, "
        f"AVX-512 {_yes(facts.avx512)}",
        f"python: {facts.python} ({facts.python_path})",
        f"mlx: {facts.mlx}, backend {facts.backend}",
        f"device: {facts.device}",
        f"compute dtype: {facts.dtype} (model.dtype auto)",
        f"blas: {b['status']}",
        f"blas library: {b['library'] or 'none loaded (MLX links its own)'}",
        f"blas core type: {b['core'] or 'n/a'}",
        f"blas speed: {speed}",
        f"compiler for mx.compile's CPU kernels: {compiler}",
        f"fast exp: {facts.fast_exp}",
        f"offline: {'yes' if facts.offline else 'no'} ({facts.offline_why})",
        f"hf cache: {facts.hf_cache}",
        f"macft cache: {facts.macft_cache}",
    ]
    for k in facts.kernels:
        verdict = k.verdict + (f" ({k.detail}; {k.checked})" if k.detail else "")
        applies = "yes" if k.applies else f"no (needs {k.device})"
        lines.append(f"kernel {k.name}: applies here: {applies}; parity here: {verdict}")
    return lines


def cmd_doctor(args) -> int:
    from macft.doctor import gather

    facts = gather(offline_flag=args.offline)
    if args.json:
        _console(json.dumps(facts.as_dict(), indent=1))
    else:
        for line in doctor_lines(facts):
            _console(line)
    return 0


def cmd_init(args) -> int:
    from macft import shipped

    files = shipped.init(args.name, args.dir)
    folder = files[0].parent
    _console(f"{folder}: " + ", ".join(str(f.relative_to(folder)) for f in files))
    _console(f"run it: cd {folder} && macft run recipe.yaml")
    return 0


def cmd_data(args) -> int:
    from macft.dataprep.commands import run

    return run(args, _console)


def cmd_compare(args) -> int:
    from macft.report import run_compare

    return run_compare(args, _console)


def cmd_tui(args) -> int:
    from macft.tui import run_app  # lazily: the headless commands never load Textual

    return run_app(getattr(args, "target", None))


def _flag_bounds() -> dict:
    """The range of each numeric flag, per command (a flag that sets a recipe option has that
    option's range, from its field in ``recipe.py``)."""
    from macft.recipe import AT_LEAST_0, AT_LEAST_1, SEED, Bounds, bounds_of

    answers = {"--max-tokens": bounds_of("eval.max_tokens"),
               "--batch-size": bounds_of("eval.batch_size"), "--limit": AT_LEAST_0}
    fraction = Bounds(ge=0, le=1)
    data = {"--near": fraction, "--semantic": Bounds(ge=-1, le=1), "--min-chars": AT_LEAST_0,
            "--max-chars": AT_LEAST_0, "--max-tokens": AT_LEAST_0,
            "--max-length": bounds_of("data.max_length"), "--valid": Bounds(ge=0, lt=1),
            "--test": Bounds(ge=0, lt=1), "--seed": SEED}
    return {"eval": answers, "compare": answers, "generate": {"--max-tokens": AT_LEAST_1},
            "chat": {"--max-tokens": AT_LEAST_1, "--temp": AT_LEAST_0, "--ctx": AT_LEAST_1},
            "data": data}


def check_flags(args) -> None:
    """One line naming the flag, its value and its range, before anything is loaded."""
    for flag, bounds in _flag_bounds().get(args.command, {}).items():
        value = getattr(args, flag[2:].replace("-", "_"), None)
        # `data split --test 0.1` is a fraction, `data leak TRAIN TEST` a file: only numbers
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            bounds.check(value, flag)


COMMANDS = {"run": cmd_run, "plan": cmd_plan, "eval": cmd_eval, "generate": cmd_generate,
            "fuse": cmd_fuse,
            "export": cmd_export, "chat": cmd_chat, "doctor": cmd_doctor, "init": cmd_init,
            "options": cmd_options, "tui": cmd_tui, "data": cmd_data, "compare": cmd_compare}


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # argparse stops filling `overrides` at the first option, so `run r.yaml --force a=b` would
    # leave a=b over; overrides may come before or after the options.
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-")
                                                     for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    debug = getattr(args, "debug", False) or env.get("MACFT_DEBUG") == "1"
    if getattr(args, "offline", False):
        from macft import runtime

        runtime.set_offline(True)
    if args.command is None:
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            parser.print_help()  # no terminal to draw the UI in
            return 0
        args.command = "tui"
    try:
        check_flags(args)
        return COMMANDS[args.command](args)
    except MacftError as exc:
        if debug:
            raise
        print(f"macft: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("macft: interrupted", file=sys.stderr)
        return EXIT_SIGINT
    except Exception as exc:  # noqa: BLE001 - one line unless --debug
        if debug:
            raise
        written = _unwritable(exc)
        if written:
            print(f"macft: error: {written}", file=sys.stderr)
            return 2
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"macft: error: {type(exc).__name__}: {first} (run with --debug for the "
              f"traceback)", file=sys.stderr)
        return 1


def _unwritable(exc: Exception) -> str:
    """A full disk or read-only folder that no writer named (an OSError with its file)."""
    from macft.write_errors import translate

    name = getattr(exc, "filename", None)
    error = translate(exc, name) if isinstance(exc, OSError) and name else None
    return str(error) if error else ""


if __name__ == "__main__":
    sys.exit(main())
