"""Task specs -> :class:`Task`: the zoo's built-in skills, user JSONL files and lm-eval tasks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

BUILTIN = "builtin"
LMEVAL = "lmeval"


@dataclass
class Task:
    """One evaluation task.

    ``files`` maps a split to a JSONL file of ``{"prompt", "answer"}`` lines (built-in back end).
    An lm-eval task has no files of ours: ``lmeval`` holds its task name or the path of its YAML.
    """

    name: str
    files: dict[str, Path] = field(default_factory=dict)
    backend: str = BUILTIN
    lmeval: str | None = None

    def file(self, split: str) -> Path:
        """The JSONL file of ``split``; a single-file task answers every split with its one file."""
        if split in self.files:
            return self.files[split]
        if len(set(self.files.values())) == 1:
            return next(iter(self.files.values()))
        raise KeyError(f"task {self.name!r} has no split {split!r} (has {sorted(self.files)})")


def load_tasks(specs: list[str] | str, size: str = "full") -> list[Task]:
    """Resolve task specs, in order, without duplicates.

    - ``zoo``: every zoo skill; ``zoo:<skill>``: one of them (``size`` picks the zoo's split sizes).
    - a path to a ``.jsonl`` file: a user task named after the file's stem, one split for all.
    - ``lmeval:<task name or task YAML path>``: run through lm-eval-harness;
      ``lmeval:zoo:<skill>`` writes a local lm-eval YAML over that zoo skill's JSONL and runs it.
    """
    from hpc_merge import zoo

    if isinstance(specs, str):
        specs = [specs]
    out: list[Task] = []
    for spec in specs:
        spec = str(spec)
        if spec == "zoo" or spec.startswith("zoo:"):
            files = zoo.ensure_tasks(size)
            names = list(files) if spec == "zoo" else [spec.split(":", 1)[1]]
            for name in names:
                if name not in files:
                    raise KeyError(f"unknown zoo task {name!r}; known: {', '.join(files)}")
                out.append(Task(name=name, files=dict(files[name])))
        elif spec.startswith("lmeval:"):
            target = spec.split(":", 1)[1]
            if target.startswith("zoo:"):
                from hpc_merge.evaluate.lmeval_yaml import write_zoo_task_yaml

                skill = target.split(":", 1)[1]
                files = zoo.ensure_tasks(size)
                if skill not in files:
                    raise KeyError(f"unknown zoo task {skill!r}; known: {', '.join(files)}")
                target = str(write_zoo_task_yaml(skill, files[skill]))
            name = Path(target).stem if target.endswith((".yaml", ".yml")) else target
            out.append(Task(name=name, backend=LMEVAL, lmeval=target))
        else:
            path = Path(spec).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"task spec {spec!r} is neither zoo[:task], lmeval:... nor a JSONL file")
            out.append(Task(name=path.stem, files={"all": path.resolve()}))
    seen: set[str] = set()
    unique = []
    for task in out:
        if task.name not in seen:
            seen.add(task.name)
            unique.append(task)
    return unique
