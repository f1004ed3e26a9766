"""The house plan as a test: every import in src/ (read from the AST, so lazy imports inside
functions count too) is checked against the table of allowed arrows in docs/architecture.md,
and imports across packages must go through the package's ``__init__``."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "lmforge"
DOC = ROOT / "docs" / "architecture.md"


def allowed_arrows(text: str) -> dict[str, set[str]]:
    """``{package: packages it may import}`` from the table after the ``layers`` marker."""
    table = text.split("<!-- layers:", 1)[1]
    rows = {}
    for line in table.splitlines()[1:]:
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] in ("package", "") or set(cells[0]) <= {"-"}:
            continue
        rows[cells[0]] = {p.strip() for p in cells[1].split(",") if p.strip()}
    return rows


def unit_of(path: Path, src: Path) -> str:
    """The package (or top-level leaf module) a source file belongs to."""
    rel = path.relative_to(src)
    return rel.parts[0].removesuffix(".py") if rel.parts != ("__init__.py",) else "lmforge"


def module_of(path: Path, src: Path) -> list[str]:
    """``lmforge.rag.index`` as parts (a package's ``__init__`` is the package)."""
    parts = ["lmforge", *path.relative_to(src).with_suffix("").parts]
    return parts[:-1] if parts[-1] == "__init__" else parts


def imports(path: Path, src: Path) -> list[tuple[int, str]]:
    """Every module an import names, absolute: ``from lmforge import train`` names
    ``lmforge.train``, and ``from ..rag import x`` is resolved against the file's package."""
    found = []
    package = module_of(path, src)
    if path.name != "__init__.py":
        package = package[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module or "").split(".")]).strip(".")
            names = [f"{module}.{a.name}" if module == "lmforge" else module
                     for a in node.names]
            found += [(node.lineno, name) for name in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] == "lmforge"]


def violations(src: Path, arrows: dict[str, set[str]]) -> list[str]:
    packages = {p.name for p in src.iterdir() if (p / "__init__.py").exists()}
    problems = []
    for path in sorted(src.rglob("*.py")):
        unit = unit_of(path, src)
        for line, name in imports(path, src):
            parts = name.split(".")
            if len(parts) == 1 or parts[1] in (unit, "__version__"):
                continue  # ``from lmforge import __version__``, or the package itself
            target, where = parts[1], f"{path.relative_to(src.parent)}:{line}"
            if unit not in arrows:
                problems.append(f"{where}: {unit} is not in the table")
            elif target not in arrows[unit]:
                problems.append(f"{where}: {unit} -> {target} is not an allowed arrow")
            if target in packages and len(parts) > 2:
                problems.append(f"{where}: {name} reaches past lmforge.{target}'s __init__")
    return problems


def test_every_import_follows_the_table() -> None:
    assert violations(SRC, allowed_arrows(DOC.read_text(encoding="utf-8"))) == []


def test_every_package_and_leaf_module_has_a_row() -> None:
    arrows = allowed_arrows(DOC.read_text(encoding="utf-8"))
    units = {p.name for p in SRC.iterdir() if (p / "__init__.py").exists()}
    units |= {p.stem for p in SRC.glob("*.py") if p.stem != "__init__"}
    assert units == set(arrows)
    assert all(target in arrows for allowed in arrows.values() for target in allowed)


@pytest.mark.parametrize(("source", "problem"), [
    ("from lmforge.serve import create_app\n", "model -> serve is not an allowed arrow"),
    ("from lmforge.config.loader import ConfigError\n", "reaches past lmforge.config"),
    ("def f():\n    import lmforge.train\n", "model -> train is not an allowed arrow"),
    ("from lmforge import train\n", "model -> train is not an allowed arrow"),
    ("from ..rag import Grounding\n", "model -> rag is not an allowed arrow"),
    ("from ..config.loader import ConfigError\n", "reaches past lmforge.config"),
])
def test_the_check_catches_a_bad_import(tmp_path: Path, source: str, problem: str) -> None:
    """A copy of the tree with one bad import added to ``model`` fails the check."""
    src = tmp_path / "lmforge"
    for path in SRC.rglob("*.py"):
        target = src / path.relative_to(SRC)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    (src / "model" / "bad.py").write_text(source, encoding="utf-8")
    found = violations(src, allowed_arrows(DOC.read_text(encoding="utf-8")))
    assert len(found) == 1 and re.search(re.escape(problem), found[0])
