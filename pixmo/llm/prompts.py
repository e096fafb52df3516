"""Versioned prompt files: ``prompts/<task>.v<N>.toml``, one file per task and version.

A file holds the system message, worked examples (user/assistant turns) and the user template
(``$field`` placeholders, `string.Template` syntax, so JSON braces need no escaping)::

    task = "clean"
    version = 1
    max_tokens = 320
    system = "..."
    user = "Transcript: $transcript"

    [[examples]]
    user = "..."
    assistant = "..."

A changed prompt is a new file with the next version; outputs record ``<task>-v<N>``, so a rerun
with the new version produces new rows next to the old ones.
"""

from __future__ import annotations

import hashlib
import re
import string
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pixmo.errors import NotFoundError, ValidationError

PROMPTS_DIR = Path(__file__).parent / "prompts"
_FILE = re.compile(r"^(?P<task>[a-z_]+)\.v(?P<version>\d+)\.toml$")


@dataclass(frozen=True)
class Prompt:
    """One version of one task's prompt."""

    task: str
    number: int
    system: str
    user: str
    examples: tuple[tuple[str, str], ...]
    max_tokens: int
    sha256: str
    path: Path

    @property
    def version(self) -> str:
        """The version recorded on outputs, e.g. ``clean-v1``; a file of your own adds the start of
        its sha256 (``clean-v1-3fa2c1d4``), so an edited copy of a bundled prompt is not taken for it
        (its outputs would count as done already) and each edit writes rows of its own."""
        base = f"{self.task}-v{self.number}"
        bundled = (PROMPTS_DIR / f"{self.task}.v{self.number}.toml").resolve()
        return base if self.path.resolve() == bundled else f"{base}-{self.sha256[:8]}"

    @property
    def fields(self) -> set[str]:
        return {m.group("named") or m.group("braced") for m in string.Template.pattern.finditer(self.user)
                if m.group("named") or m.group("braced")}

    def messages(self, **fields: object) -> list[dict[str, str]]:
        """The chat messages for one input: system, worked examples, then the filled template."""
        missing = self.fields - set(fields)
        if missing:
            raise ValidationError(f"prompt {self.version} needs {', '.join(sorted(missing))}")
        out = [{"role": "system", "content": self.system.strip()}] if self.system.strip() else []
        for user, assistant in self.examples:
            out += [{"role": "user", "content": user.strip()}, {"role": "assistant", "content": assistant.strip()}]
        text = string.Template(self.user).safe_substitute({k: str(v) for k, v in fields.items()})
        out.append({"role": "user", "content": text.strip()})
        return out


def _parse_file(path: Path) -> Prompt:
    raw = path.read_bytes()
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValidationError(f"prompt file {path} is not valid TOML: {exc}") from exc
    m = _FILE.match(path.name)
    task = data.get("task") or (m.group("task") if m else None)
    number = data.get("version") or (int(m.group("version")) if m else None)
    if not task or not number or not data.get("user"):
        raise ValidationError(f"prompt file {path} needs task, version and user")
    examples = tuple((e["user"], e["assistant"]) for e in data.get("examples", []))
    return Prompt(task, int(number), data.get("system", ""), data["user"], examples,
                  int(data.get("max_tokens", 256)), hashlib.sha256(raw).hexdigest(), path)


def list_prompts(folder: Path = PROMPTS_DIR) -> dict[str, list[int]]:
    """Task name → its available version numbers, ascending."""
    found: dict[str, list[int]] = {}
    for path in sorted(folder.glob("*.toml")):
        if m := _FILE.match(path.name):
            found.setdefault(m.group("task"), []).append(int(m.group("version")))
    return {task: sorted(v) for task, v in sorted(found.items())}


@lru_cache(maxsize=64)
def load_prompt(task: str, version: str | int | None = None) -> Prompt:
    """The prompt of ``task``: the newest version, or ``version`` (``2``, ``v2``, ``clean-v2``,
    or the path of a .toml file of your own)."""
    if version is not None and str(version).endswith(".toml"):
        prompt = _parse_file(Path(version))
        if prompt.task != task:
            raise ValidationError(f"{version} is a prompt for {prompt.task!r}, not {task!r}")
        return prompt
    versions = list_prompts().get(task)
    if not versions:
        raise NotFoundError(f"no prompt for task {task!r}; tasks: {', '.join(list_prompts())}")
    if version is None:
        number = versions[-1]
    else:
        m = re.fullmatch(rf"(?:{re.escape(task)}-)?v?(\d+)", str(version))
        if not m or int(m.group(1)) not in versions:
            raise NotFoundError(f"no version {version!r} of the {task} prompt; have v{', v'.join(map(str, versions))}")
        number = int(m.group(1))
    return _parse_file(PROMPTS_DIR / f"{task}.v{number}.toml")
