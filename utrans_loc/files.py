"""Files that are never lost: atomic writes, new output folders, text reports.

Every file the pipeline writes goes through :func:`atomic_path`: a temporary
name beside the target, flushed to disk, then renamed, so a kill at any moment
leaves the old complete file or the new one, never half of one. Output folders
are created only when they do not exist yet (:func:`new_output_dir`): an
earlier result is never overwritten.

Must not import keras or any deep-learning backend (the data builders use it).
"""

from __future__ import annotations

import contextlib
import datetime
import os


@contextlib.contextmanager
def atomic_path(path, suffix=""):
    """Yield a temporary path beside ``path``; on success fsync it and rename it
    onto ``path``; on any error (or interruption) remove it.

    ``suffix`` ends the temporary name, for writers that insist on an
    extension (Keras: ``.weights.h5``).
    """
    folder, name = os.path.split(os.path.abspath(path))
    stem = name[:-len(suffix)] if suffix and name.endswith(suffix) else name
    tmp = os.path.join(folder, f".{stem}.partial{os.getpid()}{suffix}")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        # A full disk or a lost mount: say which file, and that nothing earlier is lost.
        raise OSError(err.errno, f"could not write {path} ({err.strerror or err}); its previous "
                                 "version, if any, is kept") from err
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_save(path, save, suffix=""):
    """Write ``path`` by calling ``save(temporary_path)``, then rename (for writers
    that take a path, not a file object)."""
    with atomic_path(path, suffix) as tmp:
        save(tmp)
    return path


def atomic_write(path, writer, mode="w"):
    """Write ``path`` by calling ``writer(file_object)`` on a temporary file, then rename."""
    with atomic_path(path) as tmp, open(tmp, mode) as fh:
        writer(fh)
    return path


def atomic_write_text(path, text):
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda fh: fh.write(text))


def atomic_save_weights(model, path):
    """``model.save_weights(path)`` atomically (Keras needs the ``.weights.h5`` suffix)."""
    return atomic_save(path, model.save_weights, suffix=".weights.h5")


def check_output_parent(output_dir):
    """The folder that will hold ``output_dir`` exists and is writable."""
    parent = os.path.dirname(os.path.abspath(output_dir))
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise OSError(f"cannot write {output_dir}: {parent} is not a writable folder")


def output_dir_for(output_name):
    """``<output_name>_outputs`` in the working directory, as an absolute path (the
    upstream naming). ``output_name`` is a name, not a path: one with a path
    separator, ``..`` or nothing usable is refused (ValueError), so no value,
    typed or read back from a run's JSON, writes outside the working directory."""
    name = str(output_name)
    if not name or name in (".", "..") or "/" in name or os.sep in name or \
            (os.altsep and os.altsep in name) or "\0" in name:
        raise ValueError(f"output_name must be a plain name (no '/', no '..'), got {name!r}: "
                         "results go to <output_name>_outputs in the working directory; run "
                         "from the folder where you want them")
    return os.path.abspath(f"{name}_outputs")


def check_new_output_dir(output_dir, hint="choose another --output_name (or move the folder away)"):
    """Refuse (FileExistsError) an output folder that exists; check its parent is writable."""
    if os.path.exists(output_dir):
        raise FileExistsError(f"output folder {output_dir} already exists; it is left untouched: "
                              f"{hint}")
    check_output_parent(output_dir)
    return output_dir


LOCK_NAME = ".lock"


def _hold_lock(path, busy, advice):
    """An open descriptor of ``path`` holding an exclusive ``flock`` with our pid in it;
    FileExistsError ``"<busy> (pid N); <advice>"`` when another process holds it."""
    import fcntl

    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise FileExistsError(f"{busy} (pid {other}); {advice}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


@contextlib.contextmanager
def claimed_output_dir(output_dir, new, hint, prog):
    """Hold ``output_dir`` for one run: created now when ``new`` (so a second run
    started on the same name at the same time is refused at once), and locked
    (``flock`` on ``.lock`` inside it) for as long as the run lasts, so a second
    run, a resume included, cannot write into it. A new folder that the run
    leaves empty (it failed before writing anything) is removed again.
    """
    if new:
        check_output_parent(output_dir)
        try:
            os.mkdir(output_dir)
        except FileExistsError:
            raise FileExistsError(f"output folder {output_dir} already exists; it is left "
                                  f"untouched: {hint}") from None
    lock = os.path.join(output_dir, LOCK_NAME)
    fd = _hold_lock(lock, f"{output_dir} is in use by another running {prog}",
                    "wait for it to finish or choose another --output_name")
    try:
        yield output_dir
    finally:
        os.remove(lock)
        os.close(fd)   # closing releases the lock
        if new and not os.listdir(output_dir):
            os.rmdir(output_dir)



class StagedOutput:
    """The folder a run writes into (``path``) and where its results end up (``final``)."""

    def __init__(self, path, final):
        self.path, self.final = path, final


@contextlib.contextmanager
def staged_output_dir(output_dir, prog, hint="choose another --output_name (or move the "
                                               "folder away)"):
    """Write a run's results into ``<output_dir>.partial`` and rename it to ``output_dir``
    when the run succeeds, so ``output_dir`` is only ever complete.

    A second run on the same name is refused while this one runs (``flock`` on
    ``.<name>.lock`` beside the folder). The ``.partial`` folder of an
    interrupted run (Ctrl-C, a full disk, a kill) is never reused nor deleted:
    it is renamed ``<output_dir>.interrupted-<UTC time>`` and the run starts
    afresh. Should ``output_dir`` appear while the run works (another job), the
    results go to ``<output_dir>.<UTC time>`` instead, said on stderr: nothing
    is lost. On an error the partial folder is kept (removed only when empty).
    """
    import sys

    check_new_output_dir(output_dir, hint)
    folder, name = os.path.split(output_dir)
    partial = output_dir + ".partial"
    fd = _hold_lock(os.path.join(folder, f".{name}.lock"),
                    f"{output_dir} is being written by another running {prog}",
                    f"wait for it to finish or {hint}")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    try:
        if os.path.exists(partial):
            kept = f"{output_dir}.interrupted-{stamp}"
            os.rename(partial, kept)
            print(f"{prog}: an earlier run on this name was interrupted; its partial results "
                  f"are kept in {kept}", file=sys.stderr)
        os.mkdir(partial)
        staged = StagedOutput(partial, output_dir)
        try:
            yield staged
        except BaseException:
            if not os.listdir(partial):
                os.rmdir(partial)
            else:
                print(f"{prog}: the results written so far are kept in {partial}",
                      file=sys.stderr)
            raise
        try:
            if os.path.exists(output_dir):
                raise FileExistsError(output_dir)
            os.rename(partial, output_dir)
        except OSError:
            staged.final = f"{output_dir}.{stamp}"
            print(f"{prog}: {output_dir} was created by someone else while this run worked; "
                  f"the results are in {staged.final}", file=sys.stderr)
            os.rename(partial, staged.final)
    finally:
        os.remove(os.path.join(folder, f".{name}.lock"))
        os.close(fd)

def write_report(path, title, items):
    """Write ``name: value`` lines to a text report (atomically)."""
    text = [f"{title} report, {datetime.datetime.now().isoformat(timespec='seconds')}"]
    text += [f"{name}: {value}" for name, value in items]
    return atomic_write_text(path, "\n".join(text) + "\n")
