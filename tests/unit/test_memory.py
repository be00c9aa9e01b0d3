"""GcPolicy and garbage_report (they act on this test process's collector: undone after)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from confroom.media.session import MediaSession
from confroom.memory import GcPolicy, forget_traceback, garbage_report


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture
def policy() -> Iterator[GcPolicy]:
    p = GcPolicy()
    yield p
    p.close()
    gc.unfreeze()


def test_start_up_is_frozen_and_so_are_the_survivors_of_a_full_pass(policy: GcPolicy) -> None:
    assert gc.get_freeze_count() > 0
    policy.tick(quiet=False)
    assert policy.freezes == 0  # no full pass happened yet
    keep = [Node() for _ in range(100)]
    gc.collect()  # a full pass
    policy.tick(quiet=False)
    assert policy.freezes == 1 and gc.get_count()[2] == 0
    assert all(gc.is_tracked(n) for n in keep)


def test_a_cycle_frozen_while_alive_is_collected_when_calls_are_quiet(policy: GcPolicy) -> None:
    a = Node()
    a.other = a
    ref = weakref.ref(a)
    gc.collect()
    policy.tick(quiet=False)  # `a` survived a full pass: frozen
    del a
    gc.collect()
    assert ref() is not None  # frozen: the collector does not look at it
    policy.tick(quiet=False)  # busy: nothing thawed (that collect was a full pass: refrozen)
    policy.tick(quiet=False)
    assert ref() is not None and policy.thaws == 0
    policy.tick(quiet=True)  # no call up: thaw, collect, freeze
    assert ref() is None and policy.thaws == 1
    policy.tick(quiet=True)
    assert policy.thaws == 1  # nothing was frozen since: no second pass


def test_garbage_report_counts_confroom_objects_left_in_cycles() -> None:
    clean = garbage_report()
    assert " confroom_garbage=0 " in clean
    s = MediaSession(40000)
    s.on_timeout = s.close  # the session points at itself
    del s
    report = garbage_report()
    ours = int(report.split("confroom_garbage=")[1].split()[0])
    assert ours >= 1 and "MediaSession:1" in report
    gc.unfreeze()


def test_forget_traceback_breaks_the_cycle_through_a_frame_holding_its_exception() -> None:
    def fail() -> None:
        kept: list[BaseException] = []
        try:
            raise KeyError("inner")
        except KeyError as inner:
            kept.append(inner)  # the frame's local holds the exception: a cycle
            raise ValueError("outer") from inner

    def leftover(forget: bool) -> int:
        gc.collect()
        gc.disable()
        try:
            try:
                fail()
            except ValueError as e:
                if forget:
                    forget_traceback(e)
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            n = sum(isinstance(o, KeyError) for o in gc.garbage)
            gc.garbage.clear()
            return n
        finally:
            gc.set_debug(0)
            gc.enable()

    assert leftover(forget=False) == 1  # the test can fail
    assert leftover(forget=True) == 0
