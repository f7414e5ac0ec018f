"""The package's import structure: no cycles, imports point down the layer map, the library
never prints, no module grows past ~400 lines, and only the resolver (with the one suffix table)
tells weights files apart by their name.

The layer map is the one in docs/architecture.md. The graph is read from the AST of every
module, *including* imports inside functions: an acyclic graph with them in means none of them
is there to dodge a cycle (those that remain are there to keep ``import clipsr_cli`` and
``clipsr --help`` light, e.g. torch behind the CLI's commands).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "clipsr_cli"

#: lower number = lower layer; a module may import its own package and lower layers only.
LAYERS = {
    "errors": 0,
    "io": 1,
    "data": 2,
    "model": 3,
    "hub": 4,
    "infer": 5,
    "tasks": 6,
    "train": 7,
    "cli": 8,
    "__init__": 9,
    "__main__": 10,
}

MAX_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        rel = p.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imports(path: Path, modname: str, modules: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    pkg = modname if path.name == "__init__.py" else modname.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("clipsr_cli"):
                    found.add(a.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if not base.startswith("clipsr_cli"):
                continue
            for a in node.names:
                cand = f"{base}.{a.name}"
                found.add(cand if cand in modules else base)
    out = set()
    for f in found:
        r = _resolve(f, modules)
        if r and r != modname:
            out.add(r)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(p, m, modules) for m, p in modules.items()}


def _layer(mod: str) -> tuple[str, int]:
    parts = mod.split(".")
    key = parts[1] if len(parts) > 1 else "__init__"
    if key not in LAYERS:
        raise AssertionError(f"{mod}: package {key!r} is not in the layer map (tests/test_layers.py"
                             " and docs/architecture.md)")
    return key, LAYERS[key]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_checker_finds_a_cycle_and_a_layer_violation():
    # the checker itself must be able to fail
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]
    assert _layer("clipsr_cli.cli.app")[1] > _layer("clipsr_cli.model.network")[1]


def test_no_import_cycles():
    graph = _graph()
    # the package __init__ re-exports the public API lazily; it sits on top of everything
    graph = {m: {d for d in deps if d != "clipsr_cli"} for m, deps in graph.items()}
    assert _cycles(graph) == []


def test_imports_point_down_the_layer_map():
    bad = []
    for mod, deps in _graph().items():
        key, rank = _layer(mod)
        for d in deps:
            if d == "clipsr_cli":
                continue
            dkey, drank = _layer(d)
            if dkey != key and drank >= rank:
                bad.append(f"{mod} -> {d}")
    assert bad == []


@pytest.mark.parametrize("mod", sorted(m for m in _modules() if ".cli" not in m and not m.endswith("__main__")))
def test_the_library_never_prints(mod):
    """Below clipsr_cli.cli nothing writes to the terminal: no print(), no Rich console."""
    path = _modules()[mod]
    tree = ast.parse(path.read_text())
    offenders = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
            offenders.append(f"print() at line {node.lineno}")
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names]
            base = getattr(node, "module", None) or ""
            if base.startswith("rich") or any(n.startswith("rich") for n in names):
                offenders.append(f"imports rich at line {node.lineno}")
            if base.startswith("clipsr_cli.cli"):
                offenders.append(f"imports the CLI at line {node.lineno}")
    assert offenders == []


def test_no_module_is_over_400_lines():
    long = {m: n for m, p in _modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


#: The weights-file name endings; only their table's home names them in code.
_WEIGHT_SUFFIXES = {".safetensors", ".pth", ".pt", ".ckpt", ".bin"}
_WEIGHT_WORDS = {x[1:] for x in _WEIGHT_SUFFIXES}  # the same without the dot: "pth"
_SUFFIX_TABLE = "clipsr_cli.hub.weightfiles"
#: The only modules that may ask the table: what a model string names, and which files a
#: registry entry of each kind may name (the entry classes, each parsing its own table). They ask
#: it; they name no suffix themselves.
_SUFFIX_USERS = {"clipsr_cli.hub.resolve", "clipsr_cli.hub.entries"}
#: A weights ending inside a glob or regular expression: ``*.pth``, ``\.(pt|pth)$``.
_IN_PATTERN = re.compile(r"(?:\.|\\\.|\(|\|)(?:" + "|".join(sorted(_WEIGHT_WORDS)) + r")(?=$|\$|\)|\|)",
                         re.IGNORECASE)
_PATTERN_MARKS = set("*?[]$|()\\")
#: What a suffix test looks at: ``p.suffix``, ``os.path.splitext(n)[1]``, ``n.rsplit(".", 1)``
_SUFFIX_ATTRS = {"suffix", "suffixes", "ext", "extension"}
_SPLITTERS = {"splitext", "rsplit", "split", "rpartition", "partition"}


def _strings(node: ast.AST) -> list[ast.Constant]:
    """The string constants of ``node``: itself, or the items of a tuple / list / set."""
    items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return [n for n in items if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def _names_weights(text: str) -> bool:
    """A weights ending with or without its dot, or a name ending in one (``model.pth``)."""
    t = text.lower()
    return t.lstrip(".") in _WEIGHT_WORDS or any(t.endswith(x) for x in _WEIGHT_SUFFIXES)


def _looks_at_a_suffix(node: ast.AST) -> bool:
    for n in ast.walk(node):
        if isinstance(n, ast.Attribute) and n.attr in _SUFFIX_ATTRS:
            return True
        if isinstance(n, ast.Call):
            f = n.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if name in _SPLITTERS:
                return True
        if isinstance(n, ast.Name) and n.id in _SUFFIX_ATTRS:
            return True
    return False


def _suffix_tests(tree: ast.AST) -> list[str]:
    r"""Where code names a weights suffix or tells weights files apart by their name: a string
    constant that is exactly a suffix (``p.suffix == ".pth"``, ``endswith((".pt", ...))``,
    ``with_suffix(".safetensors")``), a glob or regex for one (``"*.pth"``, ``r"\.pt$"``),
    ``endswith`` of a name ending in one or of a suffix without its dot (``endswith("pth")``),
    a suffix compared with one without its dot (``ext.lstrip(".") in ("pt", "pth")``), or where
    it asks the suffix table (imports it). Docstrings and messages that merely mention ``.pth``
    in a sentence are not tests."""
    found = []

    def hit(node: ast.AST, what: str) -> None:
        found.append(f"{what} at line {node.lineno}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            v = node.value
            if v.lower() in _WEIGHT_SUFFIXES:
                hit(node, repr(v))
            elif (not any(c.isspace() for c in v) and _PATTERN_MARKS & set(v)
                  and _IN_PATTERN.search(v)):
                hit(node, f"pattern {v!r}")
            elif v.startswith(_SUFFIX_TABLE):
                hit(node, "names the suffix table")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in ("endswith", "removesuffix"):
            for arg in node.args:
                for c in _strings(arg):
                    if _names_weights(c.value) and c.value.lower() not in _WEIGHT_SUFFIXES:
                        hit(c, f"{node.func.attr}({c.value!r})")
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(_looks_at_a_suffix(s) for s in sides):
                for side in sides:
                    for c in _strings(side):
                        if c.value.lower().lstrip(".") in _WEIGHT_WORDS \
                                and c.value.lower() not in _WEIGHT_SUFFIXES:
                            hit(c, f"suffix compared with {c.value!r}")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            if any(n.startswith(_SUFFIX_TABLE) or n == "weightfiles" for n in names):
                hit(node, "imports the suffix table")
    return found


def test_the_suffix_checker_can_fail():
    bad = {
        'ok = p.suffix.lower() in (".PTH", ".ckpt")': ["'.PTH' at line 1", "'.ckpt' at line 1"],
        'ok = name.endswith(".safetensors")': ["'.safetensors' at line 1"],
        'out = p.with_suffix(".pt")': ["'.pt' at line 1"],
        'ok = name.lower().endswith(("pth", "model.bin"))': ["endswith('pth') at line 1",
                                                             "endswith('model.bin') at line 1"],
        'ok = os.path.splitext(n)[1].lstrip(".") in {"pt", "ckpt"}':
            ["suffix compared with 'pt' at line 1", "suffix compared with 'ckpt' at line 1"],
        'ok = "safetensors" == n.rsplit(".", 1)[-1]': ["suffix compared with 'safetensors' at line 1"],
        'files = folder.glob("*.safetensors")': ["pattern '*.safetensors' at line 1"],
        'ok = re.search(r"\\.(pt|pth)$", name)': ["pattern '\\\\.(pt|pth)$' at line 1"],
        "from clipsr_cli.hub.weightfiles import weights_format":
            ["imports the suffix table at line 1"],
        "from clipsr_cli.hub import weightfiles": ["imports the suffix table at line 1"],
        'm = importlib.import_module("clipsr_cli.hub.weightfiles")':
            ["names the suffix table at line 1"],
    }
    for code, expected in bad.items():
        assert _suffix_tests(ast.parse(code)) == expected, code
    fine = ['"""Loads .pth files."""\nname = "model.safetensors"',
            'if fmt == "safetensors": pass',  # a format, not a name ending
            'raise E("a spandrel file must end in .pth or .safetensors")',
            'ok = p.suffix.lower() in (".png", ".jpg")',
            'ok = name.endswith(("_like", "/"))',
            'pat = re.compile(r"^bicubic:([234])$")',
            'ok = name.endswith("cabinet")']
    for code in fine:
        assert _suffix_tests(ast.parse(code)) == [], code


def test_only_the_resolver_tests_weight_file_suffixes():
    """What a model string names is decided once (hub/resolve.py, with the one suffix table in
    hub/weightfiles.py; the registry's entry classes ask the table which files their kind may
    name): no other module tells weights files apart by their name, and those two name no suffix
    themselves."""
    bad = {}
    for mod, path in _modules().items():
        if mod == _SUFFIX_TABLE:
            continue
        found = _suffix_tests(ast.parse(path.read_text()))
        if mod in _SUFFIX_USERS:
            found = [f for f in found if not f.startswith("imports the suffix table")]
        if found:
            bad[mod] = found
    assert bad == {}
