"""Backup/Rsnapshot's audit: each account of this host against the host, and what no entry explains.

The host is read once (hostpicture.py), then every entry the core hands over
is compared with it as it comes, with the checks the request hooks use
(account.parse and layout, home.check_paths, ownership.decide, the
rsnapshot template): an entry the daemon would refuse is named with the
return value it would get. Kinds of finding, and whether ``audit --repair``
fixes them (the daemon's own steps, under the entry's lock):

========================  ==========  ==================================================
kind                      repairable  what
========================  ==========  ==================================================
home-missing              yes*        no account directory, or no home in it
marker-missing            yes*        a directory from before owner markers (adopted)
layout-differs            yes*        folders the layout wants root's, incoming/, snapshots/
config-missing            yes         no rsnapshot configuration
config-differs            yes         not what the template renders now (first line that differs)
quota-differs             yes         the kernel's limit is not sstQuota
jail-stale                yes         the jail's programs are not the current jail image's
entry-invalid             no          the entry cannot be served (its return value named)
home-foreign              no          the directory's owner marker names another entry
home-unsafe               no          a link or a foreign folder where root works
jail-unsafe               no          the jail cannot be looked at safely
left-after-delete         no          the entry's delete was done, yet this is here (retire)
orphan-home/config/quota  no          no entry of this host explains it (retire)
========================  ==========  ==================================================

(*) of an active account (sstIsActive not FALSE): an inactive one waits for
its delete request.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable

import ldap.dn

from provisioning.api import Audit, Entry, Expect, Expected, Finding, Transport

from provisioning_backup_rsnapshot import account as accounts
from provisioning_backup_rsnapshot import home, ownership
from provisioning_backup_rsnapshot.codes import Code, StepError
from provisioning_backup_rsnapshot.hostpicture import HostAccount, HostPicture, config_path, read as read_host
from provisioning_backup_rsnapshot.quota import blocks
from provisioning_backup_rsnapshot.rsnapshot import Template, values_for
from provisioning_backup_rsnapshot.settings import Settings
from provisioning_backup_rsnapshot.survey import Node, survey

UUID_TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# The entryUUID of no entry (RFC 4122's nil UUID): what an orphan without an account directory is
# deleted as. No marker holds it, so a directory that appears meanwhile is refused, not taken.
NIL_UUID = "00000000-0000-0000-0000-000000000000"
# Configurations read again to say which line differs (the others: "differs").
DIFFERS_READ = 100
CONFIG_READ_LIMIT = 1 << 16
CONVERGE = {"home-missing", "marker-missing", "layout-differs"}


@dataclass
class Explained:
    """What the entries of this host account for: uids, uidNumbers, entryUUIDs."""

    uids: set[str] = field(default_factory=set)
    numbers: set[int] = field(default_factory=set)
    entries: dict[str, str] = field(default_factory=dict)  # entryUUID -> DN


class Auditor:
    """One audit: the host's picture, then each entry compared with it."""

    def __init__(self, settings: Settings, template: Template, transport: Transport,
                 known: Callable[[str], Entry | None] | None = None, timeout: float = 600.0) -> None:
        self.settings = settings
        self.timeout = timeout
        self.template = template
        self.transport = transport
        self.known = known or (lambda uuid: None)
        self.findings: list[Finding] = []
        self.explained = Explained()
        self._differs_read = 0

    def run(self, entries: Iterable[Expected], only: str | None) -> Audit:
        uid = only_uid(only)
        host = read_host(self.settings, self.transport, self.timeout, uid)
        checked = 0
        for expected in entries:
            checked += self._entry(expected, host)
        self._orphans(host, uid)
        notes = [] if host.quotas.checked else [f"quota not checked: {host.quotas.why}"]
        return Audit(self.findings, checked, notes)

    # ---------------------------------------------------------------- entries

    def _entry(self, expected: Expected, host: HostPicture) -> int:
        """Compare one entry; 1 if it was judged (present or absent), 0 for one with a request open."""
        entry = expected.entry
        self._explain(entry)
        if expected.expect is Expect.OPEN:
            return 0
        try:
            account = accounts.parse(entry, self.settings.min_id,
                                     need_service_data=expected.expect is Expect.PRESENT)
            place = accounts.layout(account, self.settings.backup_root)
        except StepError as err:
            if expected.expect is Expect.PRESENT:
                self._add("entry-invalid", entry.dn, _refusal(err), uuid=entry.uuid)
            return 1
        if expected.expect is Expect.ABSENT:
            self._absent(entry, account, host)
        else:
            self._present(entry, account, place, host)
        return 1

    def _explain(self, entry: Entry) -> None:
        uid, number = entry.get("uid"), entry.get("uidNumber")
        if uid:
            self.explained.uids.add(uid)
        if number and number.isascii() and number.isdigit():
            self.explained.numbers.add(int(number))
        if entry.uuid:
            self.explained.entries[entry.uuid] = entry.dn

    def _present(self, entry: Entry, account: accounts.Account, place: accounts.Layout,
                 host: HostPicture) -> None:
        active = (entry.get("sstIsActive") or "TRUE").strip().upper() != "FALSE"
        folder = host.accounts.get(account.uid)
        if self._home(entry, account, place, folder, host, active):
            self._config(entry, account, place, host)
        self._quota(entry, account, host)
        if folder is not None and folder.jail == "stale":
            self._add("jail-stale", entry.dn, f"the jail {place.jail} has programs of an old jail image, or "
                      f"copies: the jail job moves it, --repair now", repairable=True, uuid=entry.uuid)
        elif folder is not None and folder.jail and folder.jail.startswith("refused"):
            self._add("jail-unsafe", entry.dn, f"the jail {place.jail} is not looked into: "
                      f"{folder.jail[len('refused: '):]}", uuid=entry.uuid)

    def _home(self, entry: Entry, account: accounts.Account, place: accounts.Layout,
              folder: HostAccount | None, host: HostPicture, active: bool) -> bool:
        """The account directory and home; True when it is this entry's and whole (the configuration is
        then worth comparing)."""
        not_now = "" if active else " (sstIsActive is FALSE: not made again)"
        if folder is None:
            self._add("home-missing", entry.dn, f"no account directory {place.directory}{not_now}",
                      repairable=active, uuid=entry.uuid)
            return False
        if folder.error:
            self._add("home-unsafe", entry.dn, f"{place.directory}: {folder.error}", uuid=entry.uuid)
            return False
        nodes = self._nodes(place, folder, host)
        try:
            home.check_paths(place, self.settings.backup_root, nodes)
            verdict = ownership.decide(account, entry.uuid, place, nodes, folder.marker)
        except StepError as err:
            kind = "home-foreign" if err.code is Code.NOT_THIS_ENTRYS_ACCOUNT else "home-unsafe"
            self._add(kind, entry.dn, _refusal(err), uuid=entry.uuid)
            return False
        if verdict is ownership.Verdict.ADOPT:
            self._add("marker-missing", entry.dn, f"{place.directory} has no owner marker; its incoming/ is "
                      f"uidNumber {account.uid_number}'s, so the next modify adopts it{not_now}",
                      repairable=active, uuid=entry.uuid)
        if nodes[place.home_path] is None:
            self._add("home-missing", entry.dn, f"{place.directory} holds no home {place.home_path}{not_now}",
                      repairable=active, uuid=entry.uuid)
            return False
        unsettled = _unsettled(account, place, nodes)
        if unsettled:
            self._add("layout-differs", entry.dn, "; ".join(unsettled) + not_now, repairable=active,
                      uuid=entry.uuid)
        return True

    def _nodes(self, place: accounts.Layout, folder: HostAccount, host: HostPicture) -> dict[str, Node | None]:
        """Every path a request looks at, from the pass; a layout the pass did not foresee is surveyed."""
        wanted = home.paths(place, self.settings.backup_root)
        nodes: dict[str, Node | None] = {}
        missing = []
        for path in dict.fromkeys(p.rstrip("/") or "/" for p in wanted):
            relative = "" if path == place.directory else path[len(place.directory) + 1:] \
                if path.startswith(place.directory + "/") else None
            if path in host.folders:
                nodes[path] = host.folders[path]
            elif relative is not None and folder.knows(relative):
                nodes[path] = folder.node(relative)
            else:
                missing.append(path)
        if missing:
            nodes.update(survey(missing, self.transport))
        return nodes

    def _config(self, entry: Entry, account: accounts.Account, place: accounts.Layout,
                host: HostPicture) -> None:
        path = config_path(self.settings, account.uid)
        wanted = self.template.render(values_for(account, place)).encode()
        kind, digest = host.configs.get(account.uid, (None, None))
        if kind is None:
            self._add("config-missing", entry.dn, f"no rsnapshot configuration {path}", repairable=True,
                      uuid=entry.uuid)
        elif kind != "regular file":
            self._add("config-differs", entry.dn, f"{path} is a {kind}, not a file", repairable=True,
                      uuid=entry.uuid)
        elif digest != hashlib.sha256(wanted).digest():
            self._add("config-differs", entry.dn, f"{path}: {self._difference(path, wanted)}", repairable=True,
                      uuid=entry.uuid)

    def _difference(self, path: str, wanted: bytes) -> str:
        """The first line that differs from what the template renders (read for the first few files)."""
        if self._differs_read >= DIFFERS_READ:
            return "differs from what the template renders now"
        self._differs_read += 1
        try:
            found = self.transport.read_small(path, CONFIG_READ_LIMIT).splitlines()
        except OSError as err:
            return f"differs from what the template renders now (cannot be read: {err})"
        lines = wanted.decode("utf-8", "replace").splitlines()
        for number, (have, want) in enumerate(zip(found, lines), 1):
            if have != want:
                return f"line {number} is {have!r}, the template renders {want!r}"
        if len(found) != len(lines):
            return f"{len(found)} lines, the template renders {len(lines)}"
        return "differs from what the template renders now (beyond the lines compared)"

    def _quota(self, entry: Entry, account: accounts.Account, host: HostPicture) -> None:
        if not host.quotas.checked or account.quota_bytes is None:
            return
        want = blocks(account.quota_bytes)
        limit = host.quotas.limits.get(account.uid_number)
        if limit is None or (limit.soft, limit.hard) != (want, want):
            have = "no limit" if limit is None else f"soft {limit.soft} and hard {limit.hard} KiB"
            self._add("quota-differs", entry.dn, f"uidNumber {account.uid_number} on {self.settings.mountpoint} "
                      f"has {have}; sstQuota {account.quota_bytes} wants {want} KiB", repairable=True,
                      uuid=entry.uuid)

    def _absent(self, entry: Entry, account: accounts.Account, host: HostPicture) -> None:
        """An entry whose delete was done: what of it is still here (retire takes it)."""
        folder = host.accounts.get(account.uid)
        keep = self.settings.delete_data == "keep"
        if keep and folder is not None:
            return                              # DELETE_DATA = keep: data and quota stay, by design
        why = "its delete request was done"
        if folder is not None:
            self._left(entry, account, folder.path, f"{why}, yet its account directory is here")
        if account.uid in host.configs:
            self._left(entry, account, config_path(self.settings, account.uid),
                       f"{why}, yet its rsnapshot configuration is here")
        limit = host.quotas.limits.get(account.uid_number) if host.quotas.checked else None
        if limit is not None and (limit.soft or limit.hard):
            self._left(entry, account, f"quota of uidNumber {account.uid_number} on {self.settings.mountpoint}",
                       f"{why}, yet its quota is set ({limit.hard} KiB)")

    def _left(self, entry: Entry, account: accounts.Account, subject: str, detail: str) -> None:
        self._add("left-after-delete", subject, f"{entry.dn}: {detail}", uuid=entry.uuid, name=account.uid,
                  entry=entry)

    # ---------------------------------------------------------------- orphans

    def _orphans(self, host: HostPicture, only: str | None) -> None:
        """What no entry of this host explains: account directories, configurations, quotas."""
        seen = self.explained
        for uid, folder in sorted(host.accounts.items()):
            if uid not in seen.uids:
                self._orphan_home(uid, folder, host)
        for uid in sorted(host.configs):
            if uid not in seen.uids:
                self._add("orphan-config", config_path(self.settings, uid), "no entry of this host has uid "
                          f"{uid}", name=uid, entry=self._orphan_entry(uid, host))
        if not host.quotas.checked:
            return
        for number, limit in sorted(host.quotas.limits.items()):
            if (limit.soft or limit.hard) and number >= self.settings.min_id and number not in seen.numbers \
                    and (only is None or str(number) == only):
                name = str(number)
                self._add("orphan-quota", f"quota of uidNumber {number} on {self.settings.mountpoint}",
                          f"{limit.hard} KiB for a uidNumber no entry of this host has", name=name,
                          entry=self._orphan_entry(name, host))

    def _orphan_home(self, uid: str, folder: HostAccount, host: HostPicture) -> None:
        owner = folder.marker
        other = self._owner_elsewhere(uid, owner)
        if other is not None:
            self._add("home-foreign", folder.path, f"no entry of this host has uid {uid}, and its owner marker "
                      f"names {other} (entryUUID {owner}): not an orphan to retire", uuid=owner)
            return
        entry = self._orphan_entry(uid, host)
        said = f"owner marker: entryUUID {owner}" if owner else "no owner marker"
        if entry is None:
            said += "; nothing shows whose it is, so retire leaves it (move it by hand)"
        self._add("orphan-home", folder.path, f"no entry of this host has uid {uid} ({said})", uuid=owner,
                  name=uid, entry=entry)

    def _owner_elsewhere(self, uid: str, owner: str | None) -> str | None:
        """The DN of another account's entry that the owner marker ``owner`` names: an entry of this host
        (the directory's), or one the daemon's store knows under another uid. None when it names none."""
        if not owner:
            return None
        if owner in self.explained.entries:
            return self.explained.entries[owner]
        known = self.known(owner)
        if known is not None and known.get("uid") != uid:
            return f"{known.dn} (as the daemon's store last knew it)"
        return None

    def _orphan_entry(self, uid: str, host: HostPicture) -> Entry | None:
        """The entry an orphan's delete is called with, as the host (and the store) show it; None when
        nothing shows whose it is."""
        folder = host.accounts.get(uid)
        owner = folder.marker if folder is not None else None
        if folder is not None and not (owner and UUID_TEXT.fullmatch(owner)):
            return None                                   # a directory nothing ties to an entry
        uuid = owner or NIL_UUID
        last = self.known(uuid) if owner else None
        if last is not None and last.get("uid") == uid:
            return last                                   # the daemon's store: the entry as it last was
        number = _owner_number(folder) or uid
        if int(number) in self.explained.numbers or int(number) < self.settings.min_id:
            return None                                   # its quota would be another's, or a system user's
        values = {"uid": [uid], "uidNumber": [number], "gidNumber": [number]}
        if folder is not None and folder.node("chroot") is None and folder.node("home") is not None:
            values["homeDirectory"] = [f"{folder.path}/./home/{uid}"]
        return Entry.from_values(f"uid={uid}", values, uuid)

    def _add(self, kind: str, subject: str, detail: str, *, repairable: bool = False, uuid: str | None = None,
             name: str | None = None, entry: Entry | None = None) -> None:
        self.findings.append(Finding(kind, subject, detail, repairable, uuid, name, entry))


def only_uid(only: str | None) -> str | None:
    """The uid an operator's name stands for: a DN's first RDN value, or the name itself."""
    if only is None:
        return None
    if "=" not in only:
        return only.strip()
    try:
        return ldap.dn.str2dn(only)[0][0][1]
    except (ldap.DECODING_ERROR, IndexError):
        return only


def _refusal(err: StepError) -> str:
    return f"{err.message} (a request would fail with {int(err.code)}, {err.code.name})"


def _owner_number(folder: HostAccount | None) -> str | None:
    """The uidNumber incoming/ belongs to, if it is a folder of a user who is not root."""
    if folder is None:
        return None
    uid = folder.path.rsplit("/", 1)[-1]
    for jail in ("chroot/", ""):
        node = folder.node(f"{jail}home/{uid}/incoming")
        if node is not None and node.is_dir and node.uid:
            return str(node.uid)
    return None


def _unsettled(account: accounts.Account, place: accounts.Layout, nodes: dict[str, Node | None]) -> list[str]:
    """What home.settle would change (the same rules, read only)."""
    found = [f"{folder} is {node.describe()}, not root's" for folder in place.chain
             if (node := nodes[folder]) is not None and not node.root_only()]
    incoming = nodes[place.incoming.rstrip("/")]
    if incoming is None:
        found.append(f"no {place.incoming}")
    elif (incoming.uid, incoming.gid) != account.owner or incoming.mode != 0o700:
        found.append(f"{place.incoming} is {incoming.describe()}, not the account's 0700 folder")
    snapshots = nodes[place.snapshot_root.rstrip("/")]
    if nodes[place.old_snapshot_root] is not None and snapshots is None:
        found.append(f"snapshots still in {place.old_snapshot_root}, inside the home")
    elif snapshots is None:
        found.append(f"no {place.snapshot_root}")
    elif not (snapshots.uid == 0 and snapshots.mode == 0o700):
        found.append(f"{place.snapshot_root} is {snapshots.describe()}, not root's 0700 folder")
    return found
