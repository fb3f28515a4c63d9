"""utrans_loc/files.py: output names, atomic writes on a full disk, one run per output folder."""

import errno
import os

import pytest
from conftest import TEST, run_main

from utrans_loc import files


# ----------------------------------------------------------------- output names, full disks, locks
@pytest.mark.parametrize("name", ["../elsewhere", "/tmp/run", "a/b", "..", ".", ""])
def test_an_output_name_that_is_a_path_is_refused(name):
    with pytest.raises(ValueError, match="output_name must be a plain name"):
        files.output_dir_for(name)


def test_cli_refuses_a_path_as_output_name(tmp_path):
    run = run_main(TEST, "--input_hdf5", "x.hdf5", "--input_model", "m.h5",
                   "--output_name", "../up", cwd=tmp_path)
    assert run.returncode == 2 and "output_name must be a plain name" in run.stderr
    assert not (tmp_path.parent / "up_outputs").exists()


def test_a_full_disk_keeps_the_previous_file_and_names_the_file(tmp_path, monkeypatch):
    path = tmp_path / "history.csv"
    files.atomic_write_text(path, "epoch\n0\n")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="could not write .*history.csv .No space left on device.; "
                                      "its previous version"):
        files.atomic_write_text(path, "epoch\n0\n1\n")
    assert path.read_text() == "epoch\n0\n"
    assert os.listdir(tmp_path) == ["history.csv"]            # no temporary file left


def test_a_claimed_output_folder_refuses_a_second_run(tmp_path):
    out = str(tmp_path / "run_outputs")
    with files.claimed_output_dir(out, True, "pick another", "trainer1"):
        with pytest.raises(FileExistsError, match="already exists; it is left untouched: pick"):
            with files.claimed_output_dir(out, True, "pick another", "trainer1"):
                pass
        with pytest.raises(FileExistsError, match=f"in use by another running trainer1 "
                                                  f"\\(pid {os.getpid()}\\)"):
            with files.claimed_output_dir(out, False, "", "trainer1"):
                pass
        open(os.path.join(out, "history.csv"), "w").close()
    assert os.listdir(out) == ["history.csv"]                 # the lock goes, results stay
    with pytest.raises(RuntimeError):
        with files.claimed_output_dir(str(tmp_path / "failed_outputs"), True, "", "trainer1"):
            raise RuntimeError("failed before writing anything")
    assert not (tmp_path / "failed_outputs").exists()          # an empty claim is undone


# ------------------------------------------------ the locator's staged output folder
def test_staged_output_is_renamed_only_when_complete(tmp_path):
    """Before: Ctrl-C left a half-written output folder that a re-run refused ("already
    exists"). Now results appear under the final name only when complete."""
    from utrans_loc import files

    out = str(tmp_path / "run_outputs")
    with pytest.raises(KeyboardInterrupt):
        with files.staged_output_dir(out, "locator") as staged:
            (tmp_path / "run_outputs.partial" / "locations.csv").write_text("half")
            assert not os.path.exists(out)
            raise KeyboardInterrupt
    assert not os.path.exists(out) and os.path.isdir(out + ".partial")
    with files.staged_output_dir(out, "locator") as staged:     # a re-run is not refused
        open(os.path.join(staged.path, "locations.csv"), "w").write("whole")
    assert open(os.path.join(out, "locations.csv")).read() == "whole"
    kept = [p for p in os.listdir(tmp_path) if p.startswith("run_outputs.interrupted-")]
    assert len(kept) == 1                                       # the partial one, kept
    assert (tmp_path / kept[0] / "locations.csv").read_text() == "half"
    assert staged.final == out and not os.path.exists(out + ".partial")


def test_staged_output_is_locked_and_never_lost_to_another_job(tmp_path):
    """Before: an output folder created by another job during the run discarded every
    result at the end ([Errno 17] File exists), and two runs could share a name."""
    from utrans_loc import files

    out = str(tmp_path / "run_outputs")
    with files.staged_output_dir(out, "locator") as staged:
        with pytest.raises(FileExistsError, match="being written by another running locator"):
            with files.staged_output_dir(out, "locator"):
                pass
        os.mkdir(out)
        open(os.path.join(out, "theirs.txt"), "w").write("another job's")
        open(os.path.join(staged.path, "events.csv"), "w").write("ours")
    assert staged.final != out and staged.final.startswith(out + ".")
    assert open(os.path.join(staged.final, "events.csv")).read() == "ours"
    assert open(os.path.join(out, "theirs.txt")).read() == "another job's"
    # an error before anything was written leaves nothing behind
    with pytest.raises(ValueError):
        with files.staged_output_dir(str(tmp_path / "empty_outputs"), "locator"):
            raise ValueError("nothing located")
    assert not [p for p in os.listdir(tmp_path) if p.startswith("empty_outputs")]
