"""The durable-write module (``scireid.durable``) and the rule that every writer goes through it."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import scireid
from scireid import durable

# file-system calls that make or remove an output, allowed only inside durable.py
PRIMITIVES = {"replace": "os", "rename": None, "renames": "os", "rmtree": "shutil", "move": "shutil", "copytree": "shutil",
              "mkstemp": "tempfile", "mkdtemp": "tempfile", "mktemp": "tempfile", "TemporaryDirectory": "tempfile",
              "NamedTemporaryFile": "tempfile", "write_text": None, "write_bytes": None, "touch": None, "unlink": None,
              "rmdir": None, "savefig": None}
# writer callbacks of atomic_write get the temporary path as ``t`` or ``tmp``: writing there is the discipline
TEMP_ARGS = {"t", "tmp"}
# the remaining direct calls, each with the reason it is safe
ALLOWED = {
    ("data/synthetic.py", "(out / 'synthetic.json').write_text"): "generate() writes into generate_complete's staging folder",
    ("data/synthetic.py", "(tmp / INCOMPLETE).write_text"): "the marker inside the staging folder",
    ("data/synthetic.py", "(tmp / INCOMPLETE).unlink"): "the marker inside the staging folder, before its switch",
    ("data/synthetic.py", "out.rmdir"): "an empty target folder given by the user, replaced by the switch",
    ("deploy/calibration.py", "open(path, 'wb')"): "Index.save calls it inside its staged version folder",
    ("deploy/embed.py", "p.unlink"): "chunk files of a job whose record is gone, inside the job's own parts folder",
    ("deploy/index.py", "p.unlink"): "files of the pre-version index layout, after the switch to a version",
    ("engine/rundir.py", "p.unlink"): "dead writers' temporary files, under the run's lock",
    ("engine/rundir.py", "self.path.unlink"): "the run lock of a command refused before writing anything",
    ("engine/rundir.py", "folder.rmdir"): "the folder that a refused command created and left empty",
}


def direct_writes() -> list[tuple[str, int, str]]:
    root = Path(scireid.__file__).parent
    found = []
    for f in sorted(root.rglob("*.py")):
        if f.name == "durable.py":
            continue
        rel = f.relative_to(root).as_posix()
        for node in ast.walk(ast.parse(f.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            first = node.args[0] if node.args else None
            if isinstance(first, ast.Name) and first.id in TEMP_ARGS:
                continue
            if isinstance(func, ast.Attribute) and func.attr in PRIMITIVES:
                mod = PRIMITIVES[func.attr]
                if mod and not (isinstance(func.value, ast.Name) and func.value.id == mod):
                    continue
                if func.attr == "replace" and not node.args:
                    continue
                found.append((rel, node.lineno, ast.unparse(func)))
            elif isinstance(func, ast.Name) and func.id == "open" and len(node.args) > 1 and \
                    isinstance(node.args[1], ast.Constant) and any(c in str(node.args[1].value) for c in "wax+"):
                found.append((rel, node.lineno, ast.unparse(node)))
    return found


def test_every_writer_goes_through_durable():
    """Renames, removals, temporary names and plain writes happen in durable.py, in an atomic_write callback, or
    at one of the places listed with its reason: a new writer that bypasses the discipline fails here."""
    stray = [f"{rel}:{line}: {code}" for rel, line, code in direct_writes() if (rel, code) not in ALLOWED]
    assert not stray, "write through scireid.durable instead:\n" + "\n".join(stray)
    used = {(rel, code) for rel, _, code in direct_writes()}
    assert not set(ALLOWED) - used, f"allowed but no longer used: {set(ALLOWED) - used}"


def test_the_scan_finds_a_direct_write(tmp_path, monkeypatch):
    """The rule's scanner is not blind: a module that renames by hand is found."""
    pkg = tmp_path / "scireid"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "bad.py").write_text("import os\nimport shutil\n\ndef f(a, b):\n    os.replace(a, b)\n    shutil.rmtree(a)\n"
                                "    open(b, 'w')\n    open(t, 'w')\n")
    monkeypatch.setattr(scireid, "__file__", str(pkg / "__init__.py"))
    assert [(rel, code) for rel, _, code in direct_writes()] == [
        ("bad.py", "os.replace"), ("bad.py", "shutil.rmtree"), ("bad.py", "open(b, 'w')")]


def _dead_pid() -> int:
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(p.stdout)


def test_atomic_write_leaves_the_old_file_when_the_writer_fails(tmp_path):
    f = tmp_path / "a.json"
    durable.atomic_write_json(f, {"x": 1})

    def broken(t):
        Path(t).write_text('{"x": 2, "half')
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        durable.atomic_write(f, broken)
    assert f.read_text() == '{\n  "x": 1\n}\n' and sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_dead_writers_temporaries_go_and_live_ones_stay(tmp_path):
    target = tmp_path / "feats.npy"
    dead = tmp_path / f".feats.npy.{_dead_pid()}-abcd.tmp"
    live = tmp_path / f".feats.npy.{os.getpid()}-abcd.tmp"
    staged = tmp_path / f".feats.npy.{_dead_pid()}-efgh.tmp"
    dead.write_bytes(b"x")
    live.write_bytes(b"x")
    staged.mkdir()
    (staged / "inner").write_bytes(b"x")
    removed = durable.clean_dead_temps(target)
    assert sorted(removed) == sorted([dead, staged]) and live.exists()


@pytest.mark.parametrize("kill_after", [0, 1, 2])
def test_publish_dir_is_one_switch_and_recovers_after_a_kill_between_its_renames(tmp_path, monkeypatch, kill_after):
    """Killed after 0, 1 or 2 of publish_dir's renames: recover_dir leaves exactly the old or the new folder."""
    target = tmp_path / "last"
    target.mkdir()
    (target / "v").write_text("old")
    staged = durable.stage_dir(target)
    (staged / "v").write_text("new")
    real = os.replace
    n = {"k": 0}

    def replace(a, b):
        if n["k"] == kill_after:
            raise KeyboardInterrupt
        n["k"] += 1
        return real(a, b)
    monkeypatch.setattr(durable.os, "replace", replace)
    if kill_after < 2:
        with pytest.raises(KeyboardInterrupt):
            durable.publish_dir(staged, target)
    else:
        durable.publish_dir(staged, target)
    monkeypatch.undo()
    assert durable.recover_dir(target, lambda d: (d / "v").is_file())
    durable.clean_spares(target)
    assert (target / "v").read_text() == ("old" if kill_after == 0 else "new")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["last"] or (kill_after == 0 and left == sorted(["last", staged.name]))  # a live writer's staging stays


def test_discard_is_one_rename_then_removal(tmp_path, monkeypatch):
    folder = tmp_path / "feats.npy.parts"
    folder.mkdir()
    (folder / "part_000000.npy").write_bytes(b"x" * 10)
    import shutil

    def killed(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        durable.discard(folder)
    monkeypatch.undo()
    (gone,) = tmp_path.iterdir()  # only a hidden temporary name is left, never a half-removed parts folder
    assert gone.name.startswith(".feats.npy.parts.") and gone.name.endswith(".tmp")
    durable.discard(gone)
    assert not list(tmp_path.iterdir())


def test_scratch_dir_is_removed_on_exit(tmp_path):
    with durable.scratch_dir(tmp_path / "embed") as d:
        (d / "feats.npy").write_bytes(b"x")
        assert d.parent == tmp_path and d.name.startswith(".embed.")
    assert not list(tmp_path.iterdir())


def test_disk_full_is_recognised_in_each_library_s_words():
    for e in (OSError(28, "No space left on device"), RuntimeError("[enforce fail at inline_container.cc] . unexpected pos"),
              OSError("40960 requested and 30688 written"), Exception("database or disk is full")):
        assert durable.is_disk_full(e), e
    assert not durable.is_disk_full(ValueError("bad value"))
