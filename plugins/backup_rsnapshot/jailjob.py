"""The jail job: keeps every jail on the current jail image, in the background.

One thread per daemon (provisioning_serving starts it, provisioning_stop
ends it; not in a dry run). All its work on the host goes through the
transport's ``call`` to jailcalls (in the daemon, or the gateway's helper):

1. Every JAIL_CHECK_SECONDS it looks at the host's programs (a stat per
   file). When one of them or a library it needs changed, and the changed
   files have been left alone that long (an upgrade under way is not
   half-taken), a new image is made. At start, so is one when there is none
   or JAIL_PROGRAMS names other programs.
2. A pass goes over BACKUP_ROOT's account directories, one bucket (the
   last digit) at a time, and moves each stale jail to the current image,
   at most JAIL_RELINK_RATE jails a second. Passes run at start, after a new
   image, after an operator's CREATE_CHROOT_CMD made a jail, and hourly. A
   change of the programs during a pass ends it and starts another.
3. A jail is touched only when its account directory's owner marker names
   an entry of the daemon's store whose uid is the directory's (the store
   holds what the directory said, ServiceContext.known_entries): never a
   directory without a marker, nor one whose marker is another entry's.
4. After a pass, the old images nothing links to are removed.
5. The figures go to BACKUP_ROOT/.jail-images/status.json (for ``status``)
   and to the metrics; a jail stale for more than a day is a warning.

Nothing here keeps state a crash could lose: every figure is read from the
host again, and the next pass finishes a jail that was half moved.
"""
from __future__ import annotations

import collections
import json
import logging
import posixpath
import threading
import time
from typing import Callable

from provisioning.api import Entry, Transport

from provisioning_backup_rsnapshot.builder import MODULES
from provisioning_backup_rsnapshot.jailimage import STORE_NAME
from provisioning_backup_rsnapshot.settings import Settings

log = logging.getLogger(__name__)

BUCKETS = "0123456789"
STATUS_FILE = "status.json"
FULL_PASS_SECONDS = 3600
STALE_WARNING_SECONDS = 86400
STOP_SECONDS = 30
# The status file is written at most this often during a pass (and after every pass).
STATUS_EVERY = 5
# Jails an operator's script made, waiting to be moved; beyond, the hourly pass finds them.
NOTICED_MAX = 10_000


def status_path(backup_root: str) -> str:
    return posixpath.join(backup_root, STORE_NAME, STATUS_FILE)


class Figures:
    """What the last look of each bucket found; the totals are their sums."""

    KEYS = ("current", "stale", "copied", "left_alone", "refused", "without_programs")

    def __init__(self) -> None:
        self.buckets: dict[str, dict[str, int]] = {}
        self.how: dict[str, int] = {}
        self.images_in_use: set[str] = set()
        self.stale_since: float | None = None
        self.copies_since: float | None = None
        self.stores: dict[str, dict] = {}
        self.written = 0.0

    def total(self, key: str) -> int:
        # list(): one step under the GIL; a worker (built) may add a bucket meanwhile.
        return sum(bucket.get(key, 0) for bucket in list(self.buckets.values()))

    def image_changed(self) -> None:
        """A new image: the jails counted current are on the one before it until the pass looks
        at their bucket again (status would say they are current meanwhile, for up to a pass)."""
        for counts in self.buckets.values():
            counts["stale"] += counts["current"]
            counts["current"] = 0

    def as_json(self, programs: list[str], now: float) -> dict:
        stale = self.total("stale")
        return {"written": now, "programs": programs, "stores": self.stores,
                **{key: self.total(key) for key in self.KEYS},
                "jails": self.total("current") + stale, "stale_since": self.stale_since if stale else None,
                "copies_since": self.copies_since, "how": self.how,
                "buckets": {bucket: dict(counts) for bucket, counts in list(self.buckets.items())}}


class JailJob:
    """The thread, and the figures it keeps."""

    def __init__(self, settings: Settings, transport: Transport, entries: Callable[[str], Entry | None]) -> None:
        self.settings = settings
        self.transport = transport
        self.entries = entries
        self.figures = Figures()
        self.tops = [settings.backup_root]
        self.make: set[str] = set()         # tops with jails of ours but no store yet: make one
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_look = 0.0
        self._pass_due = True
        self._last_pass = 0.0
        self._next_move = 0.0
        self._warned = 0.0
        self._noticed: collections.deque[tuple[str, str, str]] = collections.deque()
        self._lock = threading.Lock()        # the queue above, and the figures workers add to (built)
        self._said: set[str] = set()        # errors of the look, each logged once
        self._dirty = False                 # figures changed since the status file was written

    # ------------------------------------------------------------- life cycle

    def start(self) -> None:
        self._load_status()
        self._thread = threading.Thread(target=self._run, name="jail-job", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(STOP_SECONDS)
            if self._thread.is_alive():
                log.warning("the jail job did not end within %d s of the stop", STOP_SECONDS)

    def notice(self, directory: str, jail: str, uuid: str) -> None:
        """An operator's CREATE_CHROOT_CMD made ``jail`` for the entry ``uuid``: moved soon (its
        programs may be copies). The request judged the directory that entry's already."""
        with self._lock:
            if len(self._noticed) < NOTICED_MAX:
                self._noticed.append((directory, jail, uuid))
        self._wake.set()

    def built(self, directory: str) -> None:
        """The shipped builder made a jail on the current image: counted until the next pass counts again."""
        with self._lock:
            counts = self.figures.buckets.setdefault(posixpath.basename(directory)[-1:],
                                                     dict.fromkeys(Figures.KEYS, 0))
            counts["current"] += 1
            self._dirty = True

    def gauges(self) -> dict[str, tuple[float, str]]:
        f, now = self.figures, time.time()
        stale = f.total("stale")
        return {"jails_current": (f.total("current"), "Jails whose programs are the current jail image's"),
                "jails_stale": (stale, "Jails on an old jail image, or with copied programs"),
                "jails_stale_seconds": (now - f.stale_since if stale and f.stale_since else 0,
                                        "How long the longest stale jail has been stale"),
                "jails_left_alone": (f.total("left_alone"), "Jails whose owner marker is not an entry's "
                                                            "of this daemon: never touched")}

    # ------------------------------------------------------------------- loop

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._round()
            except Exception:  # noqa: BLE001 - the job must outlive one bad round; the log says why
                log.exception("the jail job failed; trying again in %g s", self.settings.jail_check_seconds)
                self._pass_due = True
            self._wake.wait(max(0.0, self._next_look - time.monotonic()))
            self._wake.clear()

    def _round(self) -> None:
        if time.monotonic() >= self._next_look:
            self._look()
        if time.time() - self._last_pass >= FULL_PASS_SECONDS:
            self._pass_due = True
        self._move_noticed()
        if self._pass_due and not self._stop.is_set():
            self._pass_due = False
            started = time.time()
            if self._pass():
                self._last_pass = started
                self._prune()
            self._write_status()
        elif self._dirty and time.time() - self.figures.written > STATUS_EVERY:
            self._write_status()

    def _look(self) -> bool:
        """Look at the host's programs; True when a new image was made (a pass is then due)."""
        self._next_look = time.monotonic() + self.settings.jail_check_seconds
        answers = self._call("look", self.tops, self.settings.jail_programs, self.settings.jail_check_seconds,
                             sorted(self.make), self.settings.jail_link_limit)
        made = False
        for answer in answers:
            top = answer["top"]
            if answer.get("absent"):
                continue
            if "refused" in answer:
                if answer["refused"] not in self._said:     # looked at again every JAIL_CHECK_SECONDS
                    self._said.add(answer["refused"])
                    log.error("jail image of %s: %s", top, answer["refused"])
                continue
            if answer["waiting"]:
                log.info("jail image of %s: waiting for the programs to settle: %s", top, answer["waiting"])
            if answer["made"]:
                made = True
                log.info("jail image of %s: a new image (content %s) for %s; every jail is moved to it",
                         top, answer["content"][:12], " ".join(self.settings.jail_programs))
            self.figures.stores[top] = {"content": answer["content"], "since": answer["since"]}
        if made:
            self._pass_due = True
            with self._lock:
                self.figures.image_changed()
                self._stale_since()
            self._write_status()
        return made

    def _pass(self) -> bool:
        """Every bucket looked at, its stale jails moved; False when ended early (stop, new image)."""
        moved = 0
        for bucket in BUCKETS:
            if self._stop.is_set():
                return False
            stale = self._survey(bucket)
            for directory, jail, marker, images in stale:
                if self._stop.is_set() or not self._pace():
                    return False
                moved += self._move(bucket, directory, jail, marker, images)
            if time.time() - self.figures.written > STATUS_EVERY:
                self._write_status()
        f = self.figures
        (log.info if moved else log.debug)(
            "jails: %d on the current image, %d moved to it in this pass, %d stale, %d left alone "
            "(owner marker not this daemon's entry's), %d refused", f.total("current"), moved,
            f.total("stale"), f.total("left_alone"), f.total("refused"))
        self._warn_if_stale()
        return True

    def _survey(self, bucket: str) -> list[tuple[str, str, str, dict]]:
        """Look at one bucket; its figures; the stale jails that are ours."""
        answer = self._call("survey", self.settings.backup_root, bucket)
        counts = dict.fromkeys(Figures.KEYS, 0)
        counts["without_programs"] = answer["without"]
        stale = []
        for directory, jail, marker, top, state, images, copied in answer["jails"]:
            if top not in self.tops:
                self.tops.append(top)           # another filesystem: its own store
                self._next_look = 0
                self._pass_due = True
            why = self._not_ours(directory, marker)
            if why or state != "stale":
                # What it links to stays (a jail moved below adds the image it got).
                self.figures.images_in_use.update(images)
            if why:
                counts["left_alone"] += 1
                log.debug("jail %s left alone: %s", jail, why)
                continue
            if state.startswith("refused"):
                counts["refused"] += 1
                log.warning("jail %s: %s", jail, state)
                continue
            if state == "nostore" and top not in self.make:
                self.make.add(top)              # the image is made at the next look, then moved to
                self._next_look = 0
                self._pass_due = True
            if state == "current":
                counts["current"] += 1
                continue
            counts["stale"] += 1
            counts["copied"] += 1 if copied else 0
            if state == "stale":
                stale.append((directory, jail, marker, images))
        self.figures.buckets[bucket] = counts
        self._stale_since()
        return stale

    def _move(self, bucket: str, directory: str, jail: str, marker: str, images: dict) -> int:
        """Move one stale jail; 1 if it was moved."""
        try:
            answer = self._call("relink", self.settings.backup_root, directory, jail,
                                self.settings.jail_link_limit, marker)
        except OSError as err:
            log.warning("jail %s: cannot move it to the current image: %s", jail, err)
            self.figures.images_in_use.update(images)
            return 0
        counts = self.figures.buckets[bucket]
        if "refused" in answer:
            log.warning("jail %s: not moved to the current image: %s", jail, answer["refused"])
            self.figures.images_in_use.update(images)
            counts["refused"] += 1
            counts["stale"] -= 1
            return 0
        if answer["state"] in ("nostore", "none"):
            # No image there any more (the next look makes one: still stale), or nothing of an
            # image in the jail after all: nothing moved either way.
            self.figures.images_in_use.update(images)
            if answer["state"] == "none":
                counts["stale"] -= 1
                counts["without_programs"] += 1
            return 0
        if answer.get("image"):
            self.figures.images_in_use.add(answer["image"])
        for how, n in answer["how"].items():
            self.figures.how[how] = self.figures.how.get(how, 0) + n
        counts["stale"] -= 1
        counts["current"] += 1
        log.debug("jail %s: %d files from the image %s, %d of an old one removed", jail, answer["moved"],
                  answer["image"], answer["removed"])
        return 1

    def _move_noticed(self) -> None:
        """Move the jails operators' scripts made since the last round.

        The request that made one judged its directory the entry's: the
        store need not know the entry yet (it is written a moment later).
        One whose filesystem has no image yet waits for the next round,
        after the look that makes it.
        """
        with self._lock:
            todo, self._noticed = self._noticed, collections.deque()
        later = []
        for directory, jail, uuid in todo:
            if self._stop.is_set():
                later.append((directory, jail, uuid))
                continue
            self._pace()
            try:
                answer = self._call("relink", self.settings.backup_root, directory, jail,
                                    self.settings.jail_link_limit, uuid)
            except OSError as err:
                log.warning("jail %s: cannot move it to the current image: %s", jail, err)
                continue
            if "refused" in answer:
                log.warning("jail %s: not moved to the current image: %s", jail, answer["refused"])
            elif answer["state"] == "nostore":
                if answer["top"] not in self.make:  # the next look makes the image; then this jail moves
                    self.make.add(answer["top"])
                    self._next_look = 0
                later.append((directory, jail, uuid))
            elif answer.get("moved"):           # a jail that holds no program has nothing to move
                log.info("jail %s (made by CREATE_CHROOT_CMD): %d files now from the jail image %s",
                         jail, answer["moved"], answer["image"])
        with self._lock:
            self._noticed.extendleft(reversed(later))

    def _pace(self) -> bool:
        """Wait for the next move's turn; False when a new image came meanwhile (start again)."""
        now = time.monotonic()
        if self._next_move > now:
            self._stop.wait(self._next_move - now)
        self._next_move = max(now, self._next_move) + 1 / self.settings.jail_relink_rate
        if time.monotonic() >= self._next_look and self._look():
            return False
        return True

    def _prune(self) -> None:
        removed = self._call("prune", self.tops, sorted(self.figures.images_in_use))
        self.figures.images_in_use = set()
        for top, names in removed.items():
            for name in names:
                log.info("jail image %s of %s removed: no jail links to it any more", name, top)

    # ---------------------------------------------------------------- judging

    def _not_ours(self, directory: str, marker: str | None) -> str:
        """Why the jail of ``directory`` is not this daemon's to touch ('' if it is)."""
        if not marker:
            return "no owner marker (root's file .entryUUID) in its account directory"
        entry = self.entries(marker)
        if entry is None:
            return f"its owner marker names entryUUID {marker!r}, which the daemon's store does not know"
        uid = posixpath.basename(directory)
        if entry.get("uid") != uid:
            return f"its owner marker names {entry.dn}, whose uid is {entry.get('uid')!r}, not {uid}"
        return ""

    # ----------------------------------------------------------------- figures

    def _stale_since(self) -> None:
        """Since when the oldest stale jail is stale: its image's successor, or copies first seen."""
        f = self.figures
        copied = f.total("copied")
        if copied and f.copies_since is None:
            f.copies_since = time.time()
        elif not copied:
            f.copies_since = None
        old_image = f.total("stale") - copied
        times = [store["since"] for store in f.stores.values() if store.get("since")] if old_image else []
        times += [f.copies_since] if f.copies_since else []
        f.stale_since = min(times) if times else None

    def _warn_if_stale(self) -> None:
        f, now = self.figures, time.time()
        if f.total("stale") and f.stale_since and now - f.stale_since > STALE_WARNING_SECONDS \
                and now - self._warned > STALE_WARNING_SECONDS:
            self._warned = now
            log.warning("%d jail(s) on an old jail image or with copied programs since %s UTC",
                        f.total("stale"), time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(f.stale_since)))

    def _write_status(self) -> None:
        if not self.figures.stores:
            return                  # no store, no image: nothing to say, and no folder to say it in
        now = time.time()
        self.figures.written = now
        self._dirty = False
        try:
            self.transport.write_file(status_path(self.settings.backup_root),
                                      json.dumps(self.figures.as_json(self.settings.jail_programs, now)).encode(),
                                      mode=0o644)
        except OSError as err:
            log.warning("cannot write the jail job's status: %s", err)

    def _load_status(self) -> None:
        """What the last daemon wrote: since when copies were seen (a restart does not reset it),
        and each bucket's figures (status tells them until this daemon's pass counts again)."""
        try:
            text = self.transport.read_small(status_path(self.settings.backup_root), 1 << 16)
            written = json.loads(text)
            self.figures.copies_since = written.get("copies_since")
            self.figures.buckets = {bucket: {key: int(counts.get(key, 0)) for key in Figures.KEYS}
                                    for bucket, counts in (written.get("buckets") or {}).items()
                                    if bucket in BUCKETS and isinstance(counts, dict)}
        except (OSError, ValueError, AttributeError, TypeError):
            pass

    def _call(self, function: str, *args):
        return self.transport.call(MODULES, function, *args, shown=f"jail job: {function}")
