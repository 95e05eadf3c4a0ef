"""The package's layout shows the pipeline (docs/architecture.md): stages import only earlier stages, no module imports
itself back through others (imports inside functions count too), no library function is longer than about a screen,
and the commands users type are entry points into their stage."""

import ast
import runpy
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "revena_lib"
STAGES = ("data", "models", "training", "evaluation", "analysis", "sleep")   # the pipeline, in order
COMMANDS = {"prepare_data": "data.prepare", "train": "training.loop", "evaluate": "evaluation.results",
            "export": "training.export", "sleep_experiment": "sleep.experiment", "pretrain": "evaluation.pretrain"}
MAX_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """revena_lib modules that ``name`` imports anywhere in its file (top level or inside functions), plus the
    packages whose __init__ those imports run (other than its own)."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]   # a symbol, or a submodule
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            parts = target.split(".")
            found |= {".".join(parts[:i]) for i in range(2, len(parts) + 1)} if target.startswith("revena_lib.") else set()
    # a module's own packages are initialised before it, whatever it imports: not an edge (models/__init__ re-exports
    # its families, which import each other through it)
    return {m for m in found if m != name and not name.startswith(m + ".")}


GRAPH = {name: imports_of(name) for name in MODULES}


def stage(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else None


def test_no_module_imports_itself_back_through_others():
    def on_a_cycle(start: str) -> bool:
        seen, todo = set(), list(GRAPH[start])
        while todo:
            name = todo.pop()
            if name == start:
                return True
            if name not in seen:
                seen.add(name)
                todo.extend(GRAPH[name])
        return False

    cycles = sorted(m for m in MODULES if on_a_cycle(m))
    assert not cycles, f"modules on an import cycle: {cycles}"


def test_stages_import_only_earlier_stages():
    backwards = [f"{m} -> {t}" for m, targets in GRAPH.items() for t in targets
                 if stage(m) and stage(t) and STAGES.index(stage(t)) > STAGES.index(stage(m))]
    assert not backwards, f"imports against the pipeline order: {backwards}"
    top = {m for m in MODULES if m.count(".") == 1 and not stage(m)}
    assert top == {"revena_lib.config", "revena_lib.paths", "revena_lib.arms"} | {f"revena_lib.{c}" for c in COMMANDS}
    for name in ("revena_lib.config", "revena_lib.paths", "revena_lib.arms"):   # shared by every stage: import none
        assert not {t for t in GRAPH[name] if stage(t)}, f"{name} imports a stage: {GRAPH[name]}"


def test_no_library_function_is_longer_than_a_screen():
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "split these into named steps: " + "; ".join(long)


@pytest.mark.parametrize("command", COMMANDS)
def test_the_commands_users_type_are_entry_points_into_their_stage(command, monkeypatch, capsys):
    tree = ast.parse(MODULES[f"revena_lib.{command}"].read_text())
    imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert [(n.module, [a.name for a in n.names]) for n in imports] == [(f"revena_lib.{COMMANDS[command]}", ["main"])]
    monkeypatch.setattr(sys, "argv", [command, "--help"])
    with pytest.raises(SystemExit) as done:
        runpy.run_module(f"revena_lib.{command}", run_name="__main__")
    assert done.value.code == 0 and f"python -m revena_lib.{command}" in capsys.readouterr().out
