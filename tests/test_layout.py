"""The layout rules of the code, checked: the library never imports the CLI, one module per outside dependency,
one atomic writer, one parser of llama-server arguments, small files."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "gpcrun"
MAX_LINES = 400


def _modules():
    for p in sorted(PKG.rglob("*.py")):
        yield p, ast.parse(p.read_text(), str(p))


def _imports(tree: ast.AST, path: Path) -> set[str]:
    """Absolute names of every module imported (relative imports resolved against the file's package)."""
    pkg = path.relative_to(PKG.parent).with_suffix("").parts[:-1]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(pkg[:len(pkg) - node.level + 1])
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def test_no_source_file_over_the_limit():
    big = {str(p.relative_to(PKG.parent)): n for p in PKG.rglob("*.py")
           if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, big


def test_library_never_imports_the_cli():
    bad = [str(p) for p, t in _modules() if "cli" not in p.relative_to(PKG).parts and p.name != "__main__.py"
           and any(m == "gpcrun.cli" or m.startswith("gpcrun.cli.") for m in _imports(t, p))]
    assert not bad, bad


def test_one_module_per_outside_dependency():
    owners = {"psutil": {"gpcrun/hardware/host.py"}, "pynvml": {"gpcrun/hardware/nvml.py"},
              "huggingface_hub": {"gpcrun/hub/http.py", "gpcrun/hub/resolve.py"},
              "gguf": {"gpcrun/calibrate/synth.py"},  # the writer only: gpcrun/model is the one GGUF reader
              "click": None}
    for dep, allowed in owners.items():
        users = {str(p.relative_to(PKG.parent)) for p, t in _modules()
                 if any(m == dep or m.startswith(dep + ".") for m in _imports(t, p))}
        if allowed is not None:
            assert users <= allowed, (dep, users)
        elif dep == "click":
            assert all(u.startswith("gpcrun/cli/") for u in users), users


def test_one_atomic_writer():
    users = [str(p.relative_to(PKG.parent)) for p in PKG.rglob("*.py") if "os.replace(" in p.read_text()]
    assert users == ["gpcrun/atomic.py"], users
