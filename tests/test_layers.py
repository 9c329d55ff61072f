"""The shape of the code: every module has one layer, imports point down only (also imports inside functions), no
cycles, no entry script imported, and the size limits. LAYERS is the one place that says which module is where;
README's Layout section draws it."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Bottom to top. A module imports modules of lower layers, or of its own layer listed before it.
LAYERS = {
    "leaves": ["errors", "flags", "files", "stats", "distributed"],
    "ML": ["models", "losses", "imagefolder", "datasets", "splits", "dataloader", "device", "optim", "engine", "eta"],
    "artefacts": [
        "config",
        "rules",
        "checkpoint",
        "inputs",
        "wandb_log",
        "tracking",
        "wandb_reports",
        "figures",
        "notify",
    ],
    "run": ["rundir", "configfile", "resume", "saver", "run"],
    "experiments": [
        "study_report",
        "study",
        "launch",
        "baseline",
        "distill",
        "distill_report",
        "pooled",
        "probes",
        "transfer",
        "evaluation",
    ],
    "commands": ["cli", "exercise1", "exercise2", "plots"],
}
ENTRY_SCRIPTS = {"exercise1", "exercise2", "plots"}
MAX_MODULE_LINES, MAX_FUNCTION_LINES, MAX_COLUMNS = 350, 60, 120


def modules():
    """{name: path} of every project module (models/ is one package)."""
    found = {p.stem: p for p in ROOT.glob("*.py")}
    found["models"] = ROOT / "models"
    return found


def sources(path):
    return sorted(path.glob("*.py")) if path.is_dir() else [path]


def imports(path, names):
    """The project modules a module imports, anywhere in it (inside functions too)."""
    out = set()
    for src in sources(path):
        for node in ast.walk(ast.parse(src.read_text())):
            if isinstance(node, ast.Import):
                out |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                out.add(node.module.split(".")[0])
    return (out & names) - {path.stem}


def rank():
    order = [m for layer in LAYERS.values() for m in layer]
    return {m: (i, order.index(m)) for i, layer in enumerate(LAYERS.values()) for m in layer}


def test_every_module_has_one_layer():
    placed = [m for layer in LAYERS.values() for m in layer]
    assert len(placed) == len(set(placed)), "a module is in two layers"
    assert set(placed) == set(modules()), (
        f"not placed: {set(modules()) - set(placed)}; gone: {set(placed) - set(modules())}"
    )


def test_imports_point_down_only_and_never_at_an_entry_script():
    where, names = rank(), set(modules())
    upward = [
        f"{m} ({list(LAYERS)[where[m][0]]}) imports {d} ({list(LAYERS)[where[d][0]]})"
        for m, path in modules().items()
        for d in imports(path, names)
        if where[d][1] >= where[m][1] or d in ENTRY_SCRIPTS
    ]
    assert not upward, "\n".join(upward)


def find_cycle(graph):
    """One import cycle of `graph` ({module: modules it imports}) as a list, or None."""
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt, path + [nxt])):
                return cycle
        state[node] = "done"
        return None

    return next((c for n in sorted(graph) if n not in state and (c := visit(n, [n]))), None)


def test_no_import_cycle():
    names = set(modules())
    assert find_cycle({m: imports(p, names) for m, p in modules().items()}) is None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def code_files():
    return [src for path in modules().values() for src in sources(path)]


@pytest.mark.parametrize("src", code_files(), ids=lambda p: p.name)
def test_size_limits(src):
    text = src.read_text()
    lines = text.splitlines()
    assert len(lines) <= MAX_MODULE_LINES, f"{src.name} has {len(lines)} lines"
    long_lines = [i for i, line in enumerate(lines, 1) if len(line) > MAX_COLUMNS]
    assert not long_lines, f"{src.name}: lines {long_lines[:5]} are over {MAX_COLUMNS} columns"
    tree = ast.parse(text)
    long_functions = [
        f"{n.name} ({n.end_lineno - n.lineno + 1} lines)"
        for n in ast.walk(tree)
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long_functions, f"{src.name}: {', '.join(long_functions)}"
    assert ast.get_docstring(tree), f"{src.name} has no docstring naming its concern"
