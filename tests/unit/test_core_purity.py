"""recsys_core stays pure: no driver or IO module is imported anywhere in it."""

import ast
from pathlib import Path

import worker.recsys_core

FORBIDDEN = {
    "redis", "qdrant_client", "qdrant_edge", "faust", "aiokafka", "fastembed",
    "onnxruntime", "orjson", "socket", "asyncio", "os", "subprocess", "requests", "httpx",
    "worker.adapters", "worker.agents",
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_recsys_core_imports_no_driver() -> None:
    """Every module of recsys_core imports only the standard library and itself."""
    root = Path(worker.recsys_core.__file__).parent
    modules = sorted(root.rglob("*.py"))
    assert len(modules) >= 6
    offenders = {
        str(p.relative_to(root)): sorted(
            n for n in _imports(p)
            if any(n == f or n.startswith(f + ".") for f in FORBIDDEN)
        )
        for p in modules
    }
    assert {k: v for k, v in offenders.items() if v} == {}
