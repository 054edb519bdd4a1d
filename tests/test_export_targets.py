"""`macft export --to ollama|lmstudio`: the Modelfile's TEMPLATE renders what the model's own
chat template renders, its stops close the turns, the GGUF beside it passes --verify.

Ollama renders TEMPLATE with Go's text/template. ``go_render`` below implements the part of it
Ollama's templates use: text and actions with ``{{-``/``-}}`` trimming, ``.Field``, ``$.Field``,
variables (``:=`` and ``=``), string and bool literals, ``eq``/``ne``/``not``/``and``/``or``,
``if``/``else if``/``else``/``end`` and ``range``. The data is what Ollama passes: for chat,
``Messages`` (system messages included, Modelfile SYSTEM prepended when none) and ``System``
(the system messages joined); for generate, ``System``/``Prompt``/``Response``.
"""

from __future__ import annotations

import re
import shlex

import pytest

import macft  # noqa: F401  (loads OpenBLAS before mlx)
import gguf as gguf_py

from macft.cli import main
from macft.export import ollama
from macft.models.load import load_base

# ----- a Go text/template renderer (the subset Ollama's templates use) ------------------------

ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)


def _lex(template: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    for m in ACTION.finditer(template):
        text = template[pos:m.start()]
        if m.group(1):
            text = text.rstrip(" \t\r\n")
        if out and out[-1][0] == "trim-next":
            out.pop()
            text = text.lstrip(" \t\r\n")
        out.append(("text", text))
        out.append(("action", m.group(2).strip()))
        if m.group(3):
            out.append(("trim-next", ""))
        pos = m.end()
    text = template[pos:]
    if out and out[-1][0] == "trim-next":
        out.pop()
        text = text.lstrip(" \t\r\n")
    out.append(("text", text))
    return out


def _parse(tokens: list, i: int = 0, stop=("end",)):
    """A list of nodes up to one of ``stop``: ("text", s) | ("out", expr) | ("if", [(cond,
    body)], else_body) | ("range", expr, body); returns (nodes, index, stopper)."""
    nodes = []
    while i < len(tokens):
        kind, value = tokens[i]
        i += 1
        if kind == "text":
            nodes.append(("text", value))
            continue
        word = value.split(" ", 1)[0]
        if word in ("end", "else"):
            if word not in stop and value.split(" ")[:2] != ["else", "if"]:
                raise SyntaxError(f"unexpected {{{{ {value} }}}}")
            return nodes, i, value
        if word == "if":
            branches, cond, other = [], value[3:], []
            while True:
                body, i, stopper = _parse(tokens, i, ("end", "else"))
                branches.append((cond, body))
                if stopper == "end":
                    break
                if stopper.startswith("else if "):
                    cond = stopper[len("else if "):]
                    continue
                other, i, _ = _parse(tokens, i, ("end",))
                break
            nodes.append(("if", branches, other))
        elif word == "range":
            body, i, _ = _parse(tokens, i, ("end",))
            nodes.append(("range", value[6:], body))
        else:
            nodes.append(("out", value))
    return nodes, i, None


def _words(expr: str) -> list[str]:
    return shlex.split(expr, posix=False)


def _value(word: str, dot, scope: dict):
    if word.startswith('"'):
        return word[1:-1].replace("\\n", "\n")
    if word in ("true", "false"):
        return word == "true"
    if word == ".":
        return dot
    base, path = (scope["$"], word[2:]) if word.startswith("$.") else \
        (dot, word[1:]) if word.startswith(".") else (scope[word.split(".")[0]], "")
    for part in filter(None, path.split(".")):
        base = base.get(part, "") if isinstance(base, dict) else getattr(base, part)
    return base


FUNCS = {"eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "not": lambda a: not a,
         "and": lambda a, b: a and b, "or": lambda a, b: a or b}


def _eval(expr: str, dot, scope: dict):
    words = _words(expr)
    if len(words) >= 2 and words[1] in (":=", "="):
        if words[1] == "=" and words[0] not in scope:
            raise NameError(f"undefined variable {words[0]}")
        scope[words[0]] = _eval(" ".join(words[2:]), dot, scope)
        return ""
    if words[0] in FUNCS:
        return FUNCS[words[0]](*(_value(w, dot, scope) for w in words[1:]))
    assert len(words) == 1, expr
    return _value(words[0], dot, scope)


def _run(nodes, dot, scope: dict, out: list[str]) -> None:
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "out":
            value = _eval(node[1], dot, scope)
            out.append("" if value is None else str(value))
        elif node[0] == "if":
            for cond, body in node[1]:
                if _eval(cond, dot, scope):
                    _run(body, dot, scope, out)
                    break
            else:
                _run(node[2], dot, scope, out)
        else:
            for item in _eval(node[1], dot, scope) or []:
                _run(node[2], item, scope, out)


def go_render(template: str, data: dict) -> str:
    nodes, _, stopper = _parse(_lex(template))
    assert stopper is None, "unbalanced {{ end }}"
    out: list[str] = []
    _run(nodes, data, {"$": data}, out)
    return "".join(out)


def ollama_chat(template: str, messages: list[dict], default_system: str | None) -> str:
    """What Ollama's /api/chat renders: Modelfile SYSTEM first when the chat has none."""
    if default_system and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": default_system}] + messages
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    return go_render(template, {"Messages": [dict((k.capitalize(), v) for k, v in m.items())
                                             for m in messages], "System": system})


def test_the_renderer_follows_go_trimming_and_scoping():
    assert go_render("a \n{{- .X -}}\n b", {"X": 1}) == "a1b"
    tpl = ('{{- $n := true }}{{ range .L }}{{ if $n }}[{{ . }}]{{ $n = false }}'
           '{{ else if eq . "b" }}<b>{{ else }}{{ . }}{{ end }}{{ end }}|{{ $.Y }}')
    assert go_render(tpl, {"L": ["a", "b", "c"], "Y": "y"}) == "[a]<b>c|y"
    with pytest.raises(NameError):
        go_render("{{ $z = 1 }}", {})


# ----- the two models -------------------------------------------------------------------------

TURNS = [{"role": "system", "content": "You answer in one word."},
         {"role": "user", "content": "Name a colour."},
         {"role": "assistant", "content": "Blue."},
         {"role": "user", "content": "And a fruit?"}]
ANSWER = {"role": "assistant", "content": "Pear."}


@pytest.fixture(scope="module")
def tiny_gemma_gguf(tmp_path_factory):
    from tests.test_gemma3 import tiny_gemma, write_llama_cpp_gemma

    model, cfg = tiny_gemma(seed=1)
    path = tmp_path_factory.mktemp("gemma") / "tiny-gemma3.gguf"
    write_llama_cpp_gemma(path, model, cfg, types={})       # float tensors: fast and exact
    return path


def _gguf_meta(path):
    reader = gguf_py.GGUFReader(str(path))
    field = reader.fields.get("tokenizer.ggml.add_bos_token")
    return bool(field.parts[field.data[0]][0]) if field is not None else False


def _check_modelfile(folder, tokenizer, fmt_name: str, stop: str):
    text = (folder / "Modelfile").read_text()
    template = re.search(r'TEMPLATE """(.*?)"""', text, re.S).group(1)
    system = re.search(r'SYSTEM """(.*?)"""', text, re.S)
    system = system.group(1) if system else None
    stops = re.findall(r'PARAMETER stop "(.*?)"', text)
    gguf_file = folder / re.search(r"FROM \./(\S+)", text).group(1)
    bos = tokenizer._tokenizer.bos_token if _gguf_meta(gguf_file) else ""
    assert stops[0] == stop, stops

    def own(messages, generation=True):
        return ollama.render(tokenizer, messages, generation=generation)

    # Chat: two turns with a system message, and without one (SmolLM2 adds its own).
    for turns in (TURNS, TURNS[1:]):
        assert bos + ollama_chat(template, turns, system) == own(turns), turns
        # The answer ends at the stop token: what follows the stop in the model's own
        # rendering of the finished conversation is only the turn separator.
        done = own(turns + [ANSWER], generation=False)
        head = bos + ollama_chat(template, turns, system) + ANSWER["content"]
        assert done.startswith(head + stop), (done, head)
        assert done[len(head + stop):] in ("", "\n")
    # Generate: one exchange through .System/.Prompt/.Response.
    legacy = go_render(template, {"System": TURNS[0]["content"], "Prompt": TURNS[1]["content"],
                                  "Response": TURNS[2]["content"]})
    assert bos + legacy == own(TURNS[:3], generation=False)
    assert fmt_name in ollama.turn_format(tokenizer).name
    return gguf_file


def test_smollm2_modelfile_renders_chatml_with_its_default_system(tmp_path, smollm2_path,
                                                                  capsys):
    out = tmp_path / "ollama"
    assert main(["export", str(smollm2_path), "--to", "ollama", str(out), "--quant",
                 "q8_0"]) == 0
    said = capsys.readouterr().out
    assert f"ollama create {ollama_name(smollm2_path)} -f {out / 'Modelfile'}" in said, said
    loaded = load_base(str(smollm2_path))
    modelfile = (out / "Modelfile").read_text()
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM' in modelfile
    _check_modelfile(out, loaded.tokenizer, "chatml", "<|im_end|>")


def ollama_name(path) -> str:
    from macft.export.apps import model_name

    return model_name(path.stem)


def test_tiny_gemma3_modelfile_renders_gemma_turns_and_verifies(tmp_path, tiny_gemma_gguf,
                                                                 capsys):
    pytest.importorskip("llama_cpp", exc_type=ImportError)
    out = tmp_path / "ollama"
    assert main(["export", str(tiny_gemma_gguf), "--to", "ollama", str(out), "--verify"]) == 0
    said = capsys.readouterr().out
    assert "verified with llama.cpp" in said, said
    loaded = load_base(str(tiny_gemma_gguf))
    gguf_file = _check_modelfile(out, loaded.tokenizer, "gemma", "<end_of_turn>")
    assert gguf_file.name == "tiny-gemma3.gguf"
    assert "SYSTEM" not in (out / "Modelfile").read_text()
    assert '"<eos>"' in (out / "Modelfile").read_text()


def test_tiny_chatml_model_exports_for_ollama_and_verifies(tmp_path, tiny_model_dir, capsys):
    pytest.importorskip("llama_cpp", exc_type=ImportError)
    out = tmp_path / "ollama"
    assert main(["export", str(tiny_model_dir), "--to", "ollama", str(out), "--verify"]) == 0
    assert "verified with llama.cpp (f16 vs MLX)" in capsys.readouterr().out
    loaded = load_base(str(tiny_model_dir))
    assert _check_modelfile(out, loaded.tokenizer, "chatml", "<|im_end|>").name == \
        "tiny-llama.gguf"
    assert "SYSTEM" not in (out / "Modelfile").read_text()


def test_gemma3_modelfile_without_writing_a_gguf(tiny_gemma_gguf, tmp_path):
    """The same template check without llama.cpp: the Modelfile text alone."""
    loaded = load_base(str(tiny_gemma_gguf))
    spec = ollama.modelfile(loaded.tokenizer, "m.gguf")
    (tmp_path / "Modelfile").write_text(spec.text())
    import shutil
    shutil.copy(tiny_gemma_gguf, tmp_path / "m.gguf")
    _check_modelfile(tmp_path, loaded.tokenizer, "gemma", "<end_of_turn>")
    assert spec.stops == ("<end_of_turn>", "<eos>")


def test_a_template_macft_cannot_translate_is_refused_in_one_line(tmp_path, tiny_model_dir,
                                                                  capsys):
    import shutil

    model = tmp_path / "odd"
    shutil.copytree(tiny_model_dir, model)
    (model / "chat_template.jinja").write_text(
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}")
    assert main(["export", str(model), "--to", "ollama", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "none of the turn formats" in err, err
    assert not (tmp_path / "o" / "odd.gguf").exists()


def test_lmstudio_layout_and_overwrite_refusal(tmp_path, tiny_model_dir, capsys):
    models = tmp_path / "models"
    args = ["export", str(tiny_model_dir), "--to", "lmstudio", str(models), "--quant", "q8_0"]
    assert main(args) == 0
    path = models / "macft" / "tiny-llama" / "tiny-llama-q8_0.gguf"
    assert path.is_file() and path.stat().st_size > 0
    before = path.stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"macft: error: {path}: exists; pass --force to overwrite it", err
    assert path.stat().st_mtime_ns == before
    assert main(args + ["--force"]) == 0
    assert path.stat().st_mtime_ns != before


def test_gguf_target_refuses_to_overwrite_without_force(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "m.gguf"
    out.write_bytes(b"keep me")
    assert main(["export", str(tiny_model_dir), "--gguf", str(out)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"
