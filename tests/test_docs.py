"""Docs that cannot rot: README.md and docs/ are checked against the repository they describe.

Every relative link resolves (file, and #anchor by GitHub's heading slugs); every config value named
in code (`experiment=cpu_recipe`, `+augment/copy_paste=rare`, `model=a,b`) is a YAML in configs/; every
`python -m trashseg....` module exists and its --help exits 0; every benchmark script named exists;
every test the fault table names is defined in its file. The code cites only the repository's own
docs (no DESIGN notes from outside it), and every `docs/page.md, Section` it cites is a heading there.
The README's Performance table is headlines: each row one short figure with its date, the command of
its run and a link to its results page. Each checker returns the problems it finds, and the negative
cases below feed it a broken copy to show it does find them.
"""

from __future__ import annotations

import contextlib
import io
import re
import runpy
import sys
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
FAULT_TABLE = REPO / "docs" / "faults.md"
FAULT_TESTS_DIR = REPO / "tests" / "faults"  # the table's bare file names live here

# Config groups whose values the docs name as `group=value`; a nested group is `augment/copy_paste`.
GROUPS = ("experiment", "model", "augment", "loss", "data", "optimizer", "scheduler", "trainer",
          "averaging", "distill", "logger", "hparams_search")
# Values that stand for "your own": `experiment=X`, `model=<name>`.
PLACEHOLDERS = {"X", "Y", "NAME", "..."}

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
INLINE = re.compile(r"`([^`\n]+)`")
CONFIG_VALUE = re.compile(r"(?<![\w.+/-])\+{0,2}(" + "|".join(GROUPS) + r")((?:/\w+)*)=([^\s'\"`\]\[)(]+)")
MODULE = re.compile(r"python -m (trashseg(?:\.\w+)*)")
BENCHMARK = re.compile(r"\bbenchmarks/(\w+\.py)\b")
TEST_REF = re.compile(r"`((?:tests/[\w/]+/)?[\w/]*?test_\w+\.py)?::(test_\w+)(?:\[[^\]]*\])?`")
# Code that may cite the manual: a citation is `docs/<page>.md, Section` or `docs/<page>.md (Section`.
CODE_FILES = sorted([*(REPO / "src").rglob("*.py"), *(REPO / "tests").rglob("*.py"), *(REPO / "benchmarks").glob("*.py"),
                     *CONFIGS.rglob("*.yaml"), REPO / "train.py", REPO / "inference.py"])
CODE_FILES.remove(Path(__file__).resolve())  # this file's negative cases cite pages that do not exist on purpose
SECTION_CITATION = re.compile(r"docs/([\w/]+\.md)(?:,| \()\s*([A-Z][\w ]*\w)")
OUTSIDE_NOTES = re.compile(r"DESIGN\.md")  # the design notes beside the repository, not in it
DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b")
HEADLINE_CHARS = 90  # the figure cell of a Performance row: a headline, the detail stays on its results page


def code_spans(text: str) -> list[str]:
    """The text of fenced code blocks and inline code: where commands and config values are written."""
    blocks = FENCE.findall(text)
    rest = FENCE.sub("", text)
    return blocks + INLINE.findall(rest)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces -> hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        if not re.match(r"#{1,6} ", line):
            continue
        base = slug(line.lstrip("#"))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def broken_links(doc: Path) -> list[str]:
    problems = []
    for target in LINK.findall(FENCE.sub("", doc.read_text())):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        path = (doc.parent / file_part).resolve() if file_part else doc
        if not path.exists():
            problems.append(f"{doc.name}: link to {target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            problems.append(f"{doc.name}: link to {target}: no heading with that anchor in {path.name}")
    return problems


def config_values(text: str) -> set[tuple[str, str]]:
    """(group path, value) pairs named in code; Hydra's comma lists give one pair per value."""
    found = set()
    for span in code_spans(text):
        for group, sub, values in CONFIG_VALUE.findall(span):
            values = values.rstrip(".,;:")
            if "." in values:  # a Python keyword argument (`augment=cfg.augment`), not a config name
                continue
            for value in re.split(r"[,|]", values):
                if value and value not in PLACEHOLDERS and not value.startswith(("<", "$")):
                    found.add((group + sub, value))
    return found


def unknown_configs(text: str, configs: Path = CONFIGS) -> list[str]:
    return sorted(f"{group}={value}" for group, value in config_values(text)
                  if value != "null" and not (configs / group / f"{value}.yaml").is_file())


def modules(text: str) -> set[str]:
    return {name for span in code_spans(text) for name in MODULE.findall(span)}


def missing_benchmarks(text: str) -> list[str]:
    return sorted(name for name in set(BENCHMARK.findall(text)) if not (REPO / "benchmarks" / name).is_file())


def defined_tests(path: Path) -> set[str]:
    return set(re.findall(r"^\s*(?:async\s+)?def (test_\w+)", path.read_text(), re.M))


def missing_fault_tests(table: str, repo: Path = REPO, bare_dir: Path = FAULT_TESTS_DIR) -> list[str]:
    """Tests the fault table names that are not defined. `file.py::name` names a file in tests/faults/
    unless it is a tests/ path; `::name` alone continues the cell's previous file."""
    problems = []
    rows = [line for line in table.splitlines() if line.startswith("|") and "::" in line]
    for row in rows:
        current = None
        for file_name, name in TEST_REF.findall(row.rsplit("|", 2)[-2]):
            if file_name:
                current = repo / file_name if file_name.startswith("tests/") else bare_dir / file_name
            if current is None:
                problems.append(f"::{name} names no file")
            elif not current.is_file():
                problems.append(f"{file_name}::{name}: no such file")
            elif name not in defined_tests(current):
                problems.append(f"{current.relative_to(repo)}::{name}: no such test")
    return problems


def help_exit_code(module: str) -> int | str:
    """`python -m module --help`, run in this process: its SystemExit code, or the error it raised."""
    argv = sys.argv
    sys.argv = [module, "--help"]
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")  # runpy's "found in sys.modules" for an imported module
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        return stop.code or 0
    except Exception as err:  # noqa: BLE001: reported as the test's failure message
        return f"{type(err).__name__}: {err}"
    finally:
        sys.argv = argv
    return 0


def uncited_sections(text: str, docs: Path = REPO / "docs") -> list[str]:
    """The `docs/page.md, Section` citations in `text` whose page or heading does not exist."""
    problems = []
    for page, section in SECTION_CITATION.findall(text):
        path = docs / page
        if not path.is_file():
            problems.append(f"docs/{page}: no such page")
        elif slug(section) not in anchors(path):
            problems.append(f"docs/{page}, {section}: no such heading")
    return problems


def performance_rows(readme: str) -> list[list[str]]:
    """The cells of each body row of the README's Performance table."""
    section = readme.split("## Performance", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")][2:]  # past the header and its rule
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def unheadlined_rows(readme: str) -> list[str]:
    """Performance rows that are not a headline: what | figure | date + command | results link."""
    problems = []
    for what, figure, run, detail in (row + [""] * (4 - len(row)) for row in performance_rows(readme)):
        if len(figure) > HEADLINE_CHARS:
            problems.append(f"{what}: the figure runs to {len(figure)} characters (a headline: {HEADLINE_CHARS})")
        if not DATE.search(run) or run.count("`python ") != 1:
            problems.append(f"{what}: the run needs its date and one command")
        if "(docs/results/" not in detail:
            problems.append(f"{what}: no link to its results page")
    return problems


ALL_TEXT = {doc.relative_to(REPO).as_posix(): doc.read_text() for doc in DOC_FILES}


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda d: d.relative_to(REPO).as_posix())
def test_every_relative_link_resolves(doc):
    assert broken_links(doc) == []


@pytest.mark.parametrize("name", sorted(ALL_TEXT))
def test_every_config_value_named_is_a_config_file(name):
    assert unknown_configs(ALL_TEXT[name]) == []


@pytest.mark.parametrize("name", sorted(ALL_TEXT))
def test_every_benchmark_named_exists(name):
    assert missing_benchmarks(ALL_TEXT[name]) == []


def test_the_scans_find_what_the_docs_name():
    named = set().union(*(config_values(text) for text in ALL_TEXT.values()))
    assert {("experiment", "quickstart"), ("augment/copy_paste", "rare"), ("model", "unet_lite0")} <= named
    assert {"trashseg.submission", "trashseg.inference.oof"} <= set().union(*map(modules, ALL_TEXT.values()))
    assert len(re.findall(r"::test_", FAULT_TABLE.read_text())) >= 30


@pytest.mark.parametrize("module", sorted(set().union(*map(modules, ALL_TEXT.values()))))
def test_every_module_named_has_a_help_that_exits_0(module):
    assert help_exit_code(module) == 0


def test_every_test_the_fault_table_names_exists():
    assert missing_fault_tests(FAULT_TABLE.read_text()) == []


@pytest.mark.parametrize("path", CODE_FILES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_code_cites_the_repositorys_own_docs(path):
    text = path.read_text()
    assert not OUTSIDE_NOTES.search(text), "cite docs/competition.md (or another page of docs/), not the design notes"
    assert uncited_sections(text) == []


def test_the_performance_table_is_headlines():
    assert len(performance_rows(ALL_TEXT["README.md"])) >= 10
    assert unheadlined_rows(ALL_TEXT["README.md"]) == []


# The checkers find what is broken: a copy of a doc with one fault each.

def test_a_broken_link_or_anchor_is_found(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## A section (with `code`)\n")
    doc = tmp_path / "doc.md"
    doc.write_text("[ok](other.md#a-section-with-code) [gone](missing.md) [bad anchor](other.md#nowhere)\n"
                   "[here](#title) [web](https://example.com/x.md)\n\n# Title\n")
    problems = broken_links(doc)
    assert len(problems) == 2
    assert "missing.md" in problems[0] and "#nowhere" in problems[1]


def test_a_github_slug_is_the_headings_anchor():
    assert slug(" Batches (trashseg.data -> training, inference)") == "batches-trashsegdata---training-inference"
    assert slug(" Weight averaging (EMA, SWA)") == "weight-averaging-ema-swa"


@pytest.mark.parametrize("text, expected", [
    ("`python train.py experiment=no_such_recipe`", ["experiment=no_such_recipe"]),
    ("```bash\npython train.py experiment=quickstart +augment/copy_paste=nothing\n```", ["augment/copy_paste=nothing"]),
    ("`python train.py -m model=unet_tiny,no_such_model`", ["model=no_such_model"]),
    ("`loss=ce_dice` and `experiment=X` and `model=<name>` and `model.pretrained=null`", []),
    ("experiment=no_such_recipe outside code is prose", []),
    ("`averaging=ema|none_such` and `TrashDataModule(**cfg.data, augment=cfg.augment)`", ["averaging=none_such"]),
])
def test_an_unknown_config_value_is_found(text, expected):
    assert unknown_configs(text) == expected


def test_a_missing_fault_test_is_found():
    table = ("| a | b | `test_kills.py::test_six_faults_in_a_row_end_as_one_uninterrupted_run` |\n"
             "| c | d | `test_kills.py::test_no_such_thing`, `::test_also_missing[id]` |\n"
             "| e | f | `tests/test_train.py::test_nan_loss_stops_and_keeps_last_good_checkpoint` |\n"
             "| g | h | `tests/test_nothing.py::test_x` |\n")
    assert missing_fault_tests(table) == [
        "tests/faults/test_kills.py::test_no_such_thing: no such test",
        "tests/faults/test_kills.py::test_also_missing: no such test",
        "tests/test_nothing.py::test_x: no such file",
    ]


def test_a_module_without_a_working_help_is_found():
    assert help_exit_code("trashseg.no_such_module") != 0
    assert help_exit_code("trashseg.submission") == 0


def test_a_citation_of_a_missing_page_or_heading_is_found(tmp_path):
    (tmp_path / "page.md").write_text("# Page\n\n## The metric\n")
    text = ('"""(docs/page.md, The metric) (docs/page.md, No such part) docs/gone.md, Anything\n'
            'docs/page.md, mistake 9 (a numbered item, not a heading)"""')
    assert uncited_sections(text, tmp_path) == ["docs/page.md, No such part: no such heading", "docs/gone.md: no such page"]
    assert OUTSIDE_NOTES.search("# (DESIGN" + ".md section 1)")


def test_a_performance_row_that_is_not_a_headline_is_found():
    readme = ("## Performance\n\n| what | headline | run | detail |\n|---|---|---|---|\n"
              "| ok | **2x** the baseline | 2026-12-04, `python benchmarks/b.py` | [b](docs/results/b.md) |\n"
              f"| long | {'x' * (HEADLINE_CHARS + 1)} | 2026-12-04, `python benchmarks/b.py` | [b](docs/results/b.md) |\n"
              "| undated | 2x | `python benchmarks/b.py`; `python benchmarks/c.py` | [b](docs/results/b.md) |\n"
              "| unlinked | 2x | 2026-12-04, `python benchmarks/b.py` | see below |\n\n## Next\n| not | a | row | here |\n")
    assert unheadlined_rows(readme) == [
        f"long: the figure runs to {HEADLINE_CHARS + 1} characters (a headline: {HEADLINE_CHARS})",
        "undated: the run needs its date and one command",
        "unlinked: no link to its results page",
    ]
