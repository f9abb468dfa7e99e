"""Fast unit tests of the HA parts: the entry lock and its record, lost claims, the confirmation's rules.

The directory's side (what replication does with two claims) is tested on
real provider pairs in t/test_ha_mirror.py; here the rules that read it.
No server is started; lock files live in tmp_path.
"""
from __future__ import annotations

import datetime as dt
import threading
import time

import pytest

from provisioning.backend.ldap import DirectoryUnavailable
from provisioning.engine.claims import ATTRIBUTE, Owner, Owners
from provisioning.engine.confirm import Confirmer, Standing
from provisioning.base.entry import Entry
from provisioning.engine.entrylock import Done, EntryLocks
from provisioning.transport.base import Interrupted

UUID = "0b9e9a7c-5f4e-103d-8a3a-7d6b6b2f3c11"
OURS = "20261207050000.000100Z#000000#001#000000"
TOKEN, RIVAL = "claim: backup-a 1 20261207T050000Z", "claim: backup-b 2 20261207T050000Z"
SID1, SID2 = "001", "002"


def _csn(micro: int, sid: str) -> str:
    return f"20261207050000.{micro:06d}Z#000000#{sid}#000000"


# ------------------------------------------------------------- entry locks

def test_a_second_job_for_an_entry_waits_for_the_first_whole_request(tmp_path):
    locks = EntryLocks(tmp_path / "locks")
    locks.prepare()
    order: list[str] = []
    inside = threading.Event()

    def first() -> None:
        with locks.hold(UUID, "first"):
            order.append("first in")
            inside.set()
            time.sleep(0.2)                       # the work of the first request
            order.append("first out")
    thread = threading.Thread(target=first)
    thread.start()
    inside.wait(5)
    with locks.hold(UUID, "second"):              # another open file: flock keeps it off like another process
        order.append("second in")
    thread.join()
    assert order == ["first in", "first out", "second in"]


def test_the_record_says_which_request_was_done_on_this_host(tmp_path):
    locks = EntryLocks(tmp_path / "locks")
    locks.prepare()
    with locks.hold(UUID, "dn") as held:
        assert held.done() is None
        held.record(Done("judged-csn", "claim-csn", "add", 0, "claim: a 1 20261207T050000Z"))
    with locks.hold(UUID, "dn") as held:
        done = held.done()
    assert done.covers("judged-csn") and done.covers("claim-csn") and not done.covers("a later request")
    assert not done.covers(None)


def test_a_stop_ends_the_wait_for_a_lock(tmp_path):
    stopping = threading.Event()
    locks = EntryLocks(tmp_path / "locks", stopping=stopping)
    locks.prepare()
    with locks.hold(UUID, "holder"):
        stopping.set()
        with pytest.raises(Interrupted):
            with locks.hold(UUID, "waiter"):
                pass


def test_a_key_that_is_no_entryuuid_never_names_a_path_of_its_own(tmp_path):
    locks = EntryLocks(tmp_path / "locks")
    assert locks.path(UUID.upper()) == tmp_path / "locks" / UUID
    named = locks.path("../../etc/passwd")
    assert named.parent == tmp_path / "locks" and len(named.name) == 64


def test_a_lock_file_that_cannot_be_made_costs_the_lock_not_the_job(tmp_path, caplog):
    folder = tmp_path / "locks"
    locks = EntryLocks(folder)
    locks.prepare()
    folder.rmdir()                                 # gone under the daemon: no lock file can be made
    results = [locks.run(UUID, "dn", lambda held: held.fd) for _ in range(2)]
    assert results == [None, None]
    assert caplog.text.count("jobs run without the lock") == 1


def test_without_a_folder_or_in_a_dry_run_nothing_is_locked_or_written(tmp_path):
    for locks in (EntryLocks(None), EntryLocks(tmp_path / "locks", dry_run=True)):
        locks.prepare()
        with locks.hold(UUID, "dn") as held:
            held.record(Done("a", "b", "add", 0))
            assert held.done() is None
    assert not (tmp_path / "locks").exists()


# ------------------------------------------------------------- lost claims

def test_a_claim_of_ours_that_lost_is_judged_live_not_resumed():
    owners = Owners(3600, host="backup-a", pid=4242)
    token = owners.new_token("uid=1,ou=x")
    entry = Entry.from_values("uid=1,ou=x", {ATTRIBUTE: [token], "sstProvisioningMode": ["adding"]})
    owners.release("uid=1,ou=x", token)
    assert owners.judge(entry).owner is Owner.GONE         # ours, not in hand: resumed at once
    owners.lose("uid=1,ou=x", token)
    judged = owners.judge(entry)
    assert judged.owner is Owner.LIVE and "lost to another daemon's" in judged.why
    assert judged.expires > dt.datetime.now(dt.timezone.utc)


def test_claims_made_in_the_same_second_are_told_apart_by_their_entry():
    # A token names the process and a second: every claim of that second has the same one. A
    # claim whose answer was lost with the connection was judged "in hand" while another claim
    # of the same second was (never resumed: a CI run left it 'adding' until the next reconnect),
    # and one that lost made the others of its second wait for the whole lease.
    owners = Owners(3600, host="backup-a", pid=4242)
    first, second, third = "uid=1,ou=x", "uid=2,ou=x", "uid=3,ou=x"
    tokens = [owners.new_token(key) for key in (first, second, third)]
    assert len(set(tokens)) == 1                              # one second, one process
    owners.release(first, tokens[0])                          # the claim's answer was lost
    owners.lose(third, tokens[2])
    def judged(dn: str) -> Owner:
        return owners.judge(Entry.from_values(dn, {ATTRIBUTE: [tokens[0]], "sstProvisioningMode": ["adding"]})).owner
    assert judged(first) is Owner.GONE                        # resumed, though the second is in hand
    assert judged(second) is Owner.MINE
    assert judged(third) is Owner.LIVE                        # its own claim lost: waited for
    owners.release(second, tokens[1])
    assert judged(second) is Owner.GONE                       # no longer in hand; never "lost"


# ------------------------------------------------------------- confirmation

class Providers:
    """What each provider shows: its contextCSN and its copy of the entry, changing over reads."""

    def __init__(self, shows: dict[str, list[tuple[list[str] | None, Entry | None]]]) -> None:
        self.shows = shows
        self.reads: dict[str, int] = {uri: 0 for uri in shows}

    def others(self, current: str) -> list[str]:
        return [uri for uri in self.shows if uri != current]

    def _now(self, uri: str) -> tuple[list[str] | None, Entry | None]:
        states = self.shows[uri]
        return states[min(self.reads[uri], len(states) - 1)]

    def context(self, uri: str, base: str, deadline: float) -> list[str]:
        context, _ = self._now(uri)
        self.reads[uri] += 1
        if context is None:
            raise DirectoryUnavailable(f"{uri} does not answer")
        return context

    def read(self, uri: str, dn: str, attrs, deadline: float) -> Entry | None:
        return self._now(uri)[1]


def _copy(csn: str, token: str) -> Entry:
    return Entry.from_values("uid=1,ou=x", {"entryCSN": [csn], ATTRIBUTE: [token]})


def _confirm(shows, wait: float = 0.5):
    return Confirmer(Providers(shows), wait, "ou=x").confirm("uid=1,ou=x", TOKEN, OURS, "p1")


def test_a_claim_holds_once_the_other_provider_has_it_and_ours_has_caught_up_and_shows_it():
    theirs = _csn(90, SID2)                       # the other provider's own last change
    found = _confirm({"p1": [([OURS], None), ([OURS, theirs], _copy(OURS, TOKEN))],
                      "p2": [([_csn(50, SID1)], None), ([OURS, theirs], None)]})
    assert found.standing is Standing.HOLDS and found.replaced is None


def test_a_newer_claim_seen_on_our_provider_after_catching_up_wins():
    rival = _csn(200, SID2)
    found = _confirm({"p1": [([OURS], _copy(OURS, TOKEN)), ([OURS, rival], _copy(rival, RIVAL))],
                      "p2": [([OURS, rival], None)]})
    assert found.standing is Standing.LOST and found.winner.csn == rival
    assert found.rival[0].host == "backup-b"


def test_crossed_claims_the_older_one_on_our_provider_leaves_ours_holding():
    """Each provider took the other's claim last: ours is the newer, an older one sits on our provider."""
    older = _csn(50, SID2)
    found = _confirm({"p1": [([OURS, older], _copy(older, RIVAL))], "p2": [([OURS, older], None)]})
    assert found.standing is Standing.HOLDS and found.replaced == older


def test_a_provider_that_never_gets_the_claim_leaves_it_unsure_after_the_wait():
    started = time.monotonic()
    found = _confirm({"p1": [([OURS], _copy(OURS, TOKEN))], "p2": [([_csn(50, SID1)], None)]}, wait=0.2)
    assert found.standing is Standing.UNSURE and "has not received the claim" in found.behind[0]
    assert 0.15 < time.monotonic() - started < 1


def test_a_provider_that_does_not_answer_is_not_waited_for():
    found = _confirm({"p1": [([OURS], _copy(OURS, TOKEN))], "p2": [(None, None)]})
    assert found.standing is Standing.HOLDS and found.away == ["p2"]


def test_an_unreadable_contextcsn_cannot_confirm():
    found = _confirm({"p1": [([OURS], _copy(OURS, TOKEN))], "p2": [([], None)]})
    assert found.standing is Standing.UNSURE and "contextCSN cannot be read" in found.behind[0]
