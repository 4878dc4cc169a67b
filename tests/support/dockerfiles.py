"""The Dockerfiles read as instructions: stages, their bases, ENV, ENTRYPOINT and CMD (no Docker)."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GATEWAY, WORKER = ROOT / "Dockerfile.gateway", ROOT / "Dockerfile.worker"


@dataclass
class Stage:
    """One ``FROM`` stage: its base, name, and the instructions under it."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def last(self, keyword: str) -> str | None:
        found = [arg for kw, arg in self.instructions if kw == keyword]
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        """ENV key=value pairs (the form these Dockerfiles use)."""
        out: dict[str, str] = {}
        for kw, arg in self.instructions:
            if kw == "ENV":
                out.update(dict(item.split("=", 1) for item in shlex.split(arg)))
        return out


def parse(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages of a Dockerfile (continuations joined)."""
    text = path.read_text().replace("\\\n", " ")
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            parts = rest.split()
            base = parts[0]
            for name, value in args.items():
                base = base.replace("${" + name + "}", value)
            stages.append(Stage(base, parts[2] if len(parts) > 2 else None))
        elif keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif stages:
            stages[-1].instructions.append((keyword, rest))
    return args, stages


def stage(path: Path, name: str) -> Stage:
    return next(s for s in parse(path)[1] if s.name == name)


def exec_form(arg: str | None) -> list[str]:
    assert arg is not None
    assert arg.startswith("["), f"not exec form: {arg!r}"
    return json.loads(arg)
