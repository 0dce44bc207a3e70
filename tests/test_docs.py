"""The documentation stays true to the code: every relative link and anchor resolves, every command in a shell
block parses with the command line's own parser and checks, and every ``dcsim ...`` in inline code names a
command and flags that exist. (The changelog is history: it may name flags that were renamed since.)"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from dcsim.cli.checks import check_args
from dcsim.cli.parser import build_parser

ROOT = Path(__file__).resolve().parent.parent
PAGES = [
    ROOT / "README.md",
    ROOT / "ARCHITECTURE.md",
    *sorted((ROOT / "docs").rglob("*.md")),
    *sorted((ROOT / "zoo").rglob("README.md")),
]
FENCE = re.compile(r"```.*?```", re.S)


def _ids(pages: list[Path]) -> list[str]:
    return [str(p.relative_to(ROOT)) for p in pages]


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors of a page: lower case, punctuation dropped, spaces as hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", markdown).splitlines():
        heading = re.match(r"#{1,6}\s+(.*)", line)
        if heading is None:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
        out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return out


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_anchors_follow_github():
    page = "# A: b (c)\n```\n# not a heading\n```\n## A: b (c)\n### 1.5 x, y\n"
    assert anchors(page) == {"a-b-c", "a-b-c-1", "15-x-y"}


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_links_resolve(page):
    text = FENCE.sub("", page.read_text())
    broken = []
    for link in re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r'src="([^"]+)"', text):
        if re.match(r"[a-z]+:", link):  # https:, mailto:
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target.read_text()):
            broken.append(f"{link}: no such heading in {target.name}")
    assert not broken, broken


def _shell_commands(text: str) -> list[str]:
    """The ``dcsim`` commands of a page's bash/sh blocks: continuation lines joined, the block's own shell
    variables (``D="--dataset cifar10"``) expanded."""
    commands = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, re.S):
        variables: dict[str, str] = {}
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            for part in re.split(r"\s*(?:&&|;|\|)\s*", line.strip()):
                assignment = re.fullmatch(r"([A-Za-z_]\w*)=(.*)", part)
                if assignment:
                    variables[assignment[1]] = " ".join(shlex.split(assignment[2]))
                elif part.startswith(("dcsim ", "python -m dcsim ")):
                    commands.append(re.sub(r"\$\{?(\w+)\}?", lambda m, known=variables: known.get(m[1], m[0]), part))
    return commands


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_shell_commands_parse(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the commands' outputs are checked for being writable here
    for command in _shell_commands(page.read_text()):
        argv = shlex.split(command, comments=True)
        argv = argv[3:] if argv[0] == "python" else argv[1:]
        try:
            check_args(build_parser().parse_args(argv))
        except SystemExit as err:  # argparse's own refusal (exit 2), its message on stderr
            raise AssertionError(f"{page.name}: does not parse: {command}") from err


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_inline_commands_name_real_flags(page):
    commands = _subcommands(build_parser())
    text = re.sub(r"\s+", " ", FENCE.sub("", page.read_text()))
    wrong = []
    for span in re.findall(r"`(dcsim [^`]+)`", text):
        words = span.split()
        if not re.match(r"[a-z]", words[1]):  # "dcsim ...", "dcsim --help", "dcsim CMD --help"
            continue
        if words[1] not in commands:
            wrong.append(f"{span}: no command {words[1]!r}")
            continue
        parser = commands[words[1]]
        nested = _subcommands(parser)
        if len(words) > 2 and words[2] in nested:
            parser = nested[words[2]]
        wrong += [
            f"{span}: dcsim {words[1]} has no {flag}"
            for flag in (w.split("=")[0].rstrip(",.;:)") for w in words if w.startswith("--"))
            if flag not in parser._option_string_actions
        ]
    assert not wrong, wrong


def test_the_checks_see_commands():  # the extraction finds the README's commands, so the tests above can fail
    readme = (ROOT / "README.md").read_text()
    assert any(c.startswith("dcsim reproduce ") for c in _shell_commands(readme))
    assert "dcsim-nonesuch" not in anchors(readme)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["reproduce", "--no-such-flag"])


def test_every_result_is_indexed():
    index = (ROOT / "docs" / "README.md").read_text()
    results = sorted((ROOT / "docs" / "results").glob("*.md"))
    assert results and not [p.name for p in results if f"](results/{p.name})" not in index]
