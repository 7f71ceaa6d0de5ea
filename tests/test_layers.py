"""Which way imports run: read from the source (ast), not by importing.

  cli, quickstart, present        the command line: may import anything
  adapt                           NetAdapt: builds on frontends, compiler and runtime
  frontends, compiler             -> schedules -> runtime, rpc -> targets, errors, stops

No module below the command line imports ``present``, ``cli`` or ``quickstart``; ``schedules``,
``runtime`` and ``rpc`` import nothing of ``compiler`` or ``frontends``; ``frontends`` and
``compiler`` do not import each other; and no import inside a function closes a cycle that the
module-level imports would otherwise make (an import inside a function is for laziness, never to
dodge a cycle). Per-CPU facts: no CPU's name outside the target table.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMMAND_LINE = {"cli", "quickstart", "present", "__main__"}
FORBIDDEN = {  # layer -> the layers it must not import
    "adapt": COMMAND_LINE,
    "schedules": {"adapt", "compiler", "frontends", *COMMAND_LINE},
    "runtime": {"adapt", "compiler", "frontends", "schedules", *COMMAND_LINE},
    "rpc": {"adapt", "compiler", "frontends", "schedules", *COMMAND_LINE},
    "compiler": {"adapt", "frontends", *COMMAND_LINE},
    "frontends": {"adapt", "compiler", "schedules", *COMMAND_LINE},
    "targets": {"adapt", "compiler", "frontends", "schedules", "runtime", "rpc", *COMMAND_LINE},
    "errors": {"adapt", "compiler", "frontends", "schedules", "runtime", "rpc", "targets", *COMMAND_LINE},
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in ("tests", "benchmarks", ".venv", "build", "docs") or rel.parts[0].startswith("."):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(["mobilec", *parts])] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str:
    """The mobilec module an import names (``from mobilec.x import y``: mobilec.x.y if a module)."""
    return name if name in MODULES else name.rsplit(".", 1)[0] if name.rsplit(".", 1)[0] in MODULES else name


def _imports(path: Path) -> list[tuple[str, bool, int]]:
    """(imported mobilec module, inside a function, line) for every import in the file."""
    tree = ast.parse(path.read_text())
    found = []

    def visit(node, nested: bool):
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((a.name, nested, child.lineno) for a in child.names if a.name.startswith("mobilec"))
            elif isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("mobilec"):
                found.extend((_resolve(f"{child.module}.{a.name}"), nested, child.lineno) for a in child.names)
            visit(child, inner)

    visit(tree, False)
    return [(_resolve(m), nested, line) for m, nested, line in found if _resolve(m).startswith("mobilec")]


IMPORTS = {mod: _imports(path) for mod, path in MODULES.items()}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "mobilec"


@pytest.mark.structure
def test_imports_run_one_way():
    wrong = [f"{MODULES[mod].relative_to(ROOT)}:{line} imports {target}"
             for mod, imports in IMPORTS.items() for target, _, line in imports
             if _layer(target) in FORBIDDEN.get(_layer(mod), set())]
    assert not wrong, "\n".join(wrong)


def _reaches(start: str, goal: str) -> bool:
    """Whether ``start``'s module-level imports reach ``goal`` (transitively; not through a
    package's ``__init__``, which only gathers its modules' names for the API)."""
    seen, todo = set(), [start]
    while todo:
        mod = todo.pop()
        if mod == goal:
            return True
        if mod in seen or mod not in IMPORTS:
            continue
        seen.add(mod)
        todo += [t for t, nested, _ in IMPORTS[mod] if not nested and t in MODULES and MODULES[t].name != "__init__.py"]
    return False


@pytest.mark.structure
def test_no_import_inside_a_function_dodges_a_cycle():
    dodging = [f"{MODULES[mod].relative_to(ROOT)}:{line} imports {target} inside a function, and {target} "
               f"imports {mod} back"
               for mod, imports in IMPORTS.items() for target, nested, line in imports
               if nested and target != mod and _reaches(target, mod)]
    assert not dodging, "\n".join(dodging)


@pytest.mark.structure
def test_the_layer_rules_see_the_imports():
    """The checks above read real imports: the compiler imports the schedules and the CPU table."""
    assert any(t.startswith("mobilec.schedules") for t, _, _ in IMPORTS["mobilec.compiler.pipeline"])
    assert any(t == "mobilec.targets" for t, _, _ in IMPORTS["mobilec.schedules.loops"])
    assert ("mobilec.schedules.builder" in MODULES and "mobilec.present" in MODULES)


CPU_NAME = re.compile(r"""["'](cortex-[a-z0-9]+|core-avx2|znver\d|skylake-avx512|cascadelake|avx2-vnni|"""
                      r"""vpmaddwd|vpdpbusd|avx-vnni|sdot|smull)["']""")


@pytest.mark.structure
def test_no_cpu_fact_outside_the_table():
    """A CPU's or an instruction's name as a string literal appears only in the target table; other
    code reads the table's fields (the int8 kernels build an instruction's code by its name, from
    the table's entries: those keys are the one exception)."""
    allowed = {"mobilec.targets": None, "mobilec.schedules.kernels.integer": {"smull"}}
    found = []
    for mod, path in MODULES.items():
        if mod in allowed and allowed[mod] is None:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            for m in CPU_NAME.finditer(code):
                if m.group(1) not in (allowed.get(mod) or set()):
                    found.append(f"{path.relative_to(ROOT)}:{n}: {m.group(1)}")
    assert not found, "\n".join(found)
