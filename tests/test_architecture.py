"""The layout's rules, checked on the project's source with `ast` (nothing is imported).

Layers, lowest first; an import may point down or sideways, never up:
  0 base         fileio, utils, sde_lib, configs
  1 networks     models
  2 math         losses, sampling, likelihood, samplers, controllable_generation
  3 data/metrics datasets, datasets_offline, evaluation
  4 runtime      training
  5 orchestration run_lib, experiments
  6 command line main, cli_checks, sweep (and every `if __name__ == "__main__":` block)
Rules: no import cycles; no import against the layer order; no module uses another module's
`_private` name; project imports sit at module level (the command line excepted); importing a
module changes nothing global (no top-level calls, no assignments into other modules, no
module-level mutable caches); the math reads no config outside its paper entry points; source
files stay under 600 lines and main.py under 80.

Each rule also runs on a small synthetic tree with one violation, so the checker itself is
shown to fail when it should.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SKIP_DIRS = {"tests", "bench", "runs", "docs", "scripts", ".venv", "venv", "build"}
LAYERS = {
    "fileio": 0,  # the path layer: local disks and object stores (gs://)
    "utils": 0,
    "sde_lib": 0,
    "configs": 0,
    "models": 1,
    "losses": 2,
    "sampling": 2,
    "likelihood": 2,
    "samplers": 2,
    "controllable_generation": 2,  # the paper's names for samplers/controllable.py
    "datasets": 3,
    "datasets_offline": 3,
    "evaluation": 3,
    "training": 4,
    "run_lib": 5,
    "experiments": 5,
    "main": 6,
    "cli_checks": 6,  # main.py's checks before the heavy imports
    "sweep": 6,
}
CLI_LAYER = 6
# Imports that the layer order allows but the design does not: metrics never build networks
# or read datasets (they take images and a features function).
FORBIDDEN = {("evaluation", "models"), ("evaluation", "datasets")}
# Math modules and the functions in them that may read a config (the paper's entry points).
MATH = ("sde_lib", "losses", "sampling", "likelihood", "samplers", "controllable_generation")
CONFIG_READERS = {("sampling", "get_sampling_fn"), ("losses", "get_optimizer")}
MAX_LINES, MAX_MAIN_LINES = 600, 80


def _modules(root: pathlib.Path) -> dict[str, pathlib.Path]:
    out = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(p in SKIP_DIRS or p.startswith(".") for p in rel.parts[:-1]):
            continue
        name = ".".join(rel.with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _layer(module: str) -> int | None:
    return LAYERS.get(module.split(".")[0])


def _is_main_guard(node) -> bool:
    test = getattr(node, "test", None)
    return (
        isinstance(node, ast.If)
        and isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
    )


def _resolve(name: str, modules) -> str | None:
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


class _Imports(ast.NodeVisitor):
    """Project imports of one module: (target, line, where) with where in
    {'top', 'function', 'main'}; and the local names bound to project modules."""

    def __init__(self, module: str, modules):
        self.module, self.modules = module, modules
        self.found, self.aliases, self.private = [], {}, []
        self._where = ["top"]

    def _add(self, target, node, imported_name=None):
        if target is None or target == self.module:
            return
        self.found.append((target, node.lineno, self._where[-1]))
        if imported_name and imported_name.startswith("_") and not imported_name.startswith("__"):
            self.private.append(
                f"{self.module}:{node.lineno} imports {imported_name} from {target}"
            )

    def visit_Import(self, node):
        for alias in node.names:
            target = _resolve(alias.name, self.modules)
            self._add(target, node)
            if target and alias.asname:
                self.aliases[alias.asname] = target
            elif target:
                self.aliases[alias.name.split(".")[0]] = (
                    _resolve(alias.name.split(".")[0], self.modules) or target
                )

    def visit_ImportFrom(self, node):
        base = node.module or ""
        if node.level:
            package = self.module.split(".")[: -node.level]
            base = ".".join(package + ([base] if base else []))
        for alias in node.names:
            full = f"{base}.{alias.name}"
            target = _resolve(full, self.modules) if full in self.modules else None
            if target:  # `from package import module`
                self._add(target, node)
                self.aliases[alias.asname or alias.name] = target
            else:  # `from module import name`
                self._add(_resolve(base, self.modules), node, alias.name)

    def _nested(self, node, where):
        self._where.append(where)
        self.generic_visit(node)
        self._where.pop()

    def visit_FunctionDef(self, node):
        self._nested(node, "main" if self._where[-1] == "main" else "function")

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_If(self, node):
        self._nested(node, "main") if _is_main_guard(node) else self.generic_visit(node)


def _parse(modules):
    """{module: (_Imports, tree)} for every module."""
    out = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        visitor = _Imports(module, modules)
        visitor.visit(tree)
        out[module] = (visitor, tree)
    return out


def _private_attribute_uses(module, visitor, tree) -> list[str]:
    uses = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and isinstance(node.value, ast.Name)
            and node.value.id in visitor.aliases
            and visitor.aliases[node.value.id] != module
        ):
            uses.append(f"{module}:{node.lineno} uses {node.value.id}.{node.attr}")
    return uses


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def _import_time_effects(module, tree) -> list[str]:
    """Top-level statements that change global state when the module is imported."""
    found = []
    for node in tree.body:
        if _is_main_guard(node):
            continue
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            found.append(f"{module}:{node.lineno} calls {ast.unparse(node.value)[:60]} at import")
        targets = getattr(node, "targets", None) or [getattr(node, "target", None)]
        for target in filter(None, targets):
            if isinstance(target, (ast.Subscript, ast.Attribute)):
                found.append(f"{module}:{node.lineno} assigns {ast.unparse(target)} at import")
        value = getattr(node, "value", None)
        empty_container = isinstance(value, (ast.Dict, ast.List, ast.Set)) and not (
            getattr(value, "keys", None) or getattr(value, "elts", None)
        )
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and empty_container:
            found.append(f"{module}:{node.lineno} creates a module-level mutable cache")
    return found


def _config_reads(module, tree) -> list[str]:
    """Math-module functions that take or read a `config` (outside the paper entry points)."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef):
            continue
        if (module.split(".")[-1], node.name) in CONFIG_READERS:
            continue
        names = {a.arg for a in node.args.args + node.args.kwonlyargs}
        if "config" in names:
            found.append(f"{module}:{node.lineno} {node.name}() takes a config")
    return found


def check(root: pathlib.Path) -> dict[str, list[str]]:
    """Every rule's violations under `root` (empty lists when the layout is clean)."""
    modules = _modules(root)
    parsed = _parse(modules)
    problems = {k: [] for k in ("cycles", "layers", "private", "placement", "effects")}
    problems.update(config=[], size=[], unknown=[])
    edges = {}
    for module, (visitor, tree) in parsed.items():
        layer = _layer(module)
        if layer is None:
            problems["unknown"].append(f"{module} is in no layer: add it to LAYERS")
            continue
        for target, line, where in visitor.found:
            # A `__main__` block is the command line: a node of its own, at the top layer.
            source = f"{module}:__main__" if where == "main" else module
            edges.setdefault(source, set()).add(target)
            source_layer = CLI_LAYER if where == "main" else layer
            target_layer = _layer(target)
            if target_layer is not None and target_layer > source_layer:
                problems["layers"].append(
                    f"{module}:{line} (layer {source_layer}) imports {target} "
                    f"(layer {target_layer})"
                )
            if (module.split(".")[0], target.split(".")[0]) in FORBIDDEN:
                problems["layers"].append(f"{module}:{line} imports {target} (forbidden)")
            if where == "function" and layer < CLI_LAYER:
                problems["placement"].append(f"{module}:{line} imports {target} in a function")
        problems["private"] += visitor.private + _private_attribute_uses(module, visitor, tree)
        if layer < CLI_LAYER:
            problems["effects"] += _import_time_effects(module, tree)
        if module.split(".")[0] in MATH:
            problems["config"] += _config_reads(module, tree)
        if not module.startswith("configs"):
            lines = len(modules[module].read_text().splitlines())
            limit = MAX_MAIN_LINES if module == "main" else MAX_LINES
            if lines > limit:
                problems["size"].append(f"{module}: {lines} lines (limit {limit})")
    problems["cycles"] = [" <-> ".join(c) for c in _cycles(edges)]
    return problems


# --------------------------------------------------------------------------------------------
# The project itself.
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def project():
    return check(ROOT)


@pytest.mark.parametrize(
    "rule", ["cycles", "layers", "private", "placement", "effects", "config", "size", "unknown"]
)
def test_project_follows_the_rule(project, rule):
    assert project[rule] == [], "\n".join(project[rule])


def test_every_project_module_is_checked():
    modules = _modules(ROOT)
    assert {
        "run_lib",
        "training.loop",
        "experiments.sweep",
        "samplers.fast_samplers",
        "main",
    } <= set(modules)
    assert len(modules) > 40


# --------------------------------------------------------------------------------------------
# The checker fails when it should: one violation per synthetic tree.
# --------------------------------------------------------------------------------------------

CLEAN = {
    "sde_lib.py": "import jax\n\n\ndef f(x):\n    return x\n",
    "sampling.py": "import sde_lib\n\n\ndef get_sampling_fn(config):\n    return sde_lib.f\n",
    "training/__init__.py": "",
    "training/loop.py": "import sampling\n",
    "run_lib.py": "from training import loop\n",
    "main.py": "import os\n\nos.environ.setdefault('A', '1')\n\n\ndef main():\n    import run_lib\n",
}


def _tree(tmp_path, **changes) -> dict[str, list[str]]:
    files = dict(CLEAN)
    files.update({k.replace("__", "/") + ".py": v for k, v in changes.items()})
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return check(tmp_path)


def test_checker_passes_the_clean_tree(tmp_path):
    assert all(v == [] for v in _tree(tmp_path).values()), _tree(tmp_path)


@pytest.mark.parametrize(
    "changes,rule,expected",
    [
        # An upward import (math -> orchestration), which is also a cycle here.
        ({"sampling": "import run_lib\n"}, "layers", "sampling:1 (layer 2) imports run_lib"),
        ({"sampling": "import run_lib\n"}, "cycles", "run_lib <-> sampling <-> training.loop"),
        # A private name of another module, by attribute and by `from ... import`.
        ({"run_lib": "import sampling\n\nsampling._helper\n"}, "private", "uses sampling._helper"),
        ({"run_lib": "from sampling import _helper\n"}, "private", "imports _helper from sampling"),
        # A project import hidden in a function of a non-CLI module.
        ({"run_lib": "def f():\n    import sampling\n"}, "placement", "imports sampling in a"),
        # Import-time side effects and a module-global cache.
        ({"sampling": "import os\n\nos.environ['X'] = '1'\n"}, "effects", "assigns os.environ"),
        ({"sampling": "import jax\n\njax.config.update('x', 1)\n"}, "effects", "calls jax.config"),
        ({"sampling": "_CACHE = {}\n"}, "effects", "module-level mutable cache"),
        # Math that reads a config outside the paper's entry point.
        ({"sde_lib": "def get_sde(config):\n    return 1\n"}, "config", "get_sde() takes a config"),
        # A file over the size limit, and main.py over its own.
        ({"run_lib": "x = 1\n" * 601}, "size", "run_lib: 601 lines"),
        ({"main": "x = 1\n" * 81}, "size", "main: 81 lines (limit 80)"),
        ({"stray": "x = 1\n"}, "unknown", "stray is in no layer"),
    ],
)
def test_checker_reports_each_violation(tmp_path, changes, rule, expected):
    found = _tree(tmp_path, **changes)[rule]
    assert any(expected in line for line in found), found


def test_main_guard_imports_count_as_the_command_line(tmp_path):
    """`python module.py` entry points may import orchestration: no upward import, no cycle."""
    guard = "import sde_lib\n\nif __name__ == '__main__':\n    import run_lib\n"
    found = _tree(tmp_path, sampling=guard)
    assert found["layers"] == [] and found["cycles"] == [] and found["placement"] == []
