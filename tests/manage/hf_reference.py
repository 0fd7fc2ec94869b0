"""An independent re-implementation of Hugging Face's checkpoint rotation (transformers 4.40.x,
`Trainer._sorted_checkpoints` and `Trainer._rotate_checkpoints`), for parity tests of `ckpt rotate`.

Semantics kept exactly:

* Candidates: `Path(output_dir).glob("checkpoint-*")` entries that are directories (`os.path.isdir`, which
  follows symlinks), as `str` paths.
* Ordering by step: `re.match(".*checkpoint-([0-9]+)", path)` (entries without a number are dropped), sorted as
  `(step, path)` tuples. Ordering by mtime: `(os.path.getmtime(path), path)` tuples (the directory's own mtime;
  ties broken by the path string); when the newest and oldest mtimes differ by less than 1 s the whole sort is
  redone by step.
* The best (`str(Path(best_model_checkpoint))`, compared as a full path string with the globbed paths) is
  bubbled from its index to len-2 by adjacent swaps.
* Rotation: nothing if the limit is None or <= 0 or there are <= limit checkpoints; with limit 1, a
  best_model_checkpoint set, and the last sorted path != best_model_checkpoint (raw string), the limit becomes
  2; the first len - limit are deleted.

Nothing is deleted here: the functions return what Hugging Face would delete. `only` restricts the candidates to
the given directory names (to model "the complete checkpoints only"), `mtime_of` may replace os.path.getmtime.
"""

import os
import re
from pathlib import Path

PREFIX_CHECKPOINT_DIR = "checkpoint"


def sorted_checkpoints(output_dir, best_model_checkpoint=None, use_mtime=False,
                       checkpoint_prefix=PREFIX_CHECKPOINT_DIR, only=None, mtime_of=os.path.getmtime):
    """Hugging Face's `_sorted_checkpoints`: full paths in rotation order."""
    ordering_and_checkpoint_path = []
    glob_checkpoints = [str(x) for x in Path(output_dir).glob(f"{checkpoint_prefix}-*") if os.path.isdir(x)]
    if only is not None:
        only = set(only)
        glob_checkpoints = [p for p in glob_checkpoints if os.path.basename(p) in only]
    for path in glob_checkpoints:
        if use_mtime:
            ordering_and_checkpoint_path.append((mtime_of(path), path))
        else:
            regex_match = re.match(f".*{checkpoint_prefix}-([0-9]+)", path)
            if regex_match is not None and regex_match.groups() is not None:
                ordering_and_checkpoint_path.append((int(regex_match.groups()[0]), path))

    checkpoints_sorted = sorted(ordering_and_checkpoint_path)
    # mtime is unreliable on some file systems: if everything lies within one second, order by number instead.
    if use_mtime and len(ordering_and_checkpoint_path) > 1:
        mtime_diff = checkpoints_sorted[-1][0] - checkpoints_sorted[0][0]
        if mtime_diff < 1.0:
            return sorted_checkpoints(output_dir, best_model_checkpoint, use_mtime=False,
                                      checkpoint_prefix=checkpoint_prefix, only=only, mtime_of=mtime_of)
    checkpoints_sorted = [checkpoint[1] for checkpoint in checkpoints_sorted]

    # Make sure we don't delete the best model.
    if best_model_checkpoint is not None and str(Path(best_model_checkpoint)) in checkpoints_sorted:
        best_model_index = checkpoints_sorted.index(str(Path(best_model_checkpoint)))
        for i in range(best_model_index, len(checkpoints_sorted) - 2):
            checkpoints_sorted[i], checkpoints_sorted[i + 1] = checkpoints_sorted[i + 1], checkpoints_sorted[i]
    return checkpoints_sorted


def checkpoints_to_delete(output_dir, save_total_limit, best_model_checkpoint=None, use_mtime=False,
                          checkpoint_prefix=PREFIX_CHECKPOINT_DIR, only=None, mtime_of=os.path.getmtime):
    """Hugging Face's `_rotate_checkpoints`, returning the full paths it would rmtree (in its order)."""
    if save_total_limit is None or save_total_limit <= 0:
        return []
    checkpoints_sorted = sorted_checkpoints(output_dir, best_model_checkpoint, use_mtime, checkpoint_prefix, only,
                                            mtime_of)
    if len(checkpoints_sorted) <= save_total_limit:
        return []
    # With save_total_limit=1 and load_best_model_at_end, the last checkpoint would go: keep two.
    if best_model_checkpoint is not None and save_total_limit == 1 and checkpoints_sorted[-1] != best_model_checkpoint:
        save_total_limit = 2
    number_of_checkpoints_to_delete = max(0, len(checkpoints_sorted) - save_total_limit)
    return checkpoints_sorted[:number_of_checkpoints_to_delete]


def names_to_delete(output_dir, save_total_limit, best_model_checkpoint=None, use_mtime=False, only=None,
                    mtime_of=os.path.getmtime):
    """The set of checkpoint directory names Hugging Face would delete."""
    return {os.path.basename(p) for p in checkpoints_to_delete(output_dir, save_total_limit, best_model_checkpoint,
                                                               use_mtime, only=only, mtime_of=mtime_of)}


# ----------------------------------------------------------------------------------------------------------------
# Self-check on in-memory data (no file system): python3 hf_reference.py
# ----------------------------------------------------------------------------------------------------------------

def _self_test():
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        for s in (10, 20, 30, 40, 50):
            os.mkdir(os.path.join(d, "checkpoint-%d" % s))
        os.mkdir(os.path.join(d, "checkpoint-100"))
        p = lambda s: os.path.join(d, "checkpoint-%d" % s)  # noqa: E731
        names = lambda xs: [os.path.basename(x) for x in xs]  # noqa: E731
        # Numeric order, not lexicographic.
        assert names(sorted_checkpoints(d)) == ["checkpoint-%d" % s for s in (10, 20, 30, 40, 50, 100)]
        # Best bubbled to second-to-last.
        assert names(sorted_checkpoints(d, p(20)))[-2:] == ["checkpoint-20", "checkpoint-100"]
        assert names_to_delete(d, 2, p(20)) == {"checkpoint-10", "checkpoint-30", "checkpoint-40", "checkpoint-50"}
        # Limit 1 with best != last keeps two; best == last keeps one.
        assert names_to_delete(d, 1, p(20)) == {"checkpoint-10", "checkpoint-30", "checkpoint-40", "checkpoint-50"}
        assert names_to_delete(d, 1, p(100)) == {"checkpoint-%d" % s for s in (10, 20, 30, 40, 50)}
        # A best that is not among the globbed paths protects nothing, but limit 1 still becomes 2.
        assert names_to_delete(d, 1, "/elsewhere/checkpoint-20") == {"checkpoint-%d" % s for s in (10, 20, 30, 40)}
        # mtime order, and the fallback when everything lies within a second.
        mt = {p(10): 500.0, p(20): 100.0, p(30): 400.0, p(40): 300.0, p(50): 200.0, p(100): 0.0}
        assert names(sorted_checkpoints(d, use_mtime=True, mtime_of=mt.get)) == [
            "checkpoint-100", "checkpoint-20", "checkpoint-50", "checkpoint-40", "checkpoint-30", "checkpoint-10"]
        close = {k: v / 1000.0 for k, v in mt.items()}
        assert names(sorted_checkpoints(d, use_mtime=True, mtime_of=close.get)) == names(sorted_checkpoints(d))
        assert names_to_delete(d, 0) == set() and names_to_delete(d, None) == set() and names_to_delete(d, 6) == set()
    print("hf_reference self-test passed")


if __name__ == "__main__":
    _self_test()
