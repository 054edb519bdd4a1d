"""A time and size limit on chat-template rendering, so a template cannot hang macft.

Chat templates come with the model and run in transformers' Jinja sandbox, which stops attribute
tricks but not work: ``{% for i in range(100000) %}{% for j in range(100000) %}`` renders for
hours. transformers compiles each template once (cached) in its own sandboxed environment; the
guard wraps that environment's ``concat`` (which drains the rendered pieces) and ``call`` (every
function call of the template, e.g. ``range``), and both check one deadline per render. The
wrapping only ever adds the limit, is done once per template, and leaves rendering otherwise
untouched.
"""

from __future__ import annotations

import threading
import time

LIMIT_SECONDS = 10.0          # no real chat template needs a second for one conversation
MAX_CHARS = 20_000_000        # nor renders 20 MB of text
_CHECK_EVERY = 256

_local = threading.local()


def guard(tokenizer) -> None:
    """Put the limit on every chat template of ``tokenizer`` (a transformers tokenizer)."""
    templates = getattr(tokenizer, "chat_template", None)
    if isinstance(templates, str):
        templates = [templates]
    elif isinstance(templates, dict):
        templates = [t for t in templates.values() if isinstance(t, str)]
    else:
        return
    from transformers.utils.chat_template_utils import _compile_jinja_template

    for text in templates:
        env = _compile_jinja_template(text).environment
        if not getattr(env, "_macft_guarded", False):
            _install(env)


def _install(env) -> None:
    concat, call = env.concat, env.call

    def guarded_concat(pieces):
        outer = getattr(_local, "deadline", None) is None
        if outer:
            _local.deadline = time.monotonic() + LIMIT_SECONDS
        try:
            out, size = [], 0
            for i, piece in enumerate(pieces):
                out.append(piece)
                size += len(piece)
                if i % _CHECK_EVERY == 0:
                    _check(size)
            _check(size)
            return concat(out)
        finally:
            if outer:
                _local.deadline = None

    def guarded_call(*args, **kwargs):
        _check(0)
        return call(*args, **kwargs)

    env.concat, env.call, env._macft_guarded = guarded_concat, guarded_call, True


def _check(size: int) -> None:
    from jinja2.exceptions import TemplateRuntimeError

    deadline = getattr(_local, "deadline", None)
    if deadline is not None and time.monotonic() > deadline:
        raise TemplateRuntimeError(f"stopped after {LIMIT_SECONDS:g} s of rendering (runaway "
                                   "loops in the template?)")
    if size > MAX_CHARS:
        raise TemplateRuntimeError(f"stopped after {MAX_CHARS:,} rendered characters "
                                   "(runaway loops in the template?)")
