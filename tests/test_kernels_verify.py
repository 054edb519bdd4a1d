"""Device kernels prove themselves: ``verify``'s parity check, its cache, and ``kernels: auto``.

A stand-in "device kernel" that runs on the CPU takes Metal's place here: one that is right
(``blocked`` attention) and ones that are wrong in the values, in one gradient, or that raise
as a kernel that does not compile would. With a wrong one, ``auto`` trains exactly as without
it, the run's log and ``doctor`` name the failed case, and the verdict is read from the cache
on the next run (the check is not called again); a right one is used in training. The Metal
parity tests at the end run the registered Metal kernels through this same check (they skip
where Metal is absent).
"""

from __future__ import annotations

import io
import json

import mlx.core as mx
import numpy as np
import pytest

from macft import kernels
from macft.kernels import attention as attn
from macft.kernels import verify


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("MACFT_CACHE", str(folder))
    return folder


def stand_in(name: str, calls: list, scale_error: float = 1.0, dk_error: float = 1.0,
             error: Exception | None = None) -> verify.DeviceKernel:
    """A CPU function registered as the attention op's device kernel. ``scale_error`` scales
    the attention scale (wrong values), ``dk_error`` the key gradient only, ``error`` is raised."""

    def kernel(q, k, v, scale, causal=True, segments=None):
        calls.append(name)
        if error is not None:
            raise error

        @mx.custom_function
        def f(q, k, v):
            return attn.blocked(q, k, v, scale * scale_error, causal, segments)

        @f.vjp
        def f_vjp(primals, cotangent, output):
            _, (dq, dk, dv) = mx.vjp(lambda *p: attn.blocked(*p, scale, causal, segments),
                                     list(primals), [cotangent])
            return dq, dk * dk_error, dv

        return f(q, k, v)

    return verify.DeviceKernel(f"attention.{name}", "attention", "the CPU (test stand-in)",
                               kernel, attn.tiled, verify.attention_cases, lambda: True,
                               fingerprint=name)


# ----- the check ---------------------------------------------------------------------------------

def test_a_right_kernel_passes_every_case(cache):
    calls = []
    found = verify.check(stand_in("right", calls))
    assert found.passed, found.detail
    cases = verify.attention_cases()
    assert found.detail == f"{len(cases)} cases" and len(cases) == 24
    # Every head dim, each dtype, causal/packed/GQA/MQA/non-causal/offset are among them.
    names = " ".join(c.name for c in cases)
    for part in ("d=64", "d=80", "d=96", "d=128", "float32", "float16", "bfloat16", "packed",
                 "mqa", "noncausal", "offset"):
        assert part in names
    assert len(calls) == 2 * len(cases)     # forward for the dtype, then the vjp


def test_wrong_values_a_wrong_gradient_and_a_crash_fail_and_say_where(cache):
    calls = []
    wrong = verify.check(stand_in("wrong", calls, scale_error=1.05))
    assert not wrong.passed
    assert wrong.detail.startswith("case causal gqa d=64 float32: output differs by ")
    grad = verify.check(stand_in("grad", calls, dk_error=1.01))
    assert not grad.passed
    assert grad.detail.startswith("case causal gqa d=64 float32: grad of k differs by ")
    crash = verify.check(stand_in("crash", calls, error=RuntimeError("unable to build kernel\n"
                                                                     "line 2")))
    assert not crash.passed
    assert crash.detail == "case causal gqa d=64 float32: RuntimeError: unable to build kernel"


def test_verdicts_are_cached_per_device_mlx_and_macft_version(cache, monkeypatch):
    calls = []
    kernel = stand_in("wrong", calls, scale_error=1.05)
    assert verify.cached(kernel) is None
    first = verify.verdict(kernel)
    assert not first.passed and not first.cached
    data = json.loads((cache / verify.CACHE_FILE).read_text())
    import macft
    key = f"{verify.device_name()} | mlx {mx.__version__} | macft {macft.__version__}"
    assert list(data) == [key] and key.startswith("cpu: ")
    assert data[key]["attention.wrong"]["detail"] == first.detail
    assert data[key]["attention.wrong"]["fingerprint"] == "wrong"
    checks = []
    real = verify.check
    monkeypatch.setattr(verify, "check", lambda k: checks.append(k) or real(k))
    again = verify.verdict(kernel)
    assert again.cached and again.detail == first.detail and checks == []
    # Another macft version (or a changed kernel: its fingerprint) is checked afresh.
    monkeypatch.setattr(macft, "__version__", "0.0.0-other")
    assert verify.cached(kernel) is None
    verify.verdict(kernel)
    assert len(checks) == 1


def test_pick_follows_the_mode_and_the_verdict(cache):
    calls = []
    q = mx.zeros((1, 4, 8, 64))
    k = mx.zeros((1, 2, 8, 64))
    with verify.registered(stand_in("wrong", calls, scale_error=1.05)) as wrong:
        with kernels.using("auto"):
            assert verify.pick("attention", q, k) is None          # not checked yet
            assert [e.verdict for e in verify.for_run("auto")] == ["failed"]
            assert verify.pick("attention", q, k) is None          # failed
        with kernels.using("device"):
            assert verify.pick("attention", q, k) is wrong.kernel
            assert [e.line() for e in verify.for_run("device")] == [
                "kernel attention.wrong: used without a parity check (kernels: device)"]
        for mode in ("reference", "stock"):
            with kernels.using(mode):
                assert verify.pick("attention", q, k) is None
                assert verify.for_run(mode) == []
    with verify.registered(stand_in("right", calls)) as right, kernels.using("auto"):
        (event,) = verify.for_run("auto")
        assert event.verdict == "passed" and event.line() == (
            "kernel attention.right: passed its parity check here (24 cases); used")
        assert verify.pick("attention", q, k) is right.kernel
        assert verify.pick("cross_entropy", q, k) is None           # another op's dispatcher
    assert verify.registry() == list(verify._metal_kernels())       # the hook is undone


# ----- acceptance: kernels: auto in training -----------------------------------------------------

def _recipe(tmp_path, model_dir, name: str, mode: str = "auto"):
    from macft import recipe as recipe_mod

    rng = np.random.default_rng(0)
    data = tmp_path / "train.jsonl"
    if not data.exists():
        with data.open("w") as fh:
            for _ in range(24):
                words = " ".join(f"w{int(x)}" for x in rng.integers(0, 50, rng.integers(5, 30)))
                fh.write(json.dumps({"text": words}) + "\n")
    return recipe_mod.from_dict({
        "name": name, "model": str(model_dir), "method": "lora", "kernels": mode,
        "lora": {"rank": 4, "alpha": 8},
        "data": {"train": str(data), "max_length": 64, "packing": True},
        "train": {"steps": 4, "batch_size": 2, "learning_rate": 2e-3, "seed": 0,
                  "eval_every": 0, "save_every": 0},
        "output": str(tmp_path / name)})


def _train(recipe):
    from macft.events import Collect, ConsoleProgress, Step
    from macft.train.loop import train

    sink, console = Collect(), io.StringIO()
    train(recipe, [sink, ConsoleProgress(console)])
    losses = [e.loss for e in sink.events if isinstance(e, Step)]
    checks = [e for e in sink.events if type(e).__name__ == "KernelCheck"]
    return losses, checks, console.getvalue()


def test_auto_keeps_the_reference_when_a_kernel_fails_and_uses_one_that_passes(
        tmp_path, tiny_model_dir, cache, monkeypatch, capsys):
    from macft.cli import main
    from macft.events import read_metrics

    want, none, _ = _train(_recipe(tmp_path, tiny_model_dir, "plain"))
    assert none == [] and len(want) == 4            # no device kernel on this CPU
    checks, calls = [], []
    real = verify.check
    monkeypatch.setattr(verify, "check", lambda k: checks.append(k.name) or real(k))

    with verify.registered(stand_in("wrong", calls, scale_error=1.05)):
        losses, events, console = _train(_recipe(tmp_path, tiny_model_dir, "wrong"))
        assert losses == want                        # the reference ran, every step
        assert checks == ["attention.wrong"]
        in_check = len(calls)
        assert in_check == 2                         # the first case (forward, vjp), then failed
        (event,) = events
        assert event.verdict == "failed" and not event.cached
        line = event.line()
        assert line.startswith("kernel attention.wrong: failed its parity check here (case "
                               "causal gqa d=64 float32: output differs by ")
        assert line.endswith("); using the reference")
        assert line in console.splitlines()          # the console sink prints it ...
        logged = [r for r in read_metrics(tmp_path / "wrong" / "metrics.jsonl")
                  if r["event"] == "KernelCheck"]     # ... and the run folder's log holds it
        assert [r["detail"] for r in logged] == [event.detail]
        # doctor names the failed check, read from the cache.
        capsys.readouterr()
        assert main(["doctor"]) == 0
        out = capsys.readouterr().out.splitlines()
        row = next(x for x in out if x.startswith("kernel attention.wrong:"))
        assert row.startswith("kernel attention.wrong: applies here: yes; parity here: failed "
                              f"({event.detail}; 20")
        # The next run reads the verdict: no check, the kernel never called.
        losses, events, _ = _train(_recipe(tmp_path, tiny_model_dir, "wrong-again"))
        assert losses == want
        assert checks == ["attention.wrong"] and len(calls) == in_check
        assert events[0].cached and events[0].detail == event.detail
        # Forced, the wrong kernel is what trains: the check is what kept it out.
        forced, events, _ = _train(_recipe(tmp_path, tiny_model_dir, "forced", "device"))
        assert [e.verdict for e in events] == ["unchecked"]
        assert len(calls) > in_check and abs(forced[0] - want[0]) > 1e-3

    calls.clear()
    with verify.registered(stand_in("right", calls)):
        losses, events, _ = _train(_recipe(tmp_path, tiny_model_dir, "right"))
        assert [e.verdict for e in events] == ["passed"]
        in_check = 2 * len(verify.attention_cases())
        assert len(calls) > in_check                 # called by training, after its check
        assert max(abs(a - b) for a, b in zip(losses, want)) < 1e-4


# ----- Metal: the registered kernels through the same check --------------------------------------

METAL = {k.name: k for k in verify._metal_kernels()}
on_metal = pytest.mark.skipif(not verify.metal_here(), reason="Metal is not available")


def _cases(name):
    return [pytest.param(name, case, id=f"{name}: {case.name}") for case in METAL[name].cases()]


@on_metal
@pytest.mark.parametrize("name,case", [p for n in METAL for p in _cases(n)])
def test_metal_kernel_matches_its_reference(name, case):
    assert verify.compare(METAL[name], case) is None
