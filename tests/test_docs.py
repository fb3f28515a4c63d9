"""The commands the documentation shows run: every ``python <script>`` in
README.md and docs/*.md names a script of this repository and only options
that script's parser defines.

Commands are taken from fenced code blocks (lines ending in ``\\`` joined to
the next; a quoted string may run over several lines) and from inline code in
the prose. ``python -m ...`` and ``python -c ...`` run no script of ours and
are skipped. Options must match an option string of the parser exactly:
argparse would accept a unique prefix (``--input_test`` for
``--input_testset``), a document must not rely on that. Values are not
checked, so placeholders (``...``, ``<ids>``, ``NAME``) are fine.

The parser comes from the script's ``build_parser()`` (every script has one).

The same pages' relative links and images must resolve (file and #heading),
and the README's Quick start must show the demo first and CI's test command
second (.ci/run runs that block).
"""

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PYTHONS = {"python", "python3"}
SEPARATORS = {"&&", "||", ";", "|", "&", ">", ">>", "<", "(", ")"}
NEGATIVE_NUMBER = re.compile(r"-\d+(\.\d*)?([eE][-+]?\d+)?$")
FENCE = re.compile(r"^\s*(```|~~~)")


# --- finding the commands --------------------------------------------------

def _tokens(line):
    """Shell words of one command line (comments dropped, ``&&`` ``;`` ``|``
    as separate words); None while a quoted string is still open."""
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    lex.commenters = "#"
    try:
        return list(lex)
    except ValueError:   # "No closing quotation": the string goes on in the next line
        return None


def _block_lines(lines):
    """(line number, logical line) of a code block's (number, line) pairs:
    continuation lines joined, the lines of an open quoted string joined
    (with their line breaks)."""
    out, pending, start = [], "", None
    for number, raw in lines:
        start = number if start is None else start
        line = raw.rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        if _tokens(pending) is None:
            pending += "\n"
            continue
        out.append((start, pending))
        pending, start = "", None
    if pending.strip():
        out.append((start, pending))
    return out


def command_lines(text):
    """(line number, command line) of every code-block line and inline code
    span of a Markdown text that mentions python."""
    found, block, prose = [], None, []
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            if block is None:
                block = []
            else:
                found += _block_lines(block)
                block = None
            continue
        if block is not None:
            block.append((number, line))
        else:
            prose.append((number, line))
    if block is not None:   # an unclosed fence: still check what it holds
        found += _block_lines(block)
    # Inline code may wrap onto the next line of the paragraph.
    joined = "\n".join(line for _, line in prose)
    numbers = [n for n, _ in prose]
    for match in re.finditer(r"(`+)(.+?)\1", joined, flags=re.S):
        line_index = joined.count("\n", 0, match.start())
        found.append((numbers[line_index] if numbers else 0,
                      match.group(2).replace("\n", " ").strip()))
    return [(n, c) for n, c in found if re.search(r"\bpython3?\b", c)]


def commands(text):
    """(line number, script, [arguments]) of every ``python <script>`` in a text."""
    out = []
    for number, line in command_lines(text):
        words = _tokens(line)
        if words is None:   # unbalanced quotes even at the end: take the plain words
            words = line.split()
        for i, word in enumerate(words):
            if word not in PYTHONS and not word.endswith(("/python", "/python3")):
                continue
            rest = words[i + 1:]
            if not rest or rest[0] in SEPARATORS or rest[0].startswith("-"):
                continue   # python -m / -c / -u ...: not a script of ours
            args = []
            for arg in rest[1:]:
                if arg in SEPARATORS:
                    break
                args.append(arg)
            out.append((number, rest[0], args))
    return out


# --- the scripts' parsers --------------------------------------------------

def _load(path):
    name = "doccheck_" + re.sub(r"\W", "_", str(path.relative_to(ROOT)))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)   # not __main__: no prepare_environment, no run
    return module


_OPTIONS = {}


def script_options(path):
    """The option strings a script's parser accepts, exactly as defined."""
    path = Path(path).resolve()
    if path not in _OPTIONS:
        module = _load(path)
        parser = module.build_parser()
        _OPTIONS[path] = {s for action in parser._actions for s in action.option_strings}
    return _OPTIONS[path]


def check_text(text, where="text"):
    """Problems with the ``python <script>`` commands of a Markdown text: a
    script that is not in the repository, an option its parser does not
    define (a prefix of one counts as undefined). Empty when all is well."""
    problems = []
    for number, script, args in commands(text):
        path = ROOT / script
        if not script.endswith(".py") or not path.is_file():
            problems.append(f"{where}:{number}: python {script}: no such script in the repository")
            continue
        try:
            options = script_options(path)
        except Exception as err:   # the script itself is broken: say so, per command
            problems.append(f"{where}:{number}: python {script}: its parser could not be "
                            f"read ({type(err).__name__}: {err})")
            continue
        for arg in args:
            if not arg.startswith("-") or arg in ("-", "--") or NEGATIVE_NUMBER.match(arg):
                continue
            option = arg.split("=", 1)[0]
            if option not in options:
                problems.append(f"{where}:{number}: python {script}: unknown option {option}")
    return problems


# --- links ----------------------------------------------------------------

def _strip_code(text, inline=True):
    """The text without fenced code blocks (lines kept, emptied) and, unless
    inline is False, without inline code spans."""
    kept, in_block = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            in_block = not in_block
            kept.append("")
            continue
        kept.append("" if in_block else line)
    text = "\n".join(kept)
    return re.sub(r"(`+).+?\1", "", text, flags=re.S) if inline else text


def heading_anchors(text):
    """The anchors GitHub gives the headings of a Markdown text."""
    anchors, seen = set(), {}
    for line in _strip_code(text, inline=False).splitlines():
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def check_links(text, doc_path, where="text"):
    """Problems with the relative links and images of a Markdown text read from
    doc_path: a missing file, or a #anchor that no heading of the target has."""
    problems = []
    original = text
    text = _strip_code(text)
    for match in re.finditer(r"!?\[[^\]]*\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)", text):
        target = match.group(1)
        if re.match(r"[a-z][a-z0-9+.-]*:", target):   # http:, https:, mailto: ...
            continue
        number = text.count("\n", 0, match.start()) + 1
        file_part, _, anchor = target.partition("#")
        path = (doc_path.parent / file_part).resolve() if file_part else doc_path
        if not path.exists():
            problems.append(f"{where}:{number}: link to {target}: no such file")
            continue
        if anchor and path.suffix == ".md":
            target_text = original if path == doc_path else path.read_text(encoding="utf-8")
            if anchor not in heading_anchors(target_text):
                problems.append(f"{where}:{number}: link to {target}: no such heading")
    return problems


# --- the tests -------------------------------------------------------------

def test_docs_exist_and_show_commands():
    assert (ROOT / "docs").is_dir()
    found = {script for doc in DOCS for _, script, _ in commands(doc.read_text(encoding="utf-8"))}
    for script in ("demo.py", "00_data/build_california.py", "01_train/trainer1.py",
                   "02_test/tester1.py", "03_read/reader.py", "04_locate/locator.py"):
        assert script in found, f"no documented command runs {script}"


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_documented_commands_name_real_scripts_and_options(doc):
    assert check_text(doc.read_text(encoding="utf-8"), str(doc.relative_to(ROOT))) == []


def test_quick_start_blocks():
    """The Quick start shows the demo first and the test command CI runs second."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", section, flags=re.S | re.M)
    assert blocks[0].strip() == "pip install -r requirements.txt && python demo.py"
    assert blocks[1].strip() == "python -m pytest -q tests"
    assert blocks[1].strip() in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert 'python -m pytest -q -m "not slow" tests' in section
    assert len(readme.splitlines()) <= 250


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_documented_links_resolve(doc):
    assert check_links(doc.read_text(encoding="utf-8"), doc, str(doc.relative_to(ROOT))) == []


def test_link_checker_names_bad_links(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text("# A page\n\n## The `--x` option (b)\n", encoding="utf-8")
    doc = tmp_path / "README.md"
    doc.write_text("""# Top
[ok](docs/page.md) [ok](docs/page.md#the---x-option-b) [ok](#top) [web](https://example.org/x)
![missing](docs/figures/none.png) [bad](docs/page.md#nothing) [gone](docs/gone.md)
`[not a link](nowhere.md)`
""", encoding="utf-8")
    assert check_links(doc.read_text(encoding="utf-8"), doc, "README.md") == [
        "README.md:3: link to docs/figures/none.png: no such file",
        "README.md:3: link to docs/page.md#nothing: no such heading",
        "README.md:3: link to docs/gone.md: no such file",
    ]


def test_checker_names_bad_scripts_and_options(tmp_path):
    bad = tmp_path / "README.md"
    bad.write_text((ROOT / "README.md").read_text(encoding="utf-8") + """
```bash
python 01_train/trainer2.py --input_hdf5 x.hdf5
python 02_test/tester1.py --input_hdf5 x.hdf5 \\
    --input_test test_Events.npy --no_such_option 3 --output_name=t
KERAS_BACKEND=jax python bench/throughput.py --precision bfloat16 --turbo
python -m pytest -q --definitely-not-checked tests
python -c "print('--not an option either')"
python 00_data/build_from_seisbench.py --dataset_dir d --seed -3 --no_progress
```

Inline: `python 03_read/reader.py --input x --figures` and `python demo.py --epoch 3`,
and `python nowhere.py`.
""", encoding="utf-8")
    problems = check_text(bad.read_text(encoding="utf-8"), "README.md")
    text = "\n".join(problems)
    assert len(problems) == 7, text
    assert "python 01_train/trainer2.py: no such script" in text
    assert "python 02_test/tester1.py: unknown option --input_test\n" in text + "\n"   # a prefix
    assert "python 02_test/tester1.py: unknown option --no_such_option" in text
    assert "python bench/throughput.py: unknown option --turbo" in text
    assert "python 03_read/reader.py: unknown option --figures" in text
    assert "python demo.py: unknown option --epoch\n" in text + "\n"   # prefix of --epochs
    assert "python nowhere.py: no such script" in text
    assert "--output_name" not in text and "pytest" not in text and "seisbench" not in text
    # The line numbers point into the copy.
    first = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert all(int(p.split(":")[1]) > first for p in problems), text


def test_command_extraction():
    text = """Prose `python demo.py --seed
1` wraps.

    ```bash
    python 02_test/tester1.py ... --estimate_uncertainty \\
        --calibration c.json   # --not_this
    python -c "
    import sys
    print(sys.argv)" --ignored
    pip install -r requirements.txt && python demo.py --workdir w; echo done
    ```
"""
    assert [(s, a) for _, s, a in commands(text)] == [
        ("02_test/tester1.py", ["...", "--estimate_uncertainty", "--calibration", "c.json"]),
        ("demo.py", ["--workdir", "w"]),
        ("demo.py", ["--seed", "1"]),
    ]
