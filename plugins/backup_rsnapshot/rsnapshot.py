"""Per-account rsnapshot configuration: render, prove valid, put in place.

A file that fails ``rsnapshot -c FILE configtest`` is never left in place:
it is written next to its final name, checked, and only then renamed over
the old one.

configtest is a Perl start-up (~35 ms), too slow to run per account at
hundreds of accounts per second. With CONFIGTEST = cached it runs once per
*shape*: the file rendered with placeholders instead of the account's paths.
Accounts differ only in those paths (checked to be plain absolute paths, see
account.SAFE_PATH) and in their retain lines (part of the shape). What
configtest checks of the paths - that the backup source and snapshot_root
exist - is checked for every file here. So a file whose shape passed
configtest passes it too, without starting Perl. CONFIGTEST = always runs it
for every file.
"""
from __future__ import annotations

import hashlib
import logging
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from provisioning.transport import Transport

from provisioning_backup_rsnapshot.account import Account, Layout
from provisioning_backup_rsnapshot.codes import Code, StepError

log = logging.getLogger(__name__)

PLACEHOLDER = re.compile(r"%([a-z_]+)%")
REQUIRED = {"snapshot_root", "retain", "backup_source"}
KNOWN = REQUIRED | {"uid", "jail", "home", "home_path"}
# Stand-ins for the account's paths when the shape is rendered.
SHAPE_VALUES = {"uid": "@UID@", "jail": "/@JAIL@", "home": "/@HOME@", "home_path": "/@HOME_PATH@",
                "snapshot_root": "/@SNAPSHOT_ROOT@/", "backup_source": "/@BACKUP_SOURCE@/"}


class Template:
    """The rsnapshot template: text with %name% placeholders (TABs kept as they are)."""

    def __init__(self, text: str, source: str) -> None:
        names = set(PLACEHOLDER.findall(text))
        unknown, missing = names - KNOWN, REQUIRED - names
        problems = []
        if unknown:
            problems.append(f"unknown placeholder(s) {', '.join(sorted('%' + n + '%' for n in unknown))}")
        if missing:
            problems.append(f"missing placeholder(s) {', '.join(sorted('%' + n + '%' for n in missing))}")
        if problems:
            raise ValueError(f"{source}: " + "; ".join(problems) + f" (known: {', '.join(sorted(KNOWN))})")
        self.text = text
        self.source = source

    @classmethod
    def load(cls, path: Path) -> "Template":
        return cls(path.read_text(encoding="utf-8"), str(path))

    def render(self, values: dict[str, str]) -> str:
        return PLACEHOLDER.sub(lambda m: values[m.group(1)], self.text)


def values_for(account: Account, place: Layout) -> dict[str, str]:
    return {"uid": account.uid, "jail": place.jail, "home": place.home, "home_path": place.home_path,
            "snapshot_root": place.snapshot_root, "backup_source": place.incoming,
            "retain": retain_lines(account)}


def retain_lines(account: Account) -> str:
    return "\n".join(f"retain\t{level}\t{count}" for level, count in account.retain)


@dataclass(frozen=True)
class Staged:
    """A configuration written next to its place (``candidate``), not yet at ``final``."""

    candidate: str
    final: str
    values: dict = field(compare=False, repr=False)


class RsnapshotConfigs:
    """Writes and removes account configurations through the transport."""

    def __init__(self, template: Template, file_pattern: str, rsnapshot_cmd: str,
                 transport: Transport, *, always_test: bool = False) -> None:
        self.template = template
        self.file_pattern = file_pattern
        self.rsnapshot_cmd = rsnapshot_cmd
        self.transport = transport
        self.always_test = always_test
        self.proven_shapes: set[str] = set()
        self.configtests = 0   # how often rsnapshot ran; reported by the benchmark
        self._shape_locks: dict[str, threading.Lock] = {}     # few: one per shape
        self._shape_locks_guard = threading.Lock()

    def path_for(self, uid: str) -> str:
        return self.file_pattern.replace("%uid%", uid)

    def install(self, account: Account, place: Layout) -> str:
        """Put the account's configuration in place; StepError 7 if it is not valid."""
        staged = self.write(account, place)
        self.prove(staged, place)
        return self.commit(staged)

    def write(self, account: Account, place: Layout) -> Staged:
        """Write the configuration, synced, next to its place; not in use yet (StepError 7).

        This needs nothing of the account's folders, so it can be done while
        they are made. Then ``prove`` checks it against them, and ``commit``
        puts it in place, or ``discard`` removes it.
        """
        values = values_for(account, place)
        final = self.path_for(account.uid)
        staged = Staged(self._candidate_for(final), final, values)
        with self._discarded_on_failure(staged):
            self.transport.write_file(staged.candidate, self.template.render(values).encode(), mode=0o644)
        return staged

    def prove(self, staged: Staged, place: Layout) -> None:
        """StepError 7 (and the candidate removed) unless the written configuration is valid here."""
        with self._discarded_on_failure(staged):
            self._check_paths(place)
            self._prove(staged.candidate, staged.values)

    @contextmanager
    def _discarded_on_failure(self, staged: Staged) -> Iterator[None]:
        try:
            yield
        except OSError as err:
            self.discard(staged)
            raise StepError(Code.CANNOT_CREATE_RSNAPSHOT_CONFIGURATION,
                            f"cannot write {staged.final}: {err}") from err
        except BaseException:
            self.discard(staged)
            raise

    def commit(self, staged: "Staged") -> str:
        """Rename the staged file over the account's configuration; its path."""
        try:
            self.transport.rename(staged.candidate, staged.final)
        except OSError as err:
            self.discard(staged)
            raise StepError(Code.CANNOT_CREATE_RSNAPSHOT_CONFIGURATION,
                            f"cannot write {staged.final}: {err}") from err
        except BaseException:
            self.discard(staged)          # the gateway went away: removed once it answers (if still there)
            raise
        return staged.final

    def discard(self, staged: "Staged") -> None:
        """Remove a staged file that is not to be used (a warning if that fails; once the gateway
        answers again if it is away)."""
        self._discard(staged.candidate)

    def discard_candidate(self, uid: str) -> None:
        """Remove a candidate an earlier attempt for the account left (see discard)."""
        self._discard(self._candidate_for(self.path_for(uid)))

    def remove(self, uid: str) -> str:
        """Remove the account's configuration (already gone is fine); StepError 8 on failure.

        A candidate left next to it goes too: one whose removal failed (past
        the request's deadline, the gateway gone) would outlive the account.
        """
        path = self.path_for(uid)
        for each in (path, self._candidate_for(path)):
            try:
                self.transport.remove(each)
            except OSError as err:
                raise StepError(Code.CANNOT_REMOVE_RSNAPSHOT_CONFIGURATION, f"cannot remove {each}: {err}") from err
        return path

    @staticmethod
    def _candidate_for(final: str) -> str:
        folder, name = final.rsplit("/", 1)
        return f"{folder}/.{name}.new"

    def _check_paths(self, place: Layout) -> None:
        # What configtest would say about this account's paths, said here.
        for what, path in (("snapshot_root", place.snapshot_root), ("backup source", place.incoming)):
            try:
                present = self.transport.exists(path)
            except OSError as err:
                raise StepError(Code.CANNOT_CREATE_RSNAPSHOT_CONFIGURATION, f"cannot check {what} {path}: {err}") from err
            if not present and not self.transport.dry_run:
                raise StepError(Code.CANNOT_CREATE_RSNAPSHOT_CONFIGURATION, f"{what} {path} does not exist")

    def _prove(self, candidate: str, values: dict[str, str]) -> None:
        shape = self._shape(values)
        if self.always_test:
            return self._configtest(candidate, shape)
        # Workers: accounts of one shape wait for the first one's configtest
        # instead of starting Perl each.
        with self._shape_locks_guard:
            lock = self._shape_locks.setdefault(shape, threading.Lock())
        with lock:
            if shape not in self.proven_shapes:
                self._configtest(candidate, shape)

    def _configtest(self, candidate: str, shape: str) -> None:
        result = self.transport.run([self.rsnapshot_cmd, "-c", candidate, "configtest"])
        self.configtests += 1
        if not result.ok:
            errors = [line for line in (result.stdout + result.stderr).splitlines() if "ERROR" in line]
            raise StepError(Code.CANNOT_CREATE_RSNAPSHOT_CONFIGURATION,
                            f"rsnapshot configtest rejected the configuration: "
                            f"{' / '.join(errors[:3]) or result.describe()}")
        self.proven_shapes.add(shape)

    def _shape(self, values: dict[str, str]) -> str:
        shape = self.template.render({**SHAPE_VALUES, "retain": values["retain"]})
        return hashlib.sha256(shape.encode()).hexdigest()

    def _discard(self, path: str) -> None:
        try:
            self.transport.discard(path)
        except OSError as err:
            log.warning("cannot remove the unused candidate %s: %s (the account's next write replaces it, "
                        "its delete removes it)", path, err)
