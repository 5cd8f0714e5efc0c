"""docs/architecture.md stays true: its module table lists every module under socksauth/ (and
no module that is gone), the files and names it points at exist, the README links it and the
sdist carries it."""

from __future__ import annotations

import re
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
PACKAGE = REPOSITORY / "socksauth"
ARCHITECTURE = REPOSITORY / "docs" / "architecture.md"
README = REPOSITORY / "README.md"
MODULE_TABLE_HEADING = "## Where each concept lives"

# A row of the module table: | `socksauth/…/name.py` | the concept |
_TABLE_ROW = re.compile(r"^\|\s*`(socksauth/[^`]+\.py)`\s*\|", re.MULTILINE)
# A file named in backticks, optionally with a name in it: `server/relay.py:Relay.close`
_FILE_REFERENCE = re.compile(r"`([\w./-]+\.(?:py|md|toml|ini|cfg))(?::([\w.]+))?`")
# Where a relative path in the prose may start: the repository, or the package.
_ROOTS = (REPOSITORY, PACKAGE)


def package_modules() -> set[str]:
    """Every module of the package, as a path from the repository root."""
    return {
        path.relative_to(REPOSITORY).as_posix()
        for path in PACKAGE.rglob("*.py")
        if "__pycache__" not in path.parts and "_migrations" not in path.parts
    }


def table_modules(document: str) -> list[str]:
    """The modules in the rows of the table under MODULE_TABLE_HEADING (other tables of the
    document name modules too)."""
    start = document.find(MODULE_TABLE_HEADING)
    assert start >= 0, f"docs/architecture.md has no {MODULE_TABLE_HEADING!r} section"
    end = document.find("\n## ", start + len(MODULE_TABLE_HEADING))
    return _TABLE_ROW.findall(document[start : end if end >= 0 else len(document)])


def test_every_module_is_in_the_architecture_table() -> None:
    listed = set(table_modules(ARCHITECTURE.read_text(encoding="utf-8")))
    missing = sorted(package_modules() - listed)
    assert not missing, (
        f"docs/architecture.md's module table lacks {missing}: add a row saying the one "
        "concept each holds"
    )


def test_the_architecture_table_lists_only_modules_that_exist() -> None:
    rows = table_modules(ARCHITECTURE.read_text(encoding="utf-8"))
    stale = sorted(set(rows) - package_modules())
    assert not stale, f"docs/architecture.md's module table lists {stale}, which do not exist"
    repeated = sorted({row for row in rows if rows.count(row) > 1})
    assert not repeated, f"docs/architecture.md's module table lists {repeated} twice"


def _resolve(reference: str) -> Path | None:
    """The file a reference names: from the repository root, else from the package; a bare
    file name (`udp.py`, `run.py`) may also be any file of that name in the project."""
    for root in _ROOTS:
        if (root / reference).is_file():
            return root / reference
    if "/" in reference:
        return None
    for top in ("socksauth", "bench", "tests", "migrations", "deploy"):
        for path in sorted((REPOSITORY / top).rglob(reference)):
            if "__pycache__" not in path.parts:
                return path
    return None


def _defines(source: str, name: str) -> bool:
    """Whether ``source`` defines ``name`` (a function, class or module-level name) or, for
    ``Class.attribute``, has the class and a method or attribute of that name."""
    first, _, rest = name.partition(".")
    top = re.compile(
        rf"^(?:async def|def|class)\s+{re.escape(first)}\b|^{re.escape(first)}\s*[:=]", re.M
    )
    if not top.search(source):
        return False
    if not rest:
        return True
    member = rest.partition(".")[0]
    inner = re.compile(
        rf"^\s+(?:async def|def)\s+{re.escape(member)}\b|^\s+(?:self\.)?{re.escape(member)}\s*[:=]",
        re.M,
    )
    return bool(inner.search(source))


def test_files_and_names_the_architecture_document_points_at_exist() -> None:
    document = ARCHITECTURE.read_text(encoding="utf-8")
    references = _FILE_REFERENCE.findall(document)
    assert len(references) > len(package_modules()), "the reference pattern finds too little"
    wrong = []
    for reference, name in references:
        path = _resolve(reference)
        if path is None:
            wrong.append(f"{reference}: no such file")
        elif name and not _defines(path.read_text(encoding="utf-8"), name):
            wrong.append(f"{reference}:{name}: {path.name} does not define {name}")
    assert not wrong, "docs/architecture.md points at what is not there:\n" + "\n".join(
        sorted(set(wrong))
    )


def test_readme_links_the_architecture_document_not_a_file_outside_the_repository() -> None:
    readme = README.read_text(encoding="utf-8")
    assert "(docs/architecture.md)" in readme
    assert "../" not in readme, "README.md points outside the repository"


def test_the_sdist_carries_the_document_these_tests_read() -> None:
    pyproject = (REPOSITORY / "pyproject.toml").read_text(encoding="utf-8")
    sdist = re.search(r"\[tool\.hatch\.build\.targets\.sdist\]\ninclude = \[([^\]]*)\]", pyproject)
    assert sdist is not None
    assert '"docs"' in sdist.group(1), "tests/ is in the sdist, so docs/ must be too"
