"""The package's shape, checked on its source: no import cycles, and imports made inside
functions only where there is a reason.

``lint-imports`` (run by ``.ci/run``) checks the layer order; it sees only module-level
imports. This test reads every import, including those inside functions, so a cycle cannot
hide behind a "local" import.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "fastalign"

# Optional or heavy dependencies that may be imported where they are used, each with a reason
# in a comment on the import line or the line above it.
OPTIONAL = {"matplotlib", "h5py", "PIL", "timm", "open_clip", "triton", "nvtx", "scipy", "sklearn", "faiss",
            "torch.distributed", "torch.utils.tensorboard", "torch.utils.checkpoint", "torch.utils.data",
            "torch._dynamo", "torch.testing", "nvidia", "fastalign._cpu", "fastalign._cuda",
            # Backends whose import needs an optional package or a compiled extension.
            "fastalign.kernels.cpu", "fastalign.kernels.triton", "fastalign.kernels.cuda"}


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield ".".join(parts), path


MODULES = dict(_modules())


def _targets(module: str, path: Path, node: ast.AST):
    """Fully qualified names an import statement reaches."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    if node.level:
        parts = base.split(".")
        base = ".".join(parts[: len(parts) - (node.level - 1)])
        target = base + ("." + node.module if node.module else "")
    else:
        target = node.module or ""
    return [f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target for a in node.names]


def _imports():
    """(module, target, lineno, inside_function) for every import in the package."""
    out = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        local = {id(sub) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for sub in ast.walk(fn) if isinstance(sub, (ast.Import, ast.ImportFrom))}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _targets(module, path, node):
                    out.append((module, target, node.lineno, id(node) in local))
    return out


def _internal(target: str):
    """The package module an import reaches, or None for an external one."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def test_no_module_cycles_including_function_imports():
    graph = {m: set() for m in MODULES}
    for module, target, _, _ in _imports():
        dst = _internal(target) if target.startswith("fastalign") else None
        # A package's __init__ re-exporting its own modules is not a dependency of those modules.
        if dst and dst != module and not module.startswith(dst + "."):
            graph[module].add(dst)
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert len(graph) > 50 and sum(map(len, graph.values())) > 100, "the import graph looks empty"
    assert not cycles, f"import cycles: {cycles}"


def test_function_level_imports_have_a_reason():
    lines = {m: p.read_text(encoding="utf-8").splitlines() for m, p in MODULES.items()}
    bad = []
    seen = 0
    for module, target, lineno, inside in _imports():
        if not inside:
            continue
        seen += 1
        if not any(target == o or target.startswith(o + ".") for o in OPTIONAL):
            bad.append(f"{module}:{lineno} imports {target} inside a function (not an optional dependency)")
            continue
        here, above = lines[module][lineno - 1], lines[module][lineno - 2] if lineno > 1 else ""
        if "#" not in here and "#" not in above:
            bad.append(f"{module}:{lineno} imports {target} inside a function without a one-line reason")
    assert seen > 0, "no function-level import found at all: the scan is broken"
    assert not bad, "\n".join(bad)
